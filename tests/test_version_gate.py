"""The version gate (lczero-server's model): below the hard minimum protocol a worker gets no
work; below the announced next minimum it works and is only warned about (its log, `conclave
status`); a fleet of mixed protocols inside the range keeps working during a rolling upgrade."""

from __future__ import annotations

import logging
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import names
from schemas.codec import decode, encode
from schemas.control import PROTOCOL, ClusterProtocol, NodeStatus, Resources, ServiceState
from schemas.jobs import EvalJob, PlayerSpec
from shared.bus.compat import (
    MIN_PROTOCOL,
    Gate,
    announce,
    announced,
    refusal,
    upgrade_warning,
)
from shared.bus.ports import Bus
from shared.cli.status import gather, render_text
from shared.loop.observe import accepted_nodes, live_workers
from shared.work.jobs import JobSettings, Puller, ensure_consumer, submit

OLD, CURRENT, NEXT = PROTOCOL - 1, PROTOCOL, PROTOCOL + 1  # a rolling upgrade to NEXT


def gate_range(low: int, high: int, next_min: int | None) -> ClusterProtocol:
    return ClusterProtocol(low, high, "n-coord", time.time(), next_min)


protocols = st.integers(min_value=0, max_value=8)


@given(protocols, protocols, protocols, st.none() | protocols)
def test_a_node_is_refused_warned_or_current_never_both(
    protocol: int, low: int, span: int, next_min: int | None
) -> None:
    accepted = gate_range(low, low + span, next_min)
    refused, warned = refusal(protocol, accepted), upgrade_warning(protocol, accepted)
    assert (refused is None) == (low <= protocol <= low + span)
    below_soft = next_min is not None and protocol < next_min
    assert (warned is not None) == (refused is None and below_soft)
    if warned is not None:
        assert f"protocol {protocol}" in warned and f"next minimum {next_min}" in warned


def test_without_an_announced_range_every_node_works_unwarned() -> None:
    assert refusal(0, None) is None and upgrade_warning(0, None) is None


def test_the_next_minimum_is_announced_only_within_the_range_it_raises() -> None:
    assert announced("c", 1.0, next_min=3, low=2, high=3).next_min_protocol == 3
    for ignored in (2, 4, None):  # not above the minimum, not spoken by the coordinator, none
        accepted = announced("c", 1.0, next_min=ignored, low=2, high=3)
        assert accepted.next_min_protocol is None
        assert (accepted.min_protocol, accepted.max_protocol) == (2, 3)
    assert announced("c", 1.0).min_protocol == MIN_PROTOCOL


def test_a_range_from_an_older_coordinator_still_decodes() -> None:
    """A coordinator of the previous build writes no next minimum: read as none."""
    old = b'{"type":"conclave.cluster_protocol.v1","min_protocol":2,"max_protocol":2,'
    old += b'"set_by":"c","at":1.0}'
    accepted = decode(old, ClusterProtocol)
    assert accepted.next_min_protocol is None and upgrade_warning(1, accepted) is None


async def put_range(bus: Bus, accepted: ClusterProtocol) -> None:
    await bus.write(names.REGISTRY_BUCKET, names.PROTOCOL_KEY, encode(accepted))


def eval_job(n: int) -> EvalJob:
    return EvalJob(
        job_id=f"gate-{n}", game="tictactoe", kind="gauntlet", a=PlayerSpec("a", agent="random"),
        b=PlayerSpec("b", agent="random"), games=2, term=1, seed=n, group="g1",
    )  # fmt: skip


async def test_below_the_hard_minimum_no_work_below_the_soft_one_work_and_a_warning(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    await ensure_consumer(bus, "eval", JobSettings())
    await submit(bus, "eval", eval_job(1))
    await put_range(bus, gate_range(CURRENT, NEXT, NEXT))
    below_hard = Puller(bus, "eval", EvalJob)
    below_hard.gate = Gate(bus, OLD)
    assert await below_hard.next(timeout_s=0.3) is None  # the job waits for a supported worker
    assert below_hard.gate.reason is not None and f"protocol {OLD}" in below_hard.gate.reason

    caplog.set_level(logging.WARNING, logger="conclave.compat")
    below_soft = Puller(bus, "eval", EvalJob)
    delivery = await below_soft.next(timeout_s=3)
    assert delivery is not None and delivery.job == eval_job(1)
    await delivery.done()
    assert below_soft.gate.reason is None and below_soft.gate.warning is not None
    logged = [r.getMessage() for r in caplog.records if r.name == "conclave.compat"]
    assert [m for m in logged if f"next minimum {NEXT}" in m and "upgrade" in m]

    up_to_date = Puller(bus, "eval", EvalJob)
    up_to_date.gate = Gate(bus, NEXT)
    await submit(bus, "eval", eval_job(2))
    delivery = await up_to_date.next(timeout_s=3)
    assert delivery is not None and up_to_date.gate.warning is None
    await delivery.done()


def status_of(node: str, protocol: int) -> NodeStatus:
    now = time.time()
    return NodeStatus(
        node=node,
        roles=["selfplay"],
        services=[ServiceState(name="selfplay", alive=True, pid=1)],
        version=f"0.{protocol}.0",
        resources=Resources(2, 2**30),
        hostname="h",
        started_at=now,
        sent_at=now,
        protocol=protocol,
    )


async def test_a_mixed_fleet_keeps_working_and_status_warns_only_the_laggards(bus: Bus) -> None:
    """Mid-upgrade: nodes on the current and the next protocol both work (the scheduler counts
    both), the current ones are warned to upgrade, an older one gets no work."""
    for node, protocol in (("old", OLD), ("current", CURRENT), ("next", NEXT)):
        await bus.write(names.NODES_BUCKET, node, encode(status_of(node, protocol)), ttl_s=30)
    await put_range(bus, gate_range(CURRENT, NEXT, NEXT))
    assert live_workers(await accepted_nodes(bus)) == {"selfplay": 2}
    report = await gather(bus)
    by_id = {n.id: n for n in report.nodes}
    assert by_id["old"].unsupported and not by_id["old"].upgrade
    assert by_id["current"].upgrade and not by_id["current"].unsupported
    assert not by_id["next"].upgrade and not by_id["next"].unsupported
    text = render_text(report).splitlines()
    lines = {n: next(x for x in text if x.strip().startswith(f"{n} ")) for n in by_id}
    assert "NO WORK: protocol" in lines["old"] and "UPGRADE:" not in lines["old"]
    assert f"UPGRADE: protocol {CURRENT} is below the next minimum {NEXT}" in lines["current"]
    assert "NO WORK" not in lines["next"] and "UPGRADE" not in lines["next"]


async def test_a_coordinator_announces_its_range_and_never_warns_its_own_build(bus: Bus) -> None:
    await announce(bus, "n-coord")
    entry = await bus.last(names.REGISTRY_BUCKET, names.PROTOCOL_KEY)
    assert entry.value is not None
    accepted = decode(entry.value, ClusterProtocol)
    assert (accepted.min_protocol, accepted.max_protocol) == (MIN_PROTOCOL, PROTOCOL)
    assert upgrade_warning(PROTOCOL, accepted) is None
