"""The in-memory server: every stream, durable consumer, subscription and watch, shared by the
clients it hands out (`connect`), with its time on an injected clock."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.js.api import StreamConfig

from schemas import names
from shared.bus.errors import BusError
from shared.bus.memory.consumer import Durable
from shared.bus.memory.faults import Faults, settled
from shared.bus.memory.stream import Stored, Stream
from shared.bus.memory.subjects import matches, overlap
from shared.bus.message import Entry, Message
from shared.bus.ports import Clock, SystemClock

if TYPE_CHECKING:
    from shared.bus.memory.bus import MemoryBus

Commit = Callable[[str, bytes, Mapping[str, str]], None]
MAX_DELIVERIES_ADVISORY = "io.nats.jetstream.advisory.v1.max_deliver"
_DELETED_OPS = {"DEL", "PURGE"}


@dataclass(eq=False)
class Live:
    """A client's live interest in a subject filter: a subscription's or a watch's queue."""

    client: MemoryBus
    filter: str
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    lost: bool = False


class MemoryServer:
    """All state of an in-memory NATS JetStream; `connect` makes a client (a simulated process).

    Faults (all deterministic, on the clock): `faults` for every client (`shared.bus.memory.
    faults`), `restart(down_s)`, `lose_watches()`, and per client `MemoryBus.faults` and
    `MemoryBus.partition(on)`."""

    def __init__(
        self, clock: Clock | None = None, replicas: int = 1, max_payload: int = 1024 * 1024
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.replicas = replicas
        self.max_payload = max_payload
        self.faults = Faults(self.clock, self.changed)
        self.streams: dict[str, Stream] = {}
        self.consumers: dict[str, dict[str, Durable]] = {}
        self.clients: list[MemoryBus] = []
        self.subscriptions: list[Live] = []
        self.watches: list[Live] = []
        self.services: dict[str, tuple[MemoryBus, dict[str, str]]] = {}
        self._down_until = -math.inf
        self._waiting: dict[asyncio.Future[None], None] = {}  # in the order they began
        self._by_topic: dict[Hashable, dict[asyncio.Future[None], None]] = {}
        self._timers_stale = True
        self._timer_at = -math.inf
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._rearming = False
        self._tick_stale = True
        self._tick_due = -math.inf
        self._counter = 0
        self._on_commit: list[Commit] = []

    def connect(self, name: str) -> MemoryBus:
        """A new client of this server."""
        from shared.bus.memory.bus import MemoryBus

        client = MemoryBus(self, name)
        self.clients.append(client)
        return client

    # -- faults --------------------------------------------------------------------------------

    async def restart(self, down_s: float) -> None:
        """Go down now and come back after `down_s` seconds (when this returns): meanwhile
        every request fails and core messages are dropped; every live watch is lost (it stays
        silent, as an ordered consumer can after a restart). Stored messages, KV and durable
        consumers survive (file storage); unacknowledged deliveries are redelivered after their
        ack wait, and followers go on from where they were."""
        self._down_until = self.clock.monotonic() + down_s
        self.lose_watches()
        self.changed()
        await self.clock.sleep(down_s)

    def lose_watches(self, end: bool = False) -> None:
        """Every live watch stops delivering; with `end`, its iteration ends too."""
        for watch in self.watches:
            watch.lost = True
            if end:
                watch.queue.put_nowait(_END)
        self.watches.clear()
        self.changed()

    @property
    def down(self) -> bool:
        return self.now() < self._down_until

    def jetstream_down(self) -> bool:
        return self.down or self.faults.is_down

    # -- observing (for checkers: no request, no fault applies) ------------------------------

    def on_commit(self, callback: Commit) -> None:
        """Call `callback(subject, data, headers)` for every message stored from now on."""
        self._on_commit.append(callback)

    def peek(self, bucket: str, key: str) -> bytes | None:
        """A key's present value, read directly (nothing is expired or changed by reading)."""
        stream = self.streams.get(names.kv_stream(bucket))
        last = stream.last_on(names.kv_subject(bucket, key)) if stream else None
        if last is None or (last.expires_at is not None and last.expires_at <= self.now()):
            return None
        return entry_of(last, key).value

    # -- waiting -------------------------------------------------------------------------------

    def changed(self, topic: Hashable | None = None) -> None:
        """The state changed: wake whoever waits on `topic` (a stream's name), or with none
        everyone, and look again for the server's next timer."""
        self._timers_stale = True
        self._tick_stale = True
        self.wake(topic)
        if self._waiting and not self._rearming:
            self._rearming = True
            asyncio.get_running_loop().call_soon(self._rearm)

    def wake(self, topic: Hashable | None = None) -> None:
        """Wake whoever waits on `topic` (a stream's name, a `Live`), or with none everyone."""
        waiters = self._waiting if topic is None else self._by_topic.get(topic, {})
        for waiter in list(waiters):
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, deadline: float, *topics: Hashable) -> None:
        """Until one of `topics` or the whole server changes, a timer of the server fires, or
        `deadline` (monotonic)."""
        now = self.now()
        if min(deadline, self._arm(now)) <= now:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting[waiter] = None
        for topic in topics:
            self._by_topic.setdefault(topic, {})[waiter] = None
        timeout = None
        if deadline < math.inf:
            timeout = loop.call_at(self._loop_time(loop, deadline), _settle, waiter)
        try:
            await waiter
        finally:
            if timeout is not None:
                timeout.cancel()
            self._forget(waiter, topics)

    def _forget(self, waiter: asyncio.Future[None], topics: tuple[Hashable, ...]) -> None:
        del self._waiting[waiter]
        for topic in topics:
            waiters = self._by_topic[topic]
            del waiters[waiter]
            if not waiters:
                del self._by_topic[topic]

    def _loop_time(self, loop: asyncio.AbstractEventLoop, at: float) -> float:
        """The loop's time when the clock's monotonic time is `at` (they may differ)."""
        return loop.time() + max(0.0, at - self.clock.monotonic())

    def _rearm(self) -> None:
        self._rearming = False
        if self._waiting:
            self._arm(self.now())

    def _arm(self, now: float) -> float:
        """The server's next timer, with one loop timer set to wake every waiter then."""
        if self._timers_stale or self._timer_at <= now:
            self._timer_at = self._next_timer(now)
            self._timers_stale = False
        if self._armed is not None and self._armed_at != self._timer_at:
            self._armed.cancel()
            self._armed = None
        if self._armed is None and self._timer_at < math.inf:
            loop = asyncio.get_running_loop()
            self._armed = loop.call_at(self._loop_time(loop, self._timer_at), self._fire)
            self._armed_at = self._timer_at
        return self._timer_at

    def _fire(self) -> None:
        self._armed = None
        self._timers_stale = True
        self.wake()

    def _next_timer(self, now: float) -> float:
        times = [self._down_until, self.faults.back_at]
        times += [client.faults.back_at for client in self.clients]
        times += [s.next_expiry() or -math.inf for s in self.streams.values()]
        for durables in self.consumers.values():
            times += [d.next_due(now) or -math.inf for d in durables.values()]
        return min((t for t in times if t > now), default=math.inf)

    # -- time ----------------------------------------------------------------------------------

    def now(self) -> float:
        """Monotonic time for deciding what is due (`faults.TIME_SLACK_S`)."""
        return settled(self.clock)

    def wall(self) -> datetime:
        return datetime.fromtimestamp(self.clock.time(), UTC)

    def next_id(self) -> str:
        """A deterministic unique token (object chunk subjects, advisory ids)."""
        self._counter += 1
        return f"MEM{self._counter:019d}"

    def tick(self) -> None:
        """Apply every timer that has passed: expiries, and consumers' ack waits (a message
        delivered `max_deliver` times is dropped with a max-deliveries advisory)."""
        now, wall = self.now(), self.wall()
        for stream in self.streams.values():
            for marker in stream.expire(now, wall):
                self._stored(stream, marker)
        for stream_name, durables in self.consumers.items():
            stream = self.streams[stream_name]
            for durable_name, durable in durables.items():
                for seq, deliveries in durable.exhausted(stream, now):
                    self._advise(stream_name, durable_name, seq, deliveries)

    def _advise(self, stream: str, consumer: str, seq: int, deliveries: int) -> None:
        subject = names.max_deliveries_advisory(stream).replace("*", consumer)
        advisory = {
            "type": MAX_DELIVERIES_ADVISORY,
            "id": self.next_id(),
            "timestamp": self.wall().isoformat(),
            "stream": stream,
            "consumer": consumer,
            "stream_seq": seq,
            "deliveries": deliveries,
        }
        data = json.dumps(advisory).encode()
        self.route(subject, data, {})
        target = self.stream_for(subject)
        if target is not None:
            self.store(target, subject, data, {})

    # -- streams -------------------------------------------------------------------------------

    def add_stream(self, config: StreamConfig) -> None:
        """Create the stream, or update the settings of the one by that name."""
        name = config.name or ""
        for other in self.streams.values():
            if other.name != name and _overlaps(other.config, config):
                raise BusError(
                    f"add stream {name}: subjects overlap with {other.name} (code 10065)"
                )
        if name in self.streams:
            self.streams[name].config = config
        else:
            self.streams[name] = Stream(config)
            self.consumers[name] = {}

    def stream(self, name: str) -> Stream:
        if name not in self.streams:
            raise BusError(f"stream {name} not found (code 10059)")
        return self.streams[name]

    def stream_for(self, subject: str) -> Stream | None:
        return next((s for s in self.streams.values() if s.captures(subject)), None)

    def store(
        self, stream: Stream, subject: str, data: bytes, headers: dict[str, str]
    ) -> tuple[int, bool]:
        """A JetStream publish into `stream`: (sequence, duplicate)."""
        seq, duplicate = stream.store(subject, data, headers, self.clock.monotonic(), self.wall())
        if not duplicate:
            self._stored(stream, stream.msgs[seq])
        return seq, duplicate

    def _stored(self, stream: Stream, stored: Stored) -> None:
        for commit in self._on_commit:
            commit(stored.subject, stored.data, stored.headers)
        entry = _entry(stored)
        for watch in self.watches:
            if not watch.lost and watch.client.reachable and matches(watch.filter, stored.subject):
                watch.queue.put_nowait(entry)
        self.changed()

    def remove(self, stream: Stream, seq: int) -> None:
        if stream.remove(seq):
            self.changed()

    # -- core messages -------------------------------------------------------------------------

    def route(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Hand a message to every reachable subscription matching `subject`."""
        if self.down:
            return
        message = Message(subject, data, dict(headers))
        for sub in self.subscriptions:
            if sub.client.reachable and matches(sub.filter, subject):
                sub.queue.put_nowait(message)

    def watch(self, client: MemoryBus, subject: str) -> Live:
        """A live watch on `subject`, primed with its last entry (if any) and then None."""
        live = Live(client, subject)
        stream = self.stream_for(subject.replace("*", "_").replace(">", "_"))
        for stored in stream.last_per_subject(subject) if stream else []:
            live.queue.put_nowait(_entry(stored))
        live.queue.put_nowait(None)
        self.watches.append(live)
        return live

    def unwatch(self, live: Live) -> None:
        live.lost = True
        if live in self.watches:
            self.watches.remove(live)
        live.queue.put_nowait(_END)
        self.changed()


_END = object()  # ends a watch's or subscription's queue


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def end_marker() -> object:
    return _END


def _overlaps(a: StreamConfig, b: StreamConfig) -> bool:
    return any(overlap(x, y) for x in a.subjects or [] for y in b.subjects or [])


def _entry(stored: Stored) -> Entry:
    """A KV entry of a stored message (deleted: a DEL or PURGE, or an expiry marker)."""
    key = stored.subject.split(".", 2)[2] if stored.subject.count(".") >= 2 else stored.subject
    deleted = stored.headers.get("KV-Operation") in _DELETED_OPS or (
        "Nats-Marker-Reason" in stored.headers
    )
    return Entry(key, stored.seq, None if deleted else stored.data, stored.timestamp)


def entry_of(stored: Stored | None, key: str) -> Entry:
    """The entry a KV read gives: absent is revision 0."""
    if stored is None:
        return Entry(key, 0, None, None)
    entry = _entry(stored)
    return Entry(key, entry.revision, entry.value, entry.written_at)
