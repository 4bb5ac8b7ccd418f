"""Who waits on the in-memory server, and what wakes them: a future each, indexed by the topics
(a stream's name, a watch) whose changes concern it, so a change wakes only those."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.bus.memory.bus import MemoryBus

Waiter = asyncio.Future[None]


class Waiters:
    """Every waiter, in the order it began waiting (so wake-ups come in the same order on every
    run), with the client it waits for."""

    def __init__(self) -> None:
        self._all: dict[Waiter, MemoryBus] = {}
        self._by_topic: dict[Hashable, dict[Waiter, None]] = {}

    def __bool__(self) -> bool:
        return bool(self._all)

    def clients(self) -> Iterable[MemoryBus]:
        return self._all.values()

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop they wait on (there must be a waiter)."""
        return next(iter(self._all)).get_loop()

    def wake(self, topic: Hashable | None = None) -> None:
        """Wake whoever waits on `topic`, or with none everyone."""
        waiters = self._all if topic is None else self._by_topic.get(topic, {})
        for waiter in list(waiters):
            _settle(waiter)

    async def wait(self, client: MemoryBus, deadline: float, topics: Iterable[Hashable]) -> None:
        """Until woken, or the loop's time reaches `deadline`."""
        loop = asyncio.get_running_loop()
        waiter: Waiter = loop.create_future()
        topics = tuple(topics)
        self._all[waiter] = client
        for topic in topics:
            self._by_topic.setdefault(topic, {})[waiter] = None
        timeout = loop.call_at(deadline, _settle, waiter) if deadline < math.inf else None
        try:
            await waiter
        finally:
            if timeout is not None:
                timeout.cancel()
            self._forget(waiter, topics)

    def _forget(self, waiter: Waiter, topics: tuple[Hashable, ...]) -> None:
        del self._all[waiter]
        for topic in topics:
            waiters = self._by_topic[topic]
            del waiters[waiter]
            if not waiters:
                del self._by_topic[topic]


def _settle(waiter: Waiter) -> None:
    if not waiter.done():
        waiter.set_result(None)
