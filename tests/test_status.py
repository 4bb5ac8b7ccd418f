"""`conclave status`: live nodes, the leader, and bad entries reported by field."""

from __future__ import annotations

import time

from schemas import names
from schemas.codec import encode
from schemas.control import Lease, NodeStatus, Resources, ServiceState
from schemas.jobs import DeadLetter, EvalJob, EvalResult, PlayerSpec, SelfplayJob
from services.scheduler import STATE_KEY, LoopRecord
from shared.bus.client import Bus
from shared.cli.status import games_info, gather, render_text
from shared.loop.effects import issue
from shared.loop.policy import GameState, LoopState
from shared.work.jobs import submit


def status(node: str, sent_at: float, roles: list[str]) -> NodeStatus:
    services = [ServiceState("heartbeat", True, 1, 0.2, 4.5), ServiceState("leader", False)]
    return NodeStatus(node, roles, services, "0.1.0", Resources(2, 2**31), "h", 0.0, sent_at)


async def test_report_counts_live_nodes_by_role_and_names_the_leader(bus: Bus) -> None:
    now = time.time()
    await bus.write(names.NODES_BUCKET, "a", encode(status("a", now, ["coordinator"])), ttl_s=5)
    await bus.write(
        names.NODES_BUCKET, "b", encode(status("b", now - 30, ["coordinator"])), ttl_s=5
    )
    lease = Lease("a", "inst", 0, now - 12, 3)
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
    await bus.write(names.LOOP_BUCKET, STATE_KEY, encode(LoopRecord(3, state, 0.0, 1, counts)))
    gen2, rnd = PlayerSpec("gen2", "ab" * 32, sims=8), PlayerSpec("random", agent="random")
    job = EvalJob("tictactoe-g2-0", "tictactoe", "gauntlet", gen2, rnd, 20, 3, group="g2")
    await issue(bus, job)  # only an issued job's result counts
    result = EvalResult(job.job_id, "tictactoe", "gauntlet", gen2, rnd, 15, 3, 2, 3, 0.0, "g2")
    await bus.publish_durable(names.results_subject("tictactoe", "g2"), encode(result))
    await submit(bus, "selfplay", SelfplayJob("tictactoe-sp-1", "tictactoe", "", 2, 10, 8, 3))
    letter = DeadLetter("eval", "tictactoe-m2-0", 9, 5, "boom", b"{}", 0.0)
    await bus.publish_durable(names.dlq_subject("eval", "tictactoe", "m2"), encode(letter))

    [info] = await games_info(bus, [])
    assert (info.game, info.generation, info.best_sha256) == ("tictactoe", 2, "ab" * 32)
    assert info.best_elo is not None and info.best_elo > 0 and info.best_elo_ci
    assert info.queues["selfplay"] == 1 and info.dead_letters == 1
    assert info.games_per_hour == 1000.0
