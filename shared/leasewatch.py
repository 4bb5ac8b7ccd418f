"""Following the leader lease from outside: wake on changes, and who holds which term."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import Lease
from shared.bus import Bus, BusError

log = logging.getLogger("conclave.leasewatch")

RETRY_S = 0.2


class KeyChanges:
    """Wakes a waiter when the lease key changes; a lost watch only delays it to its deadline."""

    def __init__(self, key: str = names.LEADER_KEY) -> None:
        self.key = key
        self.changed = asyncio.Event()

    async def follow(self, bus: Bus) -> None:
        while True:
            try:
                async with bus.watch(names.ELECTION_BUCKET, self.key) as watcher:
                    async for _ in watcher:
                        self.changed.set()
            except BusError as e:
                log.warning("lease watch lost: %s", e)
            await asyncio.sleep(RETRY_S)

    async def wait(self, stop: asyncio.Event, until: float) -> None:
        try:
            async with asyncio.timeout(max(0.0, until - time.monotonic())):
                await first_of(stop.wait(), self.changed.wait())
        except TimeoutError:
            pass
        self.changed.clear()


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


async def current_holder(bus: Bus) -> Holder | None:
    """Who holds the lease now (None if nobody, or the value is unreadable)."""
    entry = await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)
    if entry.value is None:
        return None
    try:
        lease = decode(entry.value, Lease, subject=names.LEADER_KEY)
    except BadMessage:
        return None
    return Holder(lease.node, lease.term or entry.revision)
