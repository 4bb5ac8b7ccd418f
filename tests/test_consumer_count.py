"""One-off readers leave a bounded number of consumers on the hub (issue 18, part 3).

A reader that runs every scheduler tick (`accepted_nodes`, `Bus.read_all`, `Bus.snapshot`) reads
through a consumer of its own, as does a short key watch (an evaluator's, per match job), and
readers may not delete consumers, so the server drops each `READ_INACTIVE_S` after its last fetch
(a watch's `WATCH_INACTIVE_S` after it stopped). Driven a few times a second for twice the longer
of the two, the hub's count (its monitoring endpoint, read as bench/consumers.py reads it) stays
under the consumers made per second times their threshold plus slack, and falls back to where
it started once reading stops; every read sees the write acknowledged just before it; after a
server restart the readers work again with nothing to recover, and leave nothing either.
"""

from __future__ import annotations

import asyncio
import time

from bench.consumers import read_counts
from schemas import names
from schemas.codec import decode, encode
from schemas.control import NodeStatus, Resources, ServiceState
from shared.bus.client import READ_INACTIVE_S, WATCH_INACTIVE_S
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.loop.observe import accepted_nodes
from tests.conftest import eventually

TICKS_PER_S = 4  # each tick: accepted_nodes, read_all, snapshot and a watch, a consumer each
READS_PER_TICK, WATCHES_PER_TICK = 3, 1
SLACK_S = 2.0  # the server's timer and the sampling, beyond each threshold
BOUND = int(
    TICKS_PER_S
    * (
        READS_PER_TICK * (READ_INACTIVE_S + SLACK_S)
        + WATCHES_PER_TICK * (WATCH_INACTIVE_S + SLACK_S)
    )
)
TICKS = int(2 * WATCH_INACTIVE_S * TICKS_PER_S)  # paced: twice the longer threshold
MADE = TICKS * (READS_PER_TICK + WATCHES_PER_TICK)
EVENTS = names.model_event_subject("candidate")


def status(node: str, tick: int) -> NodeStatus:
    now = time.time()
    return NodeStatus(
        node=node,
        roles=["selfplay"],
        services=[ServiceState(name="selfplay", alive=True, pid=1)],
        version="0.1.0",
        resources=Resources(2, 2**30),
        hostname=f"h{tick}",  # which write a read saw
        started_at=now,
        sent_at=now,
    )


async def consumers(server: NatsServer) -> int:
    """Every consumer on the server, over all streams."""
    return sum((await asyncio.to_thread(read_counts, server.monitor_url)).values())


async def tick(bus: Bus, n: int) -> None:
    """What a scheduler tick (and a status or dashboard refresh) reads, right after node n1's
    heartbeat: each read must see that write."""
    await bus.write(names.NODES_BUCKET, "n1", encode(status("n1", n)), ttl_s=30)
    nodes = await accepted_nodes(bus)  # n2's status goes stale: counted only at first
    assert [s.hostname for s in nodes if s.node == "n1"] == [f"h{n}"]
    snap = await bus.snapshot(names.NODES_BUCKET)
    value = snap["n1"].value
    assert value is not None and decode(value, NodeStatus).hostname == f"h{n}"
    assert len(await bus.read_all(names.EVENTS_STREAM, EVENTS)) == 1
    async with asyncio.timeout(10), bus.watch(names.NODES_BUCKET, "n1") as watch:
        first = await anext(aiter(watch))  # the key's value now, then its changes
    assert first is not None and first.value is not None
    assert decode(first.value, NodeStatus).hostname == f"h{n}"


async def test_per_tick_readers_keep_the_consumer_count_bounded(
    nats_server: NatsServer, bus: Bus
) -> None:
    await bus.write(names.NODES_BUCKET, "n2", encode(status("n2", 0)), ttl_s=60)
    await bus.publish_durable(EVENTS, b"{}")  # so that read_all reads (none: no consumer)
    before = await consumers(nats_server)
    counts: list[int] = []
    started = time.monotonic()
    for n in range(1, TICKS + 1):
        await tick(bus, n)
        if n % TICKS_PER_S == 0:
            counts.append(await consumers(nats_server) - before)
        await asyncio.sleep(max(0.0, started + n / TICKS_PER_S - time.monotonic()))
    # Kept 30 s and 5 min (before issue 18), all MADE would still be there: over twice BOUND.
    assert MADE > 2 * BOUND
    assert max(counts) <= BOUND, f"consumers each second {counts}: over {BOUND}"
    assert counts[-1] > 0  # it counts what the reads make (a count that sees none proves nothing)
    await eventually(
        lambda: _back_to(nats_server, before),
        timeout=WATCH_INACTIVE_S + 10,
        what=f"the readers' consumers gone (they made {MADE})",
    )


async def _back_to(server: NatsServer, count: int) -> bool:
    return await consumers(server) == count


async def test_readers_work_after_a_server_restart_and_leave_nothing(
    nats_server: NatsServer, bus: Bus
) -> None:
    await bus.write(names.NODES_BUCKET, "n2", encode(status("n2", 0)), ttl_s=60)
    await bus.publish_durable(EVENTS, b"{}")
    await tick(bus, 1)
    await asyncio.to_thread(nats_server.stop)
    await asyncio.to_thread(nats_server.start)  # same ports, same store

    async def reads_again() -> bool:
        try:
            await tick(bus, 2)
        except BusError:  # still reconnecting
            return False
        return True

    await eventually(reads_again, timeout=30, what="reads after the restart")
    await eventually(
        lambda: _back_to(nats_server, 0),
        timeout=WATCH_INACTIVE_S + 10,
        what="no consumer left after the restart",
    )
