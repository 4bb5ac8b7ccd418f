"""Placement by capability tier: the pure choice of tiers, and a faked 6-node fleet (2 GPU-tier
nodes, 4 CPU-tier) pulling from a real server's tier queues."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from schemas import names
from schemas.codec import encode
from schemas.control import DeviceReport, MatchEvaluators, NodeStatus, Resources, ServiceState
from schemas.jobs import SelfplayJob
from services import evaluator
from shared.bus.memory import MemoryServer
from shared.bus.ports import Bus
from shared.loop.placement import (
    Stranding,
    eval_lanes,
    fastest_tier,
    match_evaluators,
    place,
    tier_capacity,
)
from shared.loop.policy import GameState, LoopConfig, LoopState, Snapshot, next_actions
from shared.work.jobs import JobSettings, Puller, ensure_consumer, last_failure, rehome, submit

GPU_NODES = ("g0", "g1")
CPU_NODES = ("c0", "c1", "c2", "c3")
LACKING = "c3"  # a CPU node without tic-tac-toe


def report(tier: str, rate: float | None = None, self_test: str = "passed") -> DeviceReport:
    rates = {} if rate is None else {"4x64": rate}
    device = "cuda:0" if tier == "gpu" else "cpu"
    return DeviceReport(device=device, tier=tier, self_test=self_test, positions_per_s=rates)


def node(name: str, *reports: DeviceReport | None, kind: str = "selfplay") -> NodeStatus:
    services = [
        ServiceState(name=f"{kind}-{i}", alive=True, compute=r) for i, r in enumerate(reports)
    ]
    return NodeStatus(
        node=name,
        roles=["selfplay"],
        services=services,
        version="test",
        resources=Resources(cores=8, memory_bytes=2**34),
        hostname=name,
        started_at=0.0,
        sent_at=0.0,
    )


def fleet() -> list[NodeStatus]:
    gpus = [node(n, report("gpu", 8000.0)) for n in GPU_NODES]
    return gpus + [node(n, report("cpu", 1000.0)) for n in CPU_NODES]


def test_capacity_is_each_tiers_measured_throughput() -> None:
    assert tier_capacity(fleet(), "selfplay") == {"gpu": 16000.0, "cpu": 4000.0}
    assert tier_capacity(fleet(), "trainer") == {}


def test_an_unmeasured_worker_counts_as_its_tiers_mean_and_a_failed_one_not_at_all() -> None:
    nodes = [
        node("g0", report("gpu", 8000.0), report("gpu")),
        node("c0", report("cpu", self_test="self-test failed on cpu: off by 0.5")),
        node("c1", None),  # still testing, or an older build: the default tier
    ]
    assert tier_capacity(nodes, "selfplay") == {"gpu": 16000.0, "cpu": 8000.0}


def test_jobs_go_where_the_queue_drains_soonest() -> None:
    capacity = {"gpu": 16000.0, "cpu": 4000.0}
    assert Counter(place(10, {}, capacity)) == {"gpu": 8, "cpu": 2}
    assert place(3, {"gpu": 8}, capacity) == ("cpu", "cpu", "gpu")
    assert place(3, {}, {}) == ()  # nothing known: the default tier, which everyone pulls
    assert place(3, {}, {"cpu": 5.0}) == ()


@given(
    jobs=st.integers(0, 50),
    queued=st.dictionaries(st.sampled_from(names.TIERS), st.integers(0, 100)),
    capacity=st.dictionaries(st.sampled_from(names.TIERS), st.floats(0.0, 1e6)),
)
def test_placement_only_uses_tiers_with_workers(
    jobs: int, queued: dict[str, int], capacity: dict[str, float]
) -> None:
    placed = place(jobs, queued, capacity)
    assert len(placed) in (0, jobs)
    assert all(capacity.get(tier, 0.0) > 0 for tier in placed)
    if placed:  # each tier's share of the new jobs never overshoots its fair fill by two jobs
        total = sum(queued.get(t, 0) for t in capacity) + jobs
        speed = sum(c for c in capacity.values() if c > 0)
        for tier, n in Counter(placed).items():
            fair = total * capacity[tier] / speed
            assert queued.get(tier, 0) + n <= fair + 1 + 1e-6 or n == 1


def test_training_goes_to_the_fastest_tier_with_a_trainer() -> None:
    assert fastest_tier({"gpu": 1.0, "cpu": 1.0}) == "gpu"
    assert fastest_tier({"cpu": 1.0}) == "cpu"
    assert fastest_tier({}) == names.DEFAULT_TIER


def test_the_policy_places_self_play_by_tier_capacity() -> None:
    cfg = LoopConfig(games=("tictactoe",), selfplay_games_per_job=10)
    state = LoopState(games={"tictactoe": GameState(best="b" * 64, generation=0)})
    snapshot = Snapshot(6, 0, {}, selfplay_tiers={"gpu": 16000.0, "cpu": 4000.0})
    [enqueue] = next_actions(state, snapshot, cfg)
    assert enqueue.tiers and Counter(enqueue.tiers)["gpu"] > Counter(enqueue.tiers)["cpu"] > 0


def test_a_tier_without_workers_is_stranded_only_after_the_grace() -> None:
    stranding = Stranding(after_s=60.0)
    assert stranding.stranded("selfplay", {"gpu": 1.0}, now=0.0) == []
    assert stranding.stranded("selfplay", {}, now=30.0) == []  # a missed heartbeat, a restart
    assert stranding.stranded("selfplay", {}, now=61.0) == ["gpu"]
    assert stranding.stranded("selfplay", {"gpu": 1.0}, now=62.0) == []
    assert stranding.stranded("train", {}, now=62.0) == []  # its own clock


def job(n: int, game: str = "tictactoe") -> SelfplayJob:
    return SelfplayJob(
        job_id=f"sp-{n}", game=game, model_sha256="", generation=0, games=4, sims=8, term=1
    )


async def test_a_fake_six_node_fleet_pulls_by_tier(bus: Bus) -> None:
    """GPU-tier jobs go only to GPU-tier nodes; CPU-tier jobs reach a GPU node only once the
    GPU queue is empty; the node without the game refuses its jobs, and another plays them."""
    await ensure_consumer(bus, "selfplay", JobSettings(ack_wait_s=30.0, max_deliver=5))
    tiers = place(12, {}, tier_capacity(fleet(), "selfplay"))
    assert Counter(tiers) == {"gpu": 10, "cpu": 2}
    tiers = ("gpu",) * 4 + ("cpu",) * 16  # more CPU work than the CPU nodes keep up with
    for n, tier in enumerate(tiers):
        await submit(bus, "selfplay", job(n), tier=tier)

    def puller(name: str, tier: str) -> Puller[SelfplayJob]:
        games = ["connect4"] if name == LACKING else None
        return Puller(bus, "selfplay", SelfplayJob, probe_s=0.2, tier=tier, games=games, node=name)

    pullers = {n: puller(n, "gpu") for n in GPU_NODES} | {n: puller(n, "cpu") for n in CPU_NODES}
    taken: list[tuple[str, str, str]] = []  # (node, job's tier, job id), in the order taken
    gpu_left = tiers.count("gpu")
    for _ in range(12):  # rounds: each node takes (and finishes) at most one job per round
        if len(taken) == len(tiers):
            break
        for name, pull in pullers.items():
            delivery = await pull.next(timeout_s=0.5)
            if delivery is None:
                continue
            tier = delivery.msg.message.subject.split(".")[2]
            if tier == "cpu" and name in GPU_NODES:
                assert gpu_left == 0, "a GPU node took CPU work while GPU work waited"
            gpu_left -= tier == "gpu"
            taken.append((name, tier, delivery.job.job_id))
            await delivery.done()
    assert all(tier == "cpu" for name, tier, _ in taken if name in CPU_NODES)
    assert {tier for name, tier, _ in taken if name in GPU_NODES} == {"gpu", "cpu"}
    assert sorted(job_id for *_, job_id in taken) == sorted(f"sp-{n}" for n in range(20))
    assert not [t for t in taken if t[0] == LACKING]
    refused = [await last_failure(bus, f"sp-{n}") for n in range(4, 20)]
    assert any(f"on {LACKING}" in r and "no game 'tictactoe' here" in r for r in refused)
    assert await bus.subject_counts(names.DLQ_STREAM, names.all_dead_letters()) == {}


async def test_jobs_of_a_tier_whose_workers_left_move_to_the_default_tier(bus: Bus) -> None:
    await ensure_consumer(bus, "selfplay", JobSettings())
    await submit(bus, "selfplay", job(1), tier="gpu")
    assert await rehome(bus, "selfplay", ["gpu"]) == 1
    counts = await bus.subject_counts(names.JOBS_STREAM, names.job_filter("selfplay", None))
    assert counts == {names.job_subject("selfplay", "tictactoe", "sp", "cpu"): 1}
    delivery = await Puller(bus, "selfplay", SelfplayJob, tier="cpu").next(3)
    assert delivery is not None and delivery.job == job(1)
    await delivery.done()


def test_promotion_matches_go_to_evaluators_fast_enough_to_finish_them() -> None:
    evaluators = [
        node("g0", report("gpu", 20000.0), kind="evaluator"),
        node("c0", report("cpu", 6000.0), kind="evaluator"),
        node("c1", report("cpu", 1000.0), kind="evaluator"),  # a laptop: under a quarter
        node("c2", report("cpu"), kind="evaluator"),  # not measured yet: it may
    ]
    assert match_evaluators(evaluators) == ["c0/evaluator-0", "c2/evaluator-0", "g0/evaluator-0"]
    assert match_evaluators(evaluators[3:]) is None  # nobody measured: everyone may
    named = MatchEvaluators(evaluators=["g0/evaluator-0"], term=1, at=0.0)
    assert eval_lanes("g0/evaluator-0", named) == names.EVAL_LANES
    assert eval_lanes("c1/evaluator-0", named) == ("gauntlet", "rating")
    assert eval_lanes("c1/evaluator-0", None) == names.EVAL_LANES
    unrestricted = MatchEvaluators(evaluators=None, term=1, at=0.0)
    assert eval_lanes("c1/evaluator-0", unrestricted) == names.EVAL_LANES


async def test_an_evaluator_left_out_of_matches_pulls_only_gauntlets_and_ratings(
    tmp_path: Path,
) -> None:
    bus = MemoryServer().connect("test")
    await bus.provision()
    cfg = evaluator.EvaluatorConfig("slow", str(tmp_path))
    worker = evaluator.Worker(bus, cfg, asyncio.Event())
    try:
        assert await worker.lanes() == names.EVAL_LANES  # nothing named yet
        named = MatchEvaluators(evaluators=["fast/evaluator"], term=1, at=0.0)
        await bus.write(names.REGISTRY_BUCKET, names.MATCH_EVALUATORS_KEY, encode(named))
        assert await worker.lanes() == ("gauntlet", "rating")
        named = MatchEvaluators(evaluators=["fast/evaluator", "slow/evaluator"], term=1, at=0.0)
        await bus.write(names.REGISTRY_BUCKET, names.MATCH_EVALUATORS_KEY, encode(named))
        assert await worker.lanes() == names.EVAL_LANES
    finally:
        worker.pool.shutdown()
