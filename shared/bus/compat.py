"""Version skew: which wire protocols the cluster accepts, and who is outside them.

The coordinator writes the accepted range (registry `cluster.protocol`) when it starts a term; a
node whose build speaks another protocol is shown in `conclave status` with the reason, is not
counted as a worker, and its pullers take no jobs (like lc0's minimum client version).
"""

from __future__ import annotations

import logging

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import PROTOCOL, ClusterProtocol
from shared.bus.errors import BusError
from shared.bus.ports import KV, Bus

log = logging.getLogger("conclave.compat")
MIN_PROTOCOL = 2  # the oldest protocol this build's coordinator still serves
RECHECK_S = 5.0


def refusal(protocol: int, accepted: ClusterProtocol | None) -> str | None:
    """Why a node speaking `protocol` gets no work, or None if it may work."""
    if accepted is None or accepted.min_protocol <= protocol <= accepted.max_protocol:
        return None
    return (
        f"protocol {protocol} unsupported: the coordinator ({accepted.set_by}) accepts "
        f"{accepted.min_protocol}..{accepted.max_protocol}"
    )


async def accepted_range(bus: KV) -> ClusterProtocol | None:
    entry = await bus.last(names.REGISTRY_BUCKET, names.PROTOCOL_KEY)
    if entry.value is None:
        return None
    try:
        return decode(entry.value, ClusterProtocol, subject=names.PROTOCOL_KEY)
    except BadMessage as e:
        log.warning("%s", e)
    except Exception as e:  # unreadable however it fails: no range, as if unset
        log.warning("unreadable %s: %r", names.PROTOCOL_KEY, e)
    return None


async def announce(bus: Bus, node_id: str) -> None:
    """The coordinator's range: this build's protocol back to MIN_PROTOCOL."""
    accepted = ClusterProtocol(MIN_PROTOCOL, PROTOCOL, node_id, bus.clock.time())
    await bus.write(names.REGISTRY_BUCKET, names.PROTOCOL_KEY, encode(accepted))


class Gate:
    """A worker's check before it pulls: re-read at most every RECHECK_S seconds."""

    def __init__(self, bus: Bus, protocol: int = PROTOCOL) -> None:
        self.bus, self.protocol = bus, protocol
        self.reason: str | None = None
        self.checked_at = -RECHECK_S

    async def refusal(self) -> str | None:
        clock = self.bus.clock
        if clock.monotonic() - self.checked_at >= RECHECK_S:
            try:
                reason = refusal(self.protocol, await accepted_range(self.bus))
            except BusError:
                return self.reason  # keep the last answer while the bus is away
            if reason != self.reason and reason:
                log.error("taking no work: %s", reason)
            self.reason, self.checked_at = reason, clock.monotonic()
        return self.reason
