"""What Conclave needs from its bus, as narrow Protocols: the nats-py adapter (`Bus`) satisfies
them, and so can an in-memory bus with the same semantics. Code outside `shared/bus` types its
parameters with the narrowest port it uses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from shared.bus.consumers import ConsumerCounts, WorkConsumer
from shared.bus.message import Entry, Message, Subscription

if TYPE_CHECKING:
    from shared.bus.client import Connection, NatsBus
    from shared.bus.queue import Consumer, Queued

Handler = Callable[[Message], Awaitable[None]]
J_co = TypeVar("J_co", covariant=True)


class Watch(Protocol):
    """Changes to one key: an Entry per change (value None: deleted or expired), and None once
    the values present when the watch began have all been seen."""

    def __aiter__(self) -> AsyncIterator[Entry | None]: ...

    async def stop(self) -> None: ...


class KV(Protocol):
    """Buckets of keys with per-key TTL; every write and delete can be a compare-and-set on the
    key's last revision (0: none), raising `CasFailed` when it has moved."""

    @property
    def replicas(self) -> int: ...

    async def last(self, bucket: str, key: str) -> Entry: ...

    async def write(
        self,
        bucket: str,
        key: str,
        value: bytes,
        *,
        ttl_s: float | None = None,
        expect_last: int | None = None,
        timeout: float | None = None,
    ) -> int: ...

    async def cas_delete(self, bucket: str, key: str, last: int, timeout: float = 2.0) -> int: ...

    async def snapshot(self, bucket: str) -> dict[str, Entry]: ...

    def watch(self, bucket: str, key: str) -> AbstractAsyncContextManager[Watch]: ...


class Subjects(Protocol):
    """Core messages: fire and forget, to whoever listens now."""

    async def publish(self, subject: str, data: bytes) -> None: ...

    async def subscribe(self, subject: str, handler: Handler) -> Subscription: ...

    async def flush(self, timeout_s: int = 10) -> None: ...


class Streams(Protocol):
    """Stored messages: published once per message id, read by subject filter or sequence."""

    async def publish_durable(
        self, subject: str, data: bytes, msg_id: str | None = None
    ) -> int: ...

    async def publish_once(self, subject: str, data: bytes, msg_id: str) -> bool: ...

    async def read_all(self, stream: str, subject: str, batch: int = 256) -> list[Message]: ...

    async def follow(
        self, stream: str, subject: str, start_seq: int, handler: Handler, wait_s: float = ...
    ) -> asyncio.Task[None]: ...

    async def subject_counts(self, stream: str, subjects: str) -> dict[str, int]: ...

    async def first_on(self, stream: str, subject: str) -> Message | None: ...

    async def last_on(self, stream: str, subject: str) -> Message | None: ...

    async def at_seq(self, stream: str, seq: int) -> Message | None: ...

    async def delete_at(self, stream: str, seq: int) -> None: ...

    async def stream_seqs(self, stream: str) -> tuple[int, int]: ...

    async def first_time(self, stream: str, subject: str) -> float | None: ...


class Objects(Protocol):
    """Write-once objects stored as chunks, read back chunk by chunk."""

    async def put_object(self, store: str, name: str, data: bytes, chunk_bytes: int) -> bool: ...

    def object_chunks(
        self, stream: str, subject: str, count: int, batch: int
    ) -> AsyncGenerator[list[bytes], None]: ...


class Acks(Protocol):
    """A message handed out by a durable consumer, until it is acknowledged."""

    @property
    def message(self) -> Message: ...

    async def ack(self) -> None: ...

    async def ack_sync(self) -> None: ...

    async def nak(self, delay_s: float | None = None) -> None: ...

    async def in_progress(self) -> None: ...

    async def term(self) -> None: ...


class Pull(Protocol):
    """A durable consumer's queue: up to `batch` messages, [] when none came in time."""

    async def fetch(self, batch: int, timeout_s: float) -> Sequence[Acks]: ...

    async def unsubscribe(self) -> None: ...


class Consumers(Protocol):
    """Durable explicit-ack consumers on streams: made by the coordinator, pulled by workers."""

    async def add_consumer(self, stream: str, consumer: WorkConsumer) -> None: ...

    async def consumer_exists(self, stream: str, durable: str) -> bool: ...

    async def consumer_counts(self, stream: str, durable: str) -> ConsumerCounts: ...

    async def delete_consumer(self, stream: str, durable: str) -> None: ...

    async def bind(self, stream: str, durable: str) -> Pull: ...

    async def pull(self, stream: str, subjects: str, consumer: WorkConsumer | str) -> Pull: ...


class Registration(Protocol):
    """A process announced as a service; `stop` withdraws it."""

    async def stop(self) -> None: ...


class Services(Protocol):
    """Processes announcing themselves (NATS micro), and finding every one that answers."""

    async def register_service(
        self, name: str, version: str, description: str, metadata: dict[str, str]
    ) -> Registration | None: ...

    async def ping_services(self, wait_s: float) -> list[dict[str, Any]]: ...


class Timed(Protocol):
    """A bus's clock: the time of the world it connects to (virtual under simulation)."""

    @property
    def clock(self) -> Clock: ...


class Lifecycle(Timed, Protocol):
    """The connection itself: provisioning what Conclave uses, limits, where it is, closing."""

    async def provision(self) -> None: ...

    async def close(self) -> None: ...

    def connection(self) -> Connection: ...

    @property
    def max_payload(self) -> int: ...


class Bus(KV, Subjects, Streams, Objects, Consumers, Services, Lifecycle, Protocol):
    """Everything a service may ask of the bus: `NatsBus` on a real server, or an in-memory
    bus with the same semantics."""


class Delivery(Protocol[J_co]):
    """One delivery of a typed job: finish it, retry it (saying why), hand it back, or keep it
    alive with in-progress acks while working."""

    @property
    def job(self) -> J_co: ...

    @property
    def delivered(self) -> int: ...

    @property
    def submitted_at(self) -> float: ...

    async def done(self) -> None: ...

    async def retry(self, bus: Streams, node: str, reason: str, delay_s: float = 1.0) -> None: ...

    async def release(self) -> None: ...

    def kept_alive(self, every_s: float) -> AbstractAsyncContextManager[None]: ...


class WorkQueue(Protocol[J_co]):
    """A worker's typed work queue: the next job, or None when none came in time."""

    async def next(self, timeout_s: float = 5.0) -> Delivery[J_co] | None: ...


class Clock(Protocol):
    """Wall time, monotonic time and sleeping, so a simulation can run them on its own."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _nats_bus_is_a_bus(bus: NatsBus) -> Bus:
    """Checked by mypy: the nats-py adapter satisfies every port."""
    return bus


def _queue_has_its_ports(consumer: Consumer, queued: Queued) -> tuple[Pull, Acks]:
    return consumer, queued


def _system_clock_is_a_clock() -> Clock:
    return SystemClock()
