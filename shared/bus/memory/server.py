"""The in-memory server: every stream, durable consumer, subscription and watch, shared by the
clients it hands out (`connect`), with its time on an injected clock."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Hashable, Mapping
from contextlib import suppress
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
from shared.bus.memory.waiting import Waiters
from shared.bus.message import Entry, Message
from shared.bus.ports import Clock, SystemClock

if TYPE_CHECKING:
    from shared.bus.memory.bus import MemoryBus

Commit = Callable[[str, bytes, Mapping[str, str]], None]
MAX_DELIVERIES_ADVISORY = "io.nats.jetstream.advisory.v1.max_deliver"
_DELETED_OPS = {"DEL", "PURGE"}
_MAX_CACHED_SUBJECTS = 10_000  # object chunk subjects are unique: keep the cache bounded


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
        self.waiters = Waiters()
        self._timers_stale = True
        self._timer = Timer(-math.inf, [])
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._rearming = False
        self._to_tick: set[str] = set()  # streams changed since they were last ticked
        self._due_of: dict[str, float] = {}  # when a stream next has a timer to apply
        self._tick_due = -math.inf
        self._stream_of: dict[str, str | None] = {}  # which stream captures a subject
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
        return self._down_until > -math.inf and self.now() < self._down_until

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
        return None if _deleted(last) else last.data

    # -- waiting -------------------------------------------------------------------------------

    def changed(self, topic: Hashable | None = None) -> None:
        """The state changed: wake whoever waits on `topic` (a stream's name), or with none
        everyone, and look again for the server's next timer."""
        self._timers_stale = True
        if topic is None:
            self._to_tick.update(self.streams)
        elif topic in self.streams:
            self._to_tick.add(str(topic))
        self.waiters.wake(topic)
        if self.waiters and not self._rearming:
            self._rearming = True  # once for every change in this turn of the loop
            self.waiters.loop().call_soon(self._rearm)

    async def wait(self, client: MemoryBus, deadline: float, *topics: Hashable) -> None:
        """For `client`: until one of `topics` (a stream's name, a watch's `Live`) or the whole
        server changes, a timer of the server concerning them fires, or `deadline`
        (monotonic)."""
        now = self.now()
        if min(deadline, self._arm(now)) <= now:
            return
        await self.waiters.wait(client, self._loop_time(deadline), topics)

    def _loop_time(self, at: float) -> float:
        """The loop's time when the clock's monotonic time is `at` (they may differ)."""
        if at == math.inf:
            return at
        return asyncio.get_running_loop().time() + max(0.0, at - self.clock.monotonic())

    def _rearm(self) -> None:
        self._rearming = False
        if self.waiters:
            self._arm(self.now())

    def _arm(self, now: float) -> float:
        """The server's next timer, with one loop timer set for it."""
        if self._timers_stale or self._timer.at <= now:
            self._timer = self._next_timer(now)
            self._timers_stale = False
        at = self._timer.at
        if self._armed is not None and self._armed_at != at:
            self._armed.cancel()
            self._armed = None
        if self._armed is None and at < math.inf:
            self._armed = asyncio.get_running_loop().call_at(self._loop_time(at), self._fire)
            self._armed_at = at
        return at

    def _fire(self) -> None:
        """A timer is due: apply it (if some waiter could reach JetStream to, as it then would)
        and wake those it concerns."""
        self._armed = None
        self._timers_stale = True
        if any(client.jetstream_reachable for client in self.waiters.clients()):
            with suppress(BusError):  # the next tick of a request or waiter raises it again
                self.tick()
        topics = self._timer.wakes
        for topic in [None] if None in topics else dict.fromkeys(topics):
            self.waiters.wake(topic)

    def _next_timer(self, now: float) -> Timer:
        """The earliest timer after `now`. An outage or restart ending wakes everyone; a
        redelivery coming due, the waiters on its stream; an expiry nobody (the tick applying
        it stores and wakes whatever it concerns)."""
        timers: list[tuple[float, Hashable | None]] = [
            (self._down_until, None),
            (self.faults.back_at, None),
        ]
        timers += [(client.faults.back_at, None) for client in self.clients]
        timers += [(s.next_expiry() or -math.inf, _NOBODY) for s in self.streams.values()]
        for stream, durables in self.consumers.items():
            timers += [(d.next_due(now) or -math.inf, stream) for d in durables.values()]
        at = min((t for t, _ in timers if t > now), default=math.inf)
        return Timer(at, [topic for t, topic in timers if t == at])

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
        delivered `max_deliver` times is dropped with a max-deliveries advisory). Nothing to
        do on a stream that has not changed and has nothing due since it was last ticked."""
        now = self.now()
        if not self._to_tick and now < self._tick_due:
            return
        due = [s for s in self.streams if s in self._to_tick or self._due_of[s] <= now]
        self._to_tick.difference_update(due)  # what this tick changes marks them again
        self._apply_timers(due, now)
        for name in due:
            self._due_of[name] = self._next_due(name)
        self._tick_due = min(self._due_of.values(), default=math.inf)

    def _next_due(self, name: str) -> float:
        exhaustions = [d.next_exhaustion() for d in self.consumers[name].values()]
        return min([self.streams[name].next_expiry() or math.inf, *exhaustions])

    def _apply_timers(self, names: list[str], now: float) -> None:
        wall = self.wall()
        for stream in [self.streams[name] for name in names]:
            for marker in stream.expire(now, wall):
                self._stored(stream, marker)
        for stream_name in names:
            stream, durables = self.streams[stream_name], self.consumers[stream_name]
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
        existing = self.streams.get(name)
        if existing is None or existing.config.subjects != config.subjects:
            self._refuse_overlap(name, config)
            self._stream_of.clear()
        self._timers_stale = True
        self._to_tick.add(name)
        self._due_of.setdefault(name, -math.inf)
        if existing is not None:
            existing.config = config
        else:
            self.streams[name] = Stream(config)
            self.consumers[name] = {}

    def _refuse_overlap(self, name: str, config: StreamConfig) -> None:
        for other in self.streams.values():
            if other.name != name and _overlaps(other.config, config):
                raise BusError(
                    f"add stream {name}: subjects overlap with {other.name} (code 10065)"
                )

    def stream(self, name: str) -> Stream:
        if name not in self.streams:
            raise BusError(f"stream {name} not found (code 10059)")
        return self.streams[name]

    def stream_for(self, subject: str) -> Stream | None:
        if subject not in self._stream_of:
            if len(self._stream_of) >= _MAX_CACHED_SUBJECTS:
                self._stream_of.clear()
            found = next((s for s in self.streams.values() if s.captures(subject)), None)
            self._stream_of[subject] = found.name if found else None
        name = self._stream_of[subject]
        return None if name is None else self.streams[name]

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
                self.waiters.wake(watch)
        self.changed(stream.name)

    def remove(self, stream: Stream, seq: int) -> None:
        if stream.remove(seq):
            self.changed(stream.name)

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
        self.waiters.wake(live)


_END = object()  # ends a watch's or subscription's queue


_NOBODY = object()  # the topic of a timer that wakes no waiter


@dataclass
class Timer:
    """When the server's next timer is due, and the topics of the waiters it wakes (None:
    every waiter)."""

    at: float
    wakes: list[Hashable | None]


def end_marker() -> object:
    return _END


def _overlaps(a: StreamConfig, b: StreamConfig) -> bool:
    return any(overlap(x, y) for x in a.subjects or [] for y in b.subjects or [])


def _entry(stored: Stored) -> Entry:
    """A KV entry of a stored message (deleted: a DEL or PURGE, or an expiry marker)."""
    key = stored.subject.split(".", 2)[2] if stored.subject.count(".") >= 2 else stored.subject
    return Entry(key, stored.seq, None if _deleted(stored) else stored.data, stored.timestamp)


def _deleted(stored: Stored) -> bool:
    """A DEL or PURGE, or an expiry marker."""
    headers = stored.headers
    return headers.get("KV-Operation") in _DELETED_OPS or "Nats-Marker-Reason" in headers


def entry_of(stored: Stored | None, key: str) -> Entry:
    """The entry a KV read gives: absent is revision 0."""
    if stored is None:
        return Entry(key, 0, None, None)
    entry = _entry(stored)
    return Entry(key, entry.revision, entry.value, entry.written_at)
