"""Following the leader lease from outside: wake on changes, and who holds which term."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

from schemas import names
from schemas.codec import decode
from schemas.control import Lease
from shared.bus.errors import BusError
from shared.bus.ports import KV, Clock, SystemClock, Watch

log = logging.getLogger("conclave.leasewatch")

RETRY_S = 0.2
WATCH_RETRY_MAX_S = 3.2


class KeyChanges:
    """Wakes a waiter when a lease key changes; a lost watch only delays it to its deadline."""

    def __init__(
        self,
        key: str = names.LEADER_KEY,
        bucket: str = names.ELECTION_BUCKET,
        clock: Clock | None = None,
    ) -> None:
        self.key, self.bucket = key, bucket
        self.clock = clock or SystemClock()
        self.changed = asyncio.Event()
        self._closed = False
        self._watcher: Watch | None = None

    async def follow(self, bus: KV) -> None:
        """Until `close()`: ends by stopping the watcher, because nats-py can swallow a task
        cancellation that lands while it unsubscribes (seen: a leader that never released)."""
        pause = RETRY_S
        while not self._closed:
            try:
                async with bus.watch(self.bucket, self.key) as watcher:
                    self._watcher = watcher
                    if self._closed:  # closed while the watch was being set up
                        return
                    pause = RETRY_S
                    async for _ in watcher:
                        self.changed.set()
            except BusError as e:
                log.warning("watch on %s/%s lost: %s", self.bucket, self.key, e)
                pause = min(WATCH_RETRY_MAX_S, pause * 2)  # a dead server: no log flood
            if not self._closed:
                await self.clock.sleep(pause)

    async def close(self) -> None:
        self._closed = True
        if self._watcher is not None:
            await self._watcher.stop()

    async def wait(self, stop: asyncio.Event, until: float, *also: asyncio.Event) -> bool:
        """Wait for a change, `stop`, any of `also` or the monotonic `until`; whether the key
        changed."""
        try:
            async with asyncio.timeout(max(0.0, until - self.clock.monotonic())):
                await first_of(stop.wait(), self.changed.wait(), *(e.wait() for e in also))
        except TimeoutError:
            pass
        changed = self.changed.is_set()
        self.changed.clear()
        return changed


async def first_of(*waits: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


@dataclass(frozen=True)
class Holder:
    node: str
    term: int


async def current_holder(bus: KV) -> Holder | None:
    """Who holds the lease now (None if nobody, or the value is unreadable)."""
    entry = await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)
    if entry.value is None:
        return None
    try:
        lease = decode(entry.value, Lease, subject=names.LEADER_KEY)
    except Exception:  # BadMessage or anything else: no holder we can name
        return None
    return Holder(lease.node, lease.term or entry.revision)
