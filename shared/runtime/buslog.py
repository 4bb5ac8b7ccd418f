"""Log records on the bus: every service's JSON log lines also go to
`logs.<node>.<service>.<level>`, rate-limited, so `conclave logs` reads them from anywhere, NAT'd
nodes included.

`emit` runs in whatever thread logged; it only formats and queues. One task on the service's
loop publishes the queue (core publish: fire and forget, buffered while reconnecting).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time

from schemas import names
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.runtime.log import JsonFormatter

LEVELS = ("debug", "info", "warning", "error", "critical")
MAX_QUEUED = 2000  # lines waiting to be published; older ones are dropped first
RATE_PER_S = 50.0  # lines per second per process, with a burst of as many
# Publishing a line logs nothing itself; nats-py's own chatter would echo around the bus.
_QUIET = ("nats", "conclave.buslog")


def levels_from(level: str) -> list[str]:
    """The level names at or above `level` (what `conclave logs --level L` subscribes to)."""
    if level not in LEVELS:
        raise ValueError(f"level {level!r} must be one of {', '.join(LEVELS)}")
    return list(LEVELS[LEVELS.index(level) :])


class BusLogHandler(logging.Handler):
    """Queue formatted records for `publish_forever`; drop (and count) what the rate forbids."""

    def __init__(self, node: str, service: str, formatter: JsonFormatter) -> None:
        super().__init__()
        self.node, self.service = node, service
        self.setFormatter(formatter)
        self.queue: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=MAX_QUEUED)
        self.dropped = 0
        self._tokens, self._last = RATE_PER_S, time.monotonic()
        self._lock = threading.Lock()
        self.wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_QUIET) or not self._allowed():
            return
        level = record.levelname.lower()
        subject = names.log_subject(self.node, self.service, level if level in LEVELS else "info")
        self.queue.append((subject, self.format(record).encode()))
        if self._loop is not None and self.wake is not None:
            self._loop.call_soon_threadsafe(self.wake.set)

    def _allowed(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(RATE_PER_S, self._tokens + (now - self._last) * RATE_PER_S)
            self._last = now
            if self._tokens < 1.0:
                self.dropped += 1
                return False
            self._tokens -= 1.0
            return True

    async def publish_forever(self, bus: Bus) -> None:
        """Publish queued lines until cancelled."""
        self._loop, self.wake = asyncio.get_running_loop(), asyncio.Event()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                subject, line = self.queue.popleft()
                try:
                    await bus.publish(subject, line)
                except BusError:
                    break  # the bus is closing; the file log still has the line
