"""Version skew: a node outside the accepted wire protocols is shown with the reason, is no worker
and pulls no jobs; back inside the range, it works again."""

from __future__ import annotations

import time

import msgspec

from schemas import names
from schemas.codec import encode
from schemas.control import PROTOCOL, ClusterProtocol, NodeStatus, Resources, ServiceState
from schemas.jobs import EvalJob, PlayerSpec
from shared.bus.compat import announce, refusal
from shared.bus.ports import Bus
from shared.cli.status import gather, render_text
from shared.loop.observe import accepted_nodes, live_workers
from shared.work.jobs import JobSettings, Puller, ensure_consumer, submit


def accepting(low: int, high: int) -> ClusterProtocol:
    return ClusterProtocol(low, high, "n-coord", time.time())


def test_refusal_names_the_protocol_and_the_range() -> None:
    assert refusal(1, None) is None and refusal(2, accepting(1, 3)) is None
    reason = refusal(1, accepting(2, 3))
    assert reason is not None and "protocol 1" in reason and "2..3" in reason
    assert refusal(4, accepting(2, 3)) is not None


async def put_range(bus: Bus, low: int, high: int) -> None:
    await bus.write(names.REGISTRY_BUCKET, names.PROTOCOL_KEY, encode(accepting(low, high)))


async def test_an_unsupported_build_pulls_no_work_until_accepted_again(bus: Bus) -> None:
    await ensure_consumer(bus, "eval", JobSettings())
    job = EvalJob(
        job_id="skew-1", game="tictactoe", kind="gauntlet", a=PlayerSpec("a", agent="random"),
        b=PlayerSpec("b", agent="random"), games=2, term=1, seed=1, group="g1",
    )  # fmt: skip
    await submit(bus, "eval", job)
    await put_range(bus, PROTOCOL + 1, PROTOCOL + 2)
    puller = Puller(bus, "eval", EvalJob)
    assert await puller.next(timeout_s=0.3) is None  # the job waits for a supported worker
    assert puller.gate.reason is not None and f"protocol {PROTOCOL}" in puller.gate.reason

    await announce(bus, "n-coord")  # a coordinator of this build accepts it again
    puller.gate.checked_at = float("-inf")
    delivery = await puller.next(timeout_s=2)
    assert delivery is not None and delivery.job == job
    await delivery.done()


def status_of(node: str, protocol: int) -> NodeStatus:
    now = time.time()
    return NodeStatus(
        node=node,
        roles=["selfplay"],
        services=[ServiceState(name="selfplay", alive=True, pid=1)],
        version="0.1.0",
        resources=Resources(2, 2**30),
        hostname="h",
        started_at=now,
        sent_at=now,
        protocol=protocol,
    )


async def test_status_shows_the_skewed_node_and_the_scheduler_counts_only_the_others(
    bus: Bus,
) -> None:
    await bus.write(names.NODES_BUCKET, "old", encode(status_of("old", PROTOCOL)), ttl_s=30)
    new = status_of("new", PROTOCOL + 1)
    await bus.write(names.NODES_BUCKET, "new", encode(new), ttl_s=30)
    await put_range(bus, PROTOCOL + 1, PROTOCOL + 1)
    assert live_workers(await accepted_nodes(bus)) == {"selfplay": 1}
    report = await gather(bus)
    old = next(n for n in report.nodes if n.id == "old")
    assert old.unsupported.startswith(f"protocol {PROTOCOL} unsupported")
    assert next(n for n in report.nodes if n.id == "new").unsupported == ""
    assert "NO WORK: protocol" in render_text(report)


async def test_the_scheduler_counts_no_worker_of_a_draining_node(bus: Bus) -> None:
    working, draining = status_of("w", PROTOCOL), status_of("d", PROTOCOL)
    draining = msgspec.structs.replace(draining, draining=True)
    for status in (working, draining):
        await bus.write(names.NODES_BUCKET, status.node, encode(status), ttl_s=30)
    nodes = await accepted_nodes(bus)
    assert [n.node for n in nodes] == ["w"] and live_workers(nodes) == {"selfplay": 1}
