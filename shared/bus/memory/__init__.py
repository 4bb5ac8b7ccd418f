"""An in-memory NATS JetStream with the semantics Conclave relies on, for deterministic tests
and simulations: `MemoryServer(clock).connect(name)` gives a `MemoryBus`."""

from shared.bus.memory.bus import MemoryBus
from shared.bus.memory.faults import Faults
from shared.bus.memory.server import MemoryServer

__all__ = ["Faults", "MemoryBus", "MemoryServer"]
