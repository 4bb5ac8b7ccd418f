"""What a memory client hands out: pull consumers and their deliveries, watches,
subscriptions and service registrations."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from shared.bus.errors import BusError, Unavailable
from shared.bus.memory.consumer import Durable
from shared.bus.memory.server import Live, end_marker
from shared.bus.memory.stream import Stream
from shared.bus.message import Entry, Message
from shared.bus.ports import Handler

if TYPE_CHECKING:
    from shared.bus.memory.bus import MemoryBus

log = logging.getLogger("conclave.bus")


class MemoryPull:
    """A pull subscription on a durable consumer."""

    def __init__(self, bus: MemoryBus, stream: str, durable: str) -> None:
        self._bus, self._stream, self._durable = bus, stream, durable

    async def fetch(self, batch: int, timeout_s: float) -> list[MemoryAcks]:
        """Up to `batch` deliveries; [] when none came within `timeout_s` (also while the
        server or this client cannot be reached, as a pull request then times out)."""
        bus, server = self._bus, self._bus.server
        deadline = server.clock.monotonic() + timeout_s
        await server.clock.sleep(0)
        while not bus.closed:
            if bus.jetstream_reachable:
                taken = self._take(batch)
                if taken:
                    return taken
            if server.now() >= deadline:
                return []
            await server.wait(bus, deadline, self._stream)
        raise Unavailable(f"fetch {self._durable}: connection closed")

    def _take(self, batch: int) -> list[MemoryAcks]:
        server = self._bus.server
        server.tick()
        durable = server.consumers.get(self._stream, {}).get(self._durable)
        if durable is None:
            raise BusError(f"fetch {self._durable}: consumer not found (code 10014)")
        stream = server.stream(self._stream)
        taken = durable.take(stream, batch, server.now())
        if taken:
            server.changed(self._stream)
        waiting = len(durable.waiting(stream))
        return [
            MemoryAcks(
                self._bus,
                self._stream,
                self._durable,
                m.message(self._stream, waiting + len(taken) - i - 1, n),
            )
            for i, (m, n) in enumerate(taken)
        ]

    async def unsubscribe(self) -> None:
        """Nothing to release: the durable stays on the server."""


class MemoryAcks:
    """A delivered message, until it is acknowledged. `ack`, `nak`, `in_progress` and `term`
    are fire and forget (lost while unreachable, as on NATS); `ack_sync` waits for the server."""

    def __init__(self, bus: MemoryBus, stream: str, durable: str, message: Message) -> None:
        self._bus, self._stream, self._durable = bus, stream, durable
        self.message = message

    def _target(self, what: str) -> tuple[Durable, Stream] | None:
        if self._bus.closed:
            raise Unavailable(f"{what}: connection closed")
        server = self._bus.server
        durable = server.consumers.get(self._stream, {}).get(self._durable)
        if not self._bus.jetstream_reachable or durable is None:
            return None
        server.tick()
        return durable, server.streams[self._stream]

    def _done(self, what: str) -> None:
        target = self._target(what)
        if target is None:
            return
        durable, stream = target
        if durable.ack(self.message.seq) and stream.work_queue:
            self._bus.server.remove(stream, self.message.seq)
        self._bus.server.changed(self._stream)

    async def ack(self) -> None:
        await self._bus.server.clock.sleep(0)
        self._done("ack")

    async def ack_sync(self) -> None:
        await self._bus.request("ack")
        self._done("ack")
        self._bus.reply_lost("ack", "ack")

    async def nak(self, delay_s: float | None = None) -> None:
        await self._bus.server.clock.sleep(0)
        target = self._target("nak")
        if target is not None:
            target[0].nak(self.message.seq, self._bus.server.clock.monotonic() + (delay_s or 0.0))
            self._bus.server.changed(self._stream)

    async def in_progress(self) -> None:
        await self._bus.server.clock.sleep(0)
        target = self._target("in-progress ack")
        if target is not None:
            target[0].progress(self.message.seq, self._bus.server.clock.monotonic())
            self._bus.server.changed(self._stream)

    async def term(self) -> None:
        """Never deliver it again (on a work queue, as on the server, it is removed)."""
        await self._bus.server.clock.sleep(0)
        self._done("terminate")


class MemoryWatch:
    """Changes to a watched key: its entry if any, None, then every later change."""

    def __init__(self, bus: MemoryBus, live: Live) -> None:
        self._bus, self._live = bus, live

    def __aiter__(self) -> AsyncIterator[Entry | None]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[Entry | None]:
        while True:
            item = await self._next()
            if item is end_marker():
                return
            assert item is None or isinstance(item, Entry)
            yield item

    async def _next(self) -> object:
        """The next queued change; waiting, it keeps the server's timers running, so an
        expiry marker comes when the key expires, not at the next request."""
        queue, server = self._live.queue, self._bus.server
        while queue.empty():
            if self._bus.jetstream_reachable:
                server.tick()
            if queue.empty():
                await server.wait(self._bus, math.inf, self._live)
        return queue.get_nowait()

    async def stop(self) -> None:
        self._bus.server.unwatch(self._live)


class MemorySubscription:
    """A core subscription: its handler runs in a task of its own, one message at a time."""

    def __init__(self, bus: MemoryBus, live: Live, handler: Handler) -> None:
        self._bus, self._live = bus, live
        self._task = asyncio.create_task(self._run(handler))

    async def _run(self, handler: Handler) -> None:
        while True:
            item = await self._live.queue.get()
            if item is end_marker():
                return
            assert isinstance(item, Message)
            try:
                await handler(item)
            except Exception as e:  # as nats-py: a failing handler is reported, not fatal
                log.warning("subscription handler on %s failed: %r", item.subject, e)

    async def unsubscribe(self) -> None:
        server = self._bus.server
        if self._live in server.subscriptions:
            server.subscriptions.remove(self._live)
        self._task.cancel()


class MemoryRegistration:
    """A registered service; `stop` withdraws it."""

    def __init__(self, bus: MemoryBus, key: str) -> None:
        self._bus, self._key = bus, key

    async def stop(self) -> None:
        self._bus.server.services.pop(self._key, None)
