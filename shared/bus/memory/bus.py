"""`MemoryBus`: a client of a `MemoryServer`, with the semantics of `NatsBus` (its docstrings
are the contract) and no network."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

from schemas import names
from shared.bus import provision
from shared.bus.client import FOLLOW_BATCH, FOLLOW_WAIT_S, Connection, ttl_header
from shared.bus.consumers import ConsumerCounts, WorkConsumer
from shared.bus.errors import BusError, CasFailed, Unavailable
from shared.bus.memory.consumer import Durable, refuse_overlap
from shared.bus.memory.faults import Faults, RequestKind
from shared.bus.memory.handles import (
    MemoryPull,
    MemoryRegistration,
    MemorySubscription,
    MemoryWatch,
)
from shared.bus.memory.objects import object_meta
from shared.bus.memory.server import Live, entry_of
from shared.bus.memory.stream import Stream
from shared.bus.message import Entry, Message
from shared.bus.ports import Bus, Clock, Handler

if TYPE_CHECKING:
    from shared.bus.memory.server import MemoryServer


class MemoryBus:
    """One client (a simulated process) of a `MemoryServer`. Every request first yields to the
    event loop, then runs at once against the server's state, on the server's clock."""

    def __init__(self, server: MemoryServer, name: str) -> None:
        self.server = server
        self.name = name
        self.faults = Faults(server.clock, server.changed)
        self.closed = False
        self._partitioned = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.latency: Callable[[], float] | None = None  # seconds a request spends in flight
        self._followers: set[asyncio.Task[None]] = set()
        self._subscriptions: list[MemorySubscription] = []
        self._watches: list[Live] = []

    # -- faults --------------------------------------------------------------------------------

    def partition(self, on: bool) -> None:
        """Cut this client off (or reconnect it): its requests raise Unavailable, its core
        messages go nowhere and none reach it, its watches miss what changes meanwhile."""
        self._partitioned = on
        self.server.changed()

    def pause(self, on: bool) -> None:
        """Freeze this client (a stopped process: SIGSTOP, a long GC pause) or thaw it: its
        requests wait, then go on from where they were, however much the world moved on."""
        if on:
            self._resumed.clear()
        else:
            self._resumed.set()

    @property
    def reachable(self) -> bool:
        """Connected to a running server."""
        return not (self.closed or self._partitioned or self.server.down)

    @property
    def jetstream_reachable(self) -> bool:
        return self.reachable and not (self.server.faults.is_down or self.faults.is_down)

    async def request(self, what: str) -> None:
        """Yield, then fail as NATS would if the request cannot be answered now."""
        await self.server.clock.sleep(self.latency() if self.latency else 0)
        await self._resumed.wait()
        if self.closed:
            raise Unavailable(f"{what}: ConnectionClosedError")
        if not self.jetstream_reachable:
            raise Unavailable(f"{what}: TimeoutError")
        self.server.tick()

    def reply_lost(self, kind: RequestKind, what: str) -> None:
        """After a request was applied: fail it if its reply is to be lost."""
        if self.faults.take_lost(kind) or self.server.faults.take_lost(kind):
            raise Unavailable(f"{what}: TimeoutError (reply lost)")

    async def _stream(self, name: str, what: str) -> Stream:
        await self.request(what)
        return self.server.stream(name)

    # -- lifecycle -----------------------------------------------------------------------------

    async def provision(self) -> None:
        """Create every stream, bucket and object store Conclave uses (idempotent)."""
        await self.request("provision")
        for config in provision.streams():
            config.num_replicas = self.server.replicas
            self.server.add_stream(config)
        for config in provision.lease_slot_streams(self.server.replicas):
            self.server.add_stream(config)

    async def close(self) -> None:
        """Stop this client's followers, subscriptions, watches and services."""
        self.closed = True
        for task in list(self._followers):
            task.cancel()
        for sub in self._subscriptions:
            await sub.unsubscribe()
        for live in self._watches:
            self.server.unwatch(live)
        if self in self.server.clients:
            self.server.clients.remove(self)
        for key, (client, _) in list(self.server.services.items()):
            if client is self:
                del self.server.services[key]
        self.server.changed()

    def connection(self) -> Connection:
        url = f"memory://{self.name}"
        return Connection(url=url, servers=[url], server_name="memory", version="memory")

    @property
    def max_payload(self) -> int:
        return self.server.max_payload

    @property
    def clock(self) -> Clock:
        """The server's clock: its TTLs, ack waits and timeouts run on it."""
        return self.server.clock

    @property
    def replicas(self) -> int:
        return self.server.replicas

    # -- publishing ----------------------------------------------------------------------------

    async def _publish(
        self, subject: str, data: bytes, headers: dict[str, str], what: str
    ) -> tuple[int, bool]:
        """A JetStream publish: (sequence, duplicate)."""
        self._check_payload(data, what)
        await self.request(what)
        stream = self.server.stream_for(subject)
        if stream is None:
            raise Unavailable(f"{what}: NoRespondersError")
        self.server.route(subject, data, headers)
        result = self.server.store(stream, subject, data, headers)
        self.reply_lost("publish", what)
        return result

    def _check_payload(self, data: bytes, what: str) -> None:
        if len(data) > self.server.max_payload:
            raise BusError(f"{what}: MaxPayloadError({len(data)} > {self.server.max_payload})")

    async def publish_durable(self, subject: str, data: bytes, msg_id: str | None = None) -> int:
        headers = {"Nats-Msg-Id": msg_id} if msg_id else {}
        seq, _ = await self._publish(subject, data, headers, f"publish {subject}")
        return seq

    async def publish_once(self, subject: str, data: bytes, msg_id: str) -> bool:
        _, duplicate = await self._publish(
            subject, data, {"Nats-Msg-Id": msg_id}, f"publish {subject}"
        )
        return not duplicate

    async def publish(self, subject: str, data: bytes) -> None:
        """Core publish: fire and forget, lost while unreachable; a stream capturing the
        subject stores it too (as on NATS)."""
        self._check_payload(data, f"publish {subject}")
        await self.server.clock.sleep(0)
        if self.closed:
            raise Unavailable(f"publish {subject}: ConnectionClosedError")
        if not self.reachable:
            return
        self.server.route(subject, data, {})
        stream = self.server.stream_for(subject)
        if stream is not None and self.jetstream_reachable:
            self.server.tick()
            with suppress(BusError):  # nobody waits for the stream's answer to a core publish
                self.server.store(stream, subject, data, {})

    async def subscribe(self, subject: str, handler: Handler) -> MemorySubscription:
        if self.closed:
            raise Unavailable(f"subscribe {subject}: ConnectionClosedError")
        live = Live(self, subject)
        self.server.subscriptions.append(live)
        sub = MemorySubscription(self, live, handler)
        self._subscriptions.append(sub)
        return sub

    async def flush(self, timeout_s: int = 10) -> None:
        await self.server.clock.sleep(0)
        if not self.reachable:
            raise Unavailable("flush: TimeoutError")

    # -- KV ------------------------------------------------------------------------------------

    async def last(self, bucket: str, key: str) -> Entry:
        stream = await self._stream(names.kv_stream(bucket), f"get {bucket}/{key}")
        return entry_of(stream.last_on(names.kv_subject(bucket, key)), key)

    async def write(
        self,
        bucket: str,
        key: str,
        value: bytes,
        *,
        ttl_s: float | None = None,
        expect_last: int | None = None,
        timeout: float | None = None,
    ) -> int:
        headers: dict[str, str] = {}
        if ttl_s is not None:
            headers["Nats-TTL"] = ttl_header(ttl_s)
        if expect_last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect_last)
        subject = names.kv_subject(bucket, key)
        seq, _ = await self._publish(subject, value, headers, f"write {bucket}/{key}")
        return seq

    async def cas_delete(self, bucket: str, key: str, last: int, timeout: float = 2.0) -> int:
        headers = {"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(last)}
        subject = names.kv_subject(bucket, key)
        seq, _ = await self._publish(subject, b"", headers, f"delete {bucket}/{key}")
        return seq

    async def snapshot(self, bucket: str) -> dict[str, Entry]:
        stream = await self._stream(names.kv_stream(bucket), f"snapshot {bucket}")
        entries = {}
        for stored in stream.last_per_subject(names.kv_subject(bucket, ">")):
            entry = entry_of(stored, stored.subject.split(".", 2)[2])
            if entry.present:
                entries[entry.key] = entry
        return entries

    @asynccontextmanager
    async def watch(self, bucket: str, key: str) -> AsyncIterator[MemoryWatch]:
        await self._stream(names.kv_stream(bucket), f"watch {bucket}/{key}")
        live = self.server.watch(self, names.kv_subject(bucket, key))
        self._watches.append(live)
        try:
            yield MemoryWatch(self, live)
        finally:
            self.server.unwatch(live)
            self._watches.remove(live)

    # -- stored messages -----------------------------------------------------------------------

    async def read_all(self, stream: str, subject: str, batch: int = 256) -> list[Message]:
        found = (await self._stream(stream, f"read {subject}")).on(subject)
        return [m.message(stream, len(found) - i - 1) for i, m in enumerate(found)]

    async def follow(
        self,
        stream: str,
        subject: str,
        start_seq: int,
        handler: Handler,
        wait_s: float = FOLLOW_WAIT_S,
    ) -> asyncio.Task[None]:
        """Hand every message on `subject` from `start_seq` on to `handler`, in order, until the
        bus closes or the task is cancelled; it waits out outages and goes on from where it was
        (as `NatsBus.follow` makes its consumer again)."""
        await self._stream(stream, f"follow {subject}")
        task = asyncio.create_task(
            self._follow(stream, subject, max(1, start_seq), handler, wait_s)
        )
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)
        return task

    async def _follow(
        self, stream: str, subject: str, next_seq: int, handler: Handler, wait_s: float
    ) -> None:
        clock = self.server.clock
        while not self.closed:
            found = self._unread(stream, subject, next_seq)
            for i, stored in enumerate(found):
                next_seq = stored.seq + 1
                await handler(stored.message(stream, len(found) - i - 1))
            if not found:
                await self.server.wait(self, clock.monotonic() + wait_s, stream)

    def _unread(self, stream: str, subject: str, next_seq: int) -> list[Any]:
        if not self.jetstream_reachable or stream not in self.server.streams:
            return []
        self.server.tick()
        return self.server.streams[stream].on(subject, next_seq)[:FOLLOW_BATCH]

    async def subject_counts(self, stream: str, subjects: str) -> dict[str, int]:
        return (await self._stream(stream, f"count {subjects}")).counts(subjects)

    async def first_on(self, stream: str, subject: str) -> Message | None:
        found = (await self._stream(stream, f"read the first {subject}")).on(subject)
        return found[0].message(stream) if found else None

    async def last_on(self, stream: str, subject: str) -> Message | None:
        last = (await self._stream(stream, f"read the last {subject}")).last_on(subject)
        return last.message(stream) if last else None

    async def at_seq(self, stream: str, seq: int) -> Message | None:
        stored = (await self._stream(stream, f"read {stream} #{seq}")).msgs.get(seq)
        return stored.message(stream) if stored else None

    async def delete_at(self, stream: str, seq: int) -> None:
        target = await self._stream(stream, f"delete {stream} #{seq}")
        if target.config.deny_delete:
            raise BusError(f"delete {stream} #{seq}: message delete not permitted (code 10076)")
        self.server.remove(target, seq)
        self.reply_lost("delete", f"delete {stream} #{seq}")

    async def stream_seqs(self, stream: str) -> tuple[int, int]:
        target = await self._stream(stream, f"stream info {stream}")
        return target.first_seq, target.last_seq

    async def first_time(self, stream: str, subject: str) -> float | None:
        msg = await self.first_on(stream, subject)
        return msg.timestamp.timestamp() if msg and msg.timestamp else None

    # -- objects -------------------------------------------------------------------------------

    async def put_object(self, store: str, name: str, data: bytes, chunk_bytes: int) -> bool:
        """As `NatsBus.put_object`: the chunks, then the meta only if the object has none."""
        nuid = self.server.next_id()
        chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
        meta = object_meta(store, name, nuid, data, chunk_bytes, len(chunks), self.server.wall())
        for chunk in chunks:
            await self._publish(
                names.object_chunk_subject(store, nuid), chunk, {}, f"put object {store}/{name}"
            )
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        subject = names.object_meta_subject(store, name)
        try:
            await self._publish(subject, meta, headers, f"put object {store}/{name} meta")
        except CasFailed:
            return False
        return True

    def object_chunks(
        self, stream: str, subject: str, count: int, batch: int
    ) -> AsyncGenerator[list[bytes], None]:
        return self._chunks(stream, subject, count, batch)

    async def _chunks(
        self, stream: str, subject: str, count: int, batch: int
    ) -> AsyncGenerator[list[bytes], None]:
        found = (await self._stream(stream, "read model chunks")).on(subject)[:count]
        for i in range(0, len(found), batch):
            yield [m.data for m in found[i : i + batch]]
        if len(found) < count:
            raise Unavailable("model chunks stopped arriving")

    # -- durable consumers ---------------------------------------------------------------------

    async def add_consumer(self, stream: str, consumer: WorkConsumer) -> None:
        """Create (or update) a durable consumer; a work queue refuses overlapping filters."""
        target = await self._stream(stream, f"add consumer {consumer.durable}")
        durables = self.server.consumers[stream]
        if target.work_queue:
            refuse_overlap(durables, consumer)
        if consumer.durable in durables:
            durables[consumer.durable].config = consumer
        else:
            durables[consumer.durable] = Durable(consumer, next_seq=max(1, target.first_seq))
        self.server.changed(stream)

    async def consumer_exists(self, stream: str, durable: str) -> bool:
        """Whether `durable` is on `stream` (False too when the stream is missing, as the
        server answers both with not found)."""
        await self.request(f"consumer info {durable}")
        return durable in self.server.consumers.get(stream, {})

    async def consumer_counts(self, stream: str, durable: str) -> ConsumerCounts:
        target = await self._stream(stream, f"consumer info {durable}")
        return self._durable(stream, durable).counts(target)

    def _durable(self, stream: str, durable: str) -> Durable:
        found = self.server.consumers[stream].get(durable)
        if found is None:
            raise BusError(f"consumer {durable}: consumer not found (code 10014)")
        return found

    async def delete_consumer(self, stream: str, durable: str) -> None:
        """Remove a durable consumer (nothing if there is none)."""
        await self.request(f"delete consumer {durable}")
        self.server.consumers.get(stream, {}).pop(durable, None)
        self.server.changed(stream)

    async def bind(self, stream: str, durable: str) -> MemoryPull:
        await self._stream(stream, f"bind {durable} consumer")
        self._durable(stream, durable)
        return MemoryPull(self, stream, durable)

    async def pull(self, stream: str, subjects: str, consumer: WorkConsumer | str) -> MemoryPull:
        """Bind `consumer` if it exists; else make it, filtered on `subjects` (as nats-py's
        `pull_subscribe`), with its settings or the defaults."""
        durable = consumer if isinstance(consumer, str) else consumer.durable
        await self._stream(stream, f"consumer {durable}")
        if durable not in self.server.consumers[stream]:
            config = WorkConsumer(durable, subjects) if isinstance(consumer, str) else consumer
            await self.add_consumer(stream, dataclasses.replace(config, subjects=subjects))
        return MemoryPull(self, stream, durable)

    # -- services ------------------------------------------------------------------------------

    async def register_service(
        self, name: str, version: str, description: str, metadata: dict[str, str]
    ) -> MemoryRegistration | None:
        """Announce a service; None when the server cannot be reached (as micro would fail)."""
        await self.server.clock.sleep(0)
        if not self.reachable:
            return None
        key = self.server.next_id()
        self.server.services[key] = (self, dict(metadata))
        return MemoryRegistration(self, key)

    async def ping_services(self, wait_s: float) -> list[dict[str, Any]]:
        """The metadata of every reachable registered service, after waiting `wait_s`."""
        found = [
            dict(meta)
            for client, meta in self.server.services.values()
            if client.reachable and self.reachable
        ]
        await self.server.clock.sleep(wait_s)
        return found


def _memory_bus_is_a_bus(bus: MemoryBus) -> Bus:
    """Checked by mypy: the memory bus satisfies every port."""
    return bus
