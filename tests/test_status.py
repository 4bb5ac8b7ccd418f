"""`conclave status`: live nodes, the leader, and bad entries reported by field."""

from __future__ import annotations

import time

from schemas import names
from schemas.codec import encode
from schemas.control import Lease, NodeStatus, Resources, ServiceState
from schemas.jobs import DeadLetter, EvalJob, EvalResult, PlayerSpec, SelfplayJob
from services.scheduler import STATE_KEY, LoopRecord
from shared.bus.ports import Bus
from shared.cli.status import games_info, gather, render_text
from shared.loop.effects import issue
from shared.loop.policy import GameState, LoopState
from shared.work.jobs import submit


def status(node: str, sent_at: float, roles: list[str]) -> NodeStatus:
    services = [
        ServiceState(name="heartbeat", alive=True, pid=1, lag_p50_ms=0.2, lag_max_ms=4.5),
        ServiceState(name="leader", alive=False),
    ]
    return NodeStatus(
        node=node,
        roles=roles,
        services=services,
        version="0.1.0",
        resources=Resources(2, 2**31),
        hostname="h",
        started_at=0.0,
        sent_at=sent_at,
    )


async def test_report_counts_live_nodes_by_role_and_names_the_leader(bus: Bus) -> None:
    now = time.time()
    await bus.write(names.NODES_BUCKET, "a", encode(status("a", now, ["coordinator"])), ttl_s=5)
    await bus.write(
        names.NODES_BUCKET, "b", encode(status("b", now - 30, ["coordinator"])), ttl_s=5
    )
    lease = Lease(node="a", instance="inst", term=0, acquired_at=now - 12, ttl_s=3)
    rev = await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, encode(lease), ttl_s=5)
    report = await gather(bus)
    assert report.leader is not None and (report.leader.node, report.leader.term) == ("a", rev)
    assert 11 <= report.leader.held_s <= 14
    assert [(n.id, n.alive) for n in report.nodes] == [("a", True), ("b", False)]
    assert report.nodes_alive == 1 and report.alive_by_role == {"coordinator": 1}
    assert report.nodes[0].loop_lag_ms == 4.5
    text = render_text(report)
    assert "leader: a" in text and "leader(down)" in text


async def test_garbage_status_entries_are_reported_with_the_field_not_fatal(bus: Bus) -> None:
    await bus.write(names.NODES_BUCKET, "junk", b'{"type":"conclave.node_status.v1","node":7}')
    report = await gather(bus)
    assert report.nodes == [] and report.leader is None
    assert len(report.problems) == 1 and "$.node" in report.problems[0]


async def test_games_section_reports_best_elo_queues_and_dead_letters(bus: Bus) -> None:
    state = LoopState({"tictactoe": GameState(generation=2, best="ab" * 32, trainings=2)})
    counts = {"tictactoe": [(0.0, 0), (1800.0, 500)]}
    await bus.write(
        names.LOOP_BUCKET,
        STATE_KEY,
        encode(LoopRecord(term=3, state=state, updated_at=0.0, ticks=1, game_counts=counts)),
    )
    gen2, rnd = PlayerSpec("gen2", "ab" * 32, sims=8), PlayerSpec("random", agent="random")
    job = EvalJob(
        job_id="tictactoe-g2-0",
        game="tictactoe",
        kind="gauntlet",
        a=gen2,
        b=rnd,
        games=20,
        term=3,
        group="g2",
    )
    await issue(bus, job)  # only an issued job's result counts
    result = EvalResult(
        job_id=job.job_id,
        game="tictactoe",
        kind="gauntlet",
        a=gen2,
        b=rnd,
        wins_a=15,
        draws=3,
        wins_b=2,
        term=3,
        finished_at=0.0,
        group="g2",
    )
    await bus.publish_durable(names.results_subject("tictactoe", "g2"), encode(result))
    await submit(
        bus,
        "selfplay",
        SelfplayJob(
            job_id="tictactoe-sp-1",
            game="tictactoe",
            model_sha256="",
            generation=2,
            games=10,
            sims=8,
            term=3,
        ),
    )
    letter = DeadLetter(
        kind="eval",
        job_id="tictactoe-m2-0",
        stream_seq=9,
        deliveries=5,
        reason="boom",
        job=b"{}",
        at=0.0,
    )
    await bus.publish_durable(names.dlq_subject("eval", "tictactoe", "m2"), encode(letter))

    [info] = await games_info(bus, [])
    assert (info.game, info.generation, info.best_sha256) == ("tictactoe", 2, "ab" * 32)
    assert info.best_elo is not None and info.best_elo > 0 and info.best_elo_ci
    assert info.queues["selfplay"] == 1 and info.dead_letters == 1
    assert info.games_per_hour == 1000.0
