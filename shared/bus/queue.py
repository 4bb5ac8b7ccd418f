"""JetStream work-queue mechanics with nats-py: durable pull consumers, fetching, acknowledging.

`NatsBus` offers these as its `Consumers` port; nothing else calls them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from shared.bus.consumers import ConsumerCounts, WorkConsumer
from shared.bus.errors import BusError
from shared.bus.message import Message, from_nats
from shared.bus.translate import translated


@contextmanager
def _acking(what: str) -> Iterator[None]:
    """Every nats-py error of an acknowledgement as a BusError (Unavailable when it timed out
    or the connection is closed)."""
    try:
        with translated(what):
            yield
    except nats.errors.Error as e:  # those `translated` leaves as they are
        raise BusError(f"{what}: {e!r}") from e


class Queued:
    """A message delivered by a durable consumer, waiting for its acknowledgement."""

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.message: Message = from_nats(msg)

    async def ack(self) -> None:
        """Acknowledge without waiting for the server."""
        with _acking("ack"):
            await self._msg.ack()

    async def ack_sync(self) -> None:
        """Acknowledge and wait for the server: the message is done once this returns."""
        with _acking("ack"):
            await self._msg.ack_sync()

    async def nak(self, delay_s: float | None = None) -> None:
        """Ask for redelivery, after `delay_s` when given."""
        with _acking("nak"):
            await self._msg.nak(delay=delay_s)

    async def in_progress(self) -> None:
        """Reset the ack wait: still working on it."""
        with _acking("in-progress ack"):
            await self._msg.in_progress()

    async def term(self) -> None:
        """Never deliver it again."""
        with _acking("terminate"):
            await self._msg.term()


class Consumer:
    """A pull subscription on a durable (or ephemeral) consumer."""

    def __init__(self, sub: JetStreamContext.PullSubscription, what: str) -> None:
        self._sub, self._what = sub, what

    async def fetch(self, batch: int, timeout_s: float) -> list[Queued]:
        """Up to `batch` messages; [] when none came within `timeout_s`."""
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout_s)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error as e:
            raise BusError(f"fetch {self._what}: {e!r}") from e
        return [Queued(m) for m in msgs]

    async def unsubscribe(self) -> None:
        with suppress(nats.errors.Error):
            await self._sub.unsubscribe()


def consumer_config(consumer: WorkConsumer) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=consumer.durable,
        filter_subject=consumer.subjects,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=consumer.ack_wait_s,
        max_deliver=consumer.max_deliver,
        max_ack_pending=consumer.max_ack_pending,
    )


async def add_consumer(js: JetStreamContext, stream: str, consumer: WorkConsumer) -> None:
    """Create (or update) a durable consumer on `stream`."""
    with translated(f"add consumer {consumer.durable}"):
        await js.add_consumer(stream, consumer_config(consumer))


async def consumer_exists(js: JetStreamContext, stream: str, durable: str) -> bool:
    with translated(f"consumer info {durable}"):
        try:
            await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            return False
    return True


async def consumer_counts(js: JetStreamContext, stream: str, durable: str) -> ConsumerCounts:
    with translated(f"consumer info {durable}"):
        info = await js.consumer_info(stream, durable)
    delivered = int(info.delivered.consumer_seq or 0) if info.delivered else 0
    return ConsumerCounts(delivered, int(info.num_pending or 0), int(info.num_ack_pending or 0))


async def delete_consumer(js: JetStreamContext, stream: str, durable: str) -> None:
    """Remove a durable consumer (nothing if there is none)."""
    with translated(f"delete consumer {durable}"), suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(stream, durable)


async def bind(js: JetStreamContext, stream: str, durable: str) -> Consumer:
    """Pull from an existing durable consumer; never creates or reconfigures it."""
    with translated(f"bind {durable} consumer"):
        sub = await js.pull_subscribe_bind(durable, stream=stream)
    return Consumer(sub, durable)


async def pull(
    js: JetStreamContext, stream: str, subjects: str, consumer: WorkConsumer | str
) -> Consumer:
    """Pull from durable `consumer` on `subjects`: made with its settings (a WorkConsumer), or
    bound by name (made with the defaults when missing)."""
    durable = consumer if isinstance(consumer, str) else consumer.durable
    config = None if isinstance(consumer, str) else consumer_config(consumer)
    with translated(f"consumer {durable}"):
        sub = await js.pull_subscribe(subjects, durable=durable, stream=stream, config=config)
    return Consumer(sub, durable)
