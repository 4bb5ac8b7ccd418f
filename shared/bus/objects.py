"""Reading an object store's chunks as a stream of payloads, without nats-py's object reader."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared.bus.errors import Unavailable
from shared.bus.translate import translated

FETCH_BATCH = 64
CHUNK_WAIT_S = 10.0


async def chunks(
    js: JetStreamContext, stream: str, subject: str, count: int, batch: int = FETCH_BATCH
) -> AsyncGenerator[list[bytes], None]:
    """The first `count` payloads stored on `subject`, in order, in batches of up to `batch`;
    Unavailable when they stop arriving."""
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        # Readers may not delete consumers: a short expiry is what bounds how many the hub
        # holds (tests/test_consumer_count.py); a reader between two batches is still active.
        inactive_threshold=10.0,
        mem_storage=True,
        num_replicas=1,
    )
    with translated("read model chunks"):
        sub = await js.pull_subscribe(subject, stream=stream, config=config)
    try:
        received = 0
        while received < count:
            try:
                msgs = await sub.fetch(min(batch, count - received), timeout=CHUNK_WAIT_S)
            except (TimeoutError, nats.errors.TimeoutError) as e:
                raise Unavailable("model chunks stopped arriving") from e
            received += len(msgs)
            yield [m.data for m in msgs]
    finally:
        await sub.unsubscribe()
