"""Results count only when owed; an unloadable candidate is rejected at once; only fresh
heartbeats count. Pure rules without NATS, the readers against a real nats-server."""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import names
from schemas.codec import decode, encode
from schemas.control import NodeStatus, Resources, ServiceState
from schemas.jobs import DeadLetter, EvalJob, EvalResult, PlayerSpec, job_group
from services.evaluator import EvaluatorConfig, Worker
from services.heartbeat import HeartbeatConfig
from shared.bus.ports import Bus
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.net import NetConfig, PolicyValueNet, checkpoint_bytes
from shared.loop.effects import Effects, EffectSettings, issue
from shared.loop.observe import (
    HEARTBEAT_TTL_S,
    accepted_nodes,
    live_workers,
    match_score,
    observe,
)
from shared.loop.policy import (
    EnqueueSelfplay,
    GameSnapshot,
    GameState,
    LoopConfig,
    LoopState,
    MatchScore,
    Reject,
    Snapshot,
    StartMatch,
    apply,
    match_games_limit,
    next_actions,
)
from shared.loop.ratingjobs import SkipLog, Stored, game_results, judge, mismatch
from shared.loop.sprt import SprtConfig
from shared.work.jobs import JobSettings, Puller, ensure_consumer
from shared.work.modelcache import load_evaluator
from shared.work.models import UnloadableModel, sha256_hex

GAME = "tictactoe"
CAND, BEST = "cd" * 32, "ab" * 32
A = PlayerSpec("gen3", CAND, sims=8)
B = PlayerSpec("gen2", BEST, sims=8)
RANDOM = PlayerSpec("random", agent="random")
LOOP = LoopConfig(games=(GAME,), eval_games_per_job=4, sprt=SprtConfig(max_games=40))
MATCHING = LoopState(
    {GAME: GameState(generation=2, best=BEST, trainings=3, pending_eval=CAND, match_games=8)}
)


def match_job(k: int, games: int = 4) -> EvalJob:
    return EvalJob(
        job_id=f"{GAME}-m3-{k}",
        game=GAME,
        kind="match",
        a=A,
        b=B,
        games=games,
        term=1,
        seed=k + 1,
        group="m3",
    )


def result_of(job: EvalJob, w: int, d: int, lo: int, /, **change: Any) -> EvalResult:
    """The result `job` owes with W-D-L from side a's view, with fields `change`d."""
    result = EvalResult(
        job_id=job.job_id,
        game=job.game,
        kind=job.kind,
        a=job.a,
        b=job.b,
        wins_a=w,
        draws=d,
        wins_b=lo,
        term=1,
        finished_at=0.0,
        group=job.group,
    )
    return msgspec.structs.replace(result, **change)


def stored(seq: int, result: EvalResult, subject: str | None = None) -> Stored:
    return Stored(seq, subject or names.results_subject(result.game, result.group), encode(result))


# Pure: which results are owed.


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"job_id": "forged-1"}, "job_id"),
        ({"kind": "rating"}, "kind"),
        ({"group": "m4"}, "group"),
        ({"a": PlayerSpec("gen3", CAND, sims=800)}, "a"),
        ({"b": RANDOM}, "b"),
        ({"wins_a": 1000}, "wins_a + draws + wins_b"),
        ({"wins_a": 0}, "wins_a + draws + wins_b"),
    ],
)
def test_a_result_unlike_its_issued_job_is_skipped_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    job = match_job(0)
    result = result_of(job, 2, 1, 1, **change)
    issued = job if result.job_id == job.job_id else None
    reason = mismatch(result, names.results_subject(GAME, result.group), issued)
    assert reason is not None and reason.startswith(f"{field}:")
    assert mismatch(result_of(job, 2, 1, 1), names.results_subject(GAME, "m3"), job) is None


def test_a_result_filed_under_another_subject_is_skipped() -> None:
    job = match_job(0)
    reason = mismatch(result_of(job, 2, 1, 1), names.results_subject(GAME, "r"), job)
    assert reason is not None and reason.startswith("subject:")


def test_only_the_first_matching_result_of_a_job_counts() -> None:
    job = match_job(0)
    forged_first = result_of(job, 4, 0, 0, wins_a=400)
    real, again = result_of(job, 1, 2, 1), result_of(job, 4, 0, 0)
    owed = judge([stored(3, again), stored(1, forged_first), stored(2, real)], {job.job_id: job})
    assert owed.counted == [real]
    assert [(s.seq, s.reason.split(":")[0]) for s in owed.skipped] == [
        (1, "wins_a + draws + wins_b"),
        (3, "job_id"),
    ]


def test_undecodable_bytes_are_skipped_naming_the_path() -> None:
    owed = judge([Stored(7, "results.tictactoe.m3", b'{"type":"conclave.eval_result.v1"}')], {})
    assert owed.counted == [] and owed.skipped[0].reason.startswith("$")


_counts = st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), _counts, st.booleans()), max_size=30))
def test_counted_results_are_owed_and_each_job_counts_once(
    rows: list[tuple[int, tuple[int, int, int], bool]],
) -> None:
    issued = {job.job_id: job for job in (match_job(k, games=6) for k in range(4))}
    items = []
    for seq, (k, counts, forged_players) in enumerate(rows):
        job = issued.get(f"{GAME}-m3-{k}", match_job(k))
        result = result_of(job, *counts, **({"b": RANDOM} if forged_players else {}))
        items.append(stored(seq, result))
    owed = judge(items, issued)
    assert len(owed.counted) + len(owed.skipped) == len(items)
    assert len({r.job_id for r in owed.counted}) == len(owed.counted)
    for r in owed.counted:
        job = issued[r.job_id]
        assert (r.a, r.b, r.wins_a + r.draws + r.wins_b) == (job.a, job.b, job.games)
    assert sum(r.wins_a + r.draws + r.wins_b for r in owed.counted) <= 6 * len(issued)


# Pure: an unloadable candidate, and the match's game cap.


def test_an_unloadable_candidate_is_rejected_at_once_with_the_reason() -> None:
    score = MatchScore(
        candidate=CAND,
        wins=1,
        draws=0,
        losses=0,
        lost=4,
        unloadable="no evaluator can load it: pickle",
    )
    snap = Snapshot(0, 3, {GAME: GameSnapshot(match=score)})
    actions = next_actions(MATCHING, snap, LOOP)
    assert actions == [
        Reject(game=GAME, candidate=CAND, generation=3, reason="no evaluator can load it: pickle")
    ]
    after = apply(MATCHING, actions[0])
    assert after.game(GAME).pending_eval is None
    again = next_actions(after, Snapshot(0, 3, {GAME: GameSnapshot(match=score)}), LOOP)
    assert not [a for a in again if isinstance(a, StartMatch)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=40), st.integers(1, 12))
def test_match_games_scheduled_never_exceed_the_cap_plus_one_job(
    ticks: list[tuple[int, bool]], cap_jobs: int
) -> None:
    """Each tick every job in flight either finishes (2-0-2: the SPRT stays undecided) or is
    dead-lettered. However many are lost, games are replaced only within one job's slack, and
    once every later job is lost the match is still decided."""
    cfg = msgspec.structs.replace(LOOP, sprt=SprtConfig(max_games=cap_jobs * 4))
    state = LoopState({GAME: GameState(generation=2, best=BEST, trainings=3, pending_eval=CAND)})
    played = lost = 0
    for evaluators, lose in [*ticks, *[(1, True)] * (cap_jobs + 3)]:
        in_flight = state.game(GAME).match_games - played - lost
        played, lost = (played, lost + in_flight) if lose else (played + in_flight, lost)
        score = MatchScore(candidate=CAND, wins=played // 2, draws=0, losses=played // 2, lost=lost)
        for action in next_actions(
            state, Snapshot(0, evaluators, {GAME: GameSnapshot(match=score)}), cfg
        ):
            state = apply(state, action)
        if state.game(GAME).pending_eval is None:
            return
        assert state.game(GAME).match_games <= match_games_limit(cfg)
    pytest.fail("a match whose every job is lost was never decided")


def test_a_match_whose_jobs_all_dead_letter_is_rejected_naming_why() -> None:
    state = LoopState(
        {GAME: GameState(generation=2, best=BEST, trainings=3, pending_eval=CAND, match_games=44)}
    )
    score = MatchScore(candidate=CAND, lost=44)
    (action,) = next_actions(state, Snapshot(0, 1, {GAME: GameSnapshot(match=score)}), LOOP)
    assert isinstance(action, Reject) and "44 of 44 games dead-lettered" in action.reason


# Pure: what one node's status may claim.


def node_status(node: str, services: int, cores: int = 2, kind: str = "selfplay") -> NodeStatus:
    names_ = [kind] + [f"{kind}-{i}" for i in range(2, services + 1)]
    return NodeStatus(
        node=node,
        roles=["selfplay"],
        services=[ServiceState(name=n, alive=True, pid=100 + i) for i, n in enumerate(names_)],
        version="0.1.0",
        resources=Resources(cores, 2**30),
        hostname="h",
        started_at=time.time(),
        sent_at=time.time(),
    )


@given(st.integers(1, 400), st.integers(0, 400))
def test_a_node_counts_at_most_its_cores_of_self_play(services: int, cores: int) -> None:
    counted = live_workers([node_status("n", services, cores)])["selfplay"]
    assert 1 <= counted <= max(1, min(cores, 128)) and counted <= services


def test_a_node_counts_one_evaluator() -> None:
    assert live_workers([node_status("n", 50, 64, kind="evaluator")]) == {"evaluator": 1}


def test_the_freshness_window_is_the_heartbeats_ttl() -> None:
    assert HeartbeatConfig("n", [], []).ttl_s == HEARTBEAT_TTL_S


# Against NATS: the readers and the leader's dead letters.


async def store_results(bus: Bus, *results: EvalResult) -> None:
    for result in results:
        subject = names.results_subject(result.game, result.group)
        await bus.publish_durable(subject, encode(result))


async def dead_letters(bus: Bus) -> list[DeadLetter]:
    subject = names.dlq_subject(names.SKIPPED_RESULTS, names.ANY, names.ANY)
    return [decode(m.data, DeadLetter) for m in await bus.read_all(names.DLQ_STREAM, subject)]


async def test_a_forged_result_is_not_counted_and_dead_lettered_once(bus: Bus) -> None:
    job = match_job(0)
    await issue(bus, job)
    forged = EvalResult(
        job_id="tictactoe-m3-99",
        game=GAME,
        kind="match",
        a=A,
        b=B,
        wins_a=1000,
        draws=0,
        wins_b=0,
        term=1,
        finished_at=0.0,
        group="m3",
    )
    await store_results(bus, forged, result_of(job, 3, 0, 1))
    skips = SkipLog()
    score = await match_score(bus, GAME, MATCHING.game(GAME), LOOP, skips)
    assert score == MatchScore(candidate=CAND, wins=3, draws=0, losses=1)
    assert await skips.dead_letter(bus) == 1
    await game_results(bus, GAME, skips=skips)  # read again next tick: reported already
    assert await skips.dead_letter(bus) == 0
    new_leader = SkipLog()
    await game_results(bus, GAME, skips=new_leader)
    assert await new_leader.dead_letter(bus) == 0  # the DLQ already has it
    [letter] = await dead_letters(bus)
    assert letter.job_id == "tictactoe-m3-99" and letter.reason.startswith("job_id:")
    assert decode(letter.job, EvalResult) == forged


async def test_counts_players_and_repeats_are_checked_against_the_issued_job(bus: Bus) -> None:
    jobs = [match_job(k) for k in range(4)]
    for job in jobs:
        await issue(bus, job)
    await store_results(
        bus,
        result_of(jobs[0], 2, 0, 0),  # 2 of 4 games
        result_of(jobs[1], 4, 0, 0, b=RANDOM),  # another opponent
        result_of(jobs[2], 1, 1, 2),
        result_of(jobs[2], 4, 0, 0),  # a second result for the same job
        result_of(jobs[3], 0, 4, 0),
    )
    skips = SkipLog()
    score = await match_score(bus, GAME, MATCHING.game(GAME), LOOP, skips)
    # Jobs 0 and 1 will never count: their games are lost, so the match can replace them.
    assert score == MatchScore(candidate=CAND, wins=1, draws=5, losses=2, lost=8)
    assert await skips.dead_letter(bus) == 3
    reasons = sorted(letter.reason.split(":")[0] for letter in await dead_letters(bus))
    assert reasons == ["b", "job_id", "wins_a + draws + wins_b"]


async def test_match_jobs_are_issued_before_they_are_queued(bus: Bus) -> None:
    await ensure_consumer(bus, "eval", JobSettings())
    effects = Effects(bus, LOOP, EffectSettings(eval_sims=8), term=1)
    state = LoopState(
        {GAME: GameState(generation=2, best=BEST, trainings=3, training_in_progress=True)}
    )
    await effects.carry_out(StartMatch(GAME, CAND, BEST, 8), state)
    delivery = await Puller(bus, "eval", EvalJob).next(timeout_s=2.0)
    assert delivery is not None
    job = delivery.job
    entry = await bus.last(names.LOOP_BUCKET, names.issued_key(GAME, job_group(job), job.job_id))
    assert entry.value is not None and decode(entry.value, EvalJob) == job


@pytest.mark.parametrize(
    ("what", "blob"),
    [
        ("pickle", pickle.dumps({"format": "not torch", "weights": list(range(10))}, protocol=2)),
        ("architecture", "wrong planes"),
    ],
    ids=["pickle", "architecture"],
)
async def test_an_unloadable_candidate_is_rejected_at_once_and_gets_no_more_jobs(
    bus: Bus, tmp_path: Path, what: str, blob: bytes | str
) -> None:
    if isinstance(blob, str):  # a network for boards of another shape, labelled tictactoe
        (c, h, w), cfg = TICTACTOE.encoding_shape, NetConfig(blocks=1, channels=4, value_hidden=4)
        blob = checkpoint_bytes(PolicyValueNet(cfg, (c + 1, h, w), 9), GAME, 3)
    cache = tmp_path / "e1"  # the evaluator's verified cache: no download needed
    cache.mkdir()
    candidate, best = (cached(cache, b) for b in (blob, checkpoint_bytes(tiny_net(), GAME, 2)))
    await ensure_consumer(bus, "eval", JobSettings())
    loop = msgspec.structs.replace(LOOP, eval_jobs_per_worker=2)
    state = LoopState(
        {GAME: GameState(generation=2, best=best, trainings=3, training_in_progress=True)}
    )
    effects = Effects(bus, loop, EffectSettings(eval_sims=2), term=1)
    start = StartMatch(GAME, candidate, best, 8)
    await effects.carry_out(start, state)
    state = apply(state, start)

    worker = Worker(bus, EvaluatorConfig("e1", str(cache)), asyncio.Event())
    try:
        delivery = await Puller(bus, "eval", EvalJob).next(timeout_s=2.0)
        assert delivery is not None
        await worker.work(delivery)  # not retried: dead-lettered at once
    finally:
        worker.pool.shutdown(wait=True)
    snapshot = await observe(bus, state, loop, nodes=[])
    score = snapshot.game(GAME).match
    assert score is not None and candidate in score.unloadable
    [action] = [a for a in next_actions(state, snapshot, loop) if a.game == GAME]
    assert isinstance(action, Reject) and action.candidate == candidate
    assert "MalformedCheckpoint" in action.reason or "encoding_shape" in action.reason
    await effects.carry_out(action, state)
    decided = await bus.last(names.REGISTRY_BUCKET, names.decided_key(GAME, candidate))
    assert decided.value is not None  # evaluators drop the match's queued job unplayed
    state = apply(state, action)
    assert not [a for a in next_actions(state, snapshot, loop) if isinstance(a, StartMatch)]


def cached(cache: Path, blob: bytes) -> str:
    digest = sha256_hex(blob)
    (cache / digest).write_bytes(blob)
    return digest


def tiny_net() -> PolicyValueNet:
    config = NetConfig(blocks=1, channels=4, value_hidden=4)
    return PolicyValueNet(config, TICTACTOE.encoding_shape, TICTACTOE.num_actions)


@pytest.mark.parametrize(
    ("blob", "field"),
    [
        (pickle.dumps([1, 2, 3], protocol=2), "MalformedCheckpoint"),
        (b"\x00" * 64, "MalformedCheckpoint"),
        (checkpoint_bytes(tiny_net(), "connect4", 1), "WrongGame"),
    ],
    ids=["pickle", "zeros", "another-game"],
)
def test_loading_bad_bytes_is_a_typed_error_naming_the_cause(blob: bytes, field: str) -> None:
    digest = sha256_hex(blob)
    with pytest.raises(UnloadableModel, match=field) as caught:
        load_evaluator(blob, TICTACTOE, digest, threads=1)
    assert caught.value.sha256 == digest and isinstance(caught.value, ValueError)


def test_a_network_of_another_shape_is_unloadable_naming_the_field() -> None:
    config = NetConfig(blocks=1, channels=4, value_hidden=4)
    wide = checkpoint_bytes(PolicyValueNet(config, TICTACTOE.encoding_shape, 10), GAME, 1)
    with pytest.raises(UnloadableModel, match="num_actions"):
        load_evaluator(wide, TICTACTOE, sha256_hex(wide), threads=1)
    evaluate = load_evaluator(checkpoint_bytes(tiny_net(), GAME, 1), TICTACTOE, "x", threads=1)
    assert callable(evaluate)


# Against NATS: heartbeats.


async def test_a_stale_status_claiming_fifty_self_play_services_is_not_counted(bus: Bus) -> None:
    # Written without the heartbeat's TTL, so the keys never expire.
    await bus.write(names.NODES_BUCKET, "forged", encode(node_status("forged", 50, cores=64)))
    stale = node_status("stale", 30, cores=64)  # 30: a list the status schema takes
    await bus.write(names.NODES_BUCKET, "stale", encode(stale))
    assert live_workers(await accepted_nodes(bus)).get("selfplay", 0) >= 30  # while fresh
    await asyncio.sleep(1.0)  # honest is written later: still fresh at `later`, the others stale
    await bus.write(names.NODES_BUCKET, "honest", encode(node_status("honest", 2)), ttl_s=30)
    written = (await bus.last(names.NODES_BUCKET, "stale")).written_at
    assert written is not None
    later = written.timestamp() + HEARTBEAT_TTL_S + 0.5  # the forged statuses are stale by then
    assert live_workers(await accepted_nodes(bus, later)) == {"selfplay": 2}
    state = LoopState({GAME: GameState(generation=0, best=BEST, trainings=1)})
    snapshot = await observe(bus, state, LOOP, await accepted_nodes(bus, later))
    [enqueue] = next_actions(state, snapshot, LOOP)
    assert enqueue == EnqueueSelfplay(GAME, 4, LOOP.selfplay_games_per_job, BEST)


async def test_a_fresh_status_counts_no_more_than_its_cores_nor_under_another_key(
    bus: Bus,
) -> None:
    await bus.write(names.NODES_BUCKET, "small", encode(node_status("small", 20, cores=1)))
    await bus.write(names.NODES_BUCKET, "thief", encode(node_status("small", 4, cores=4)))
    nodes = await accepted_nodes(bus)
    assert [n.node for n in nodes] == ["small"]
    assert live_workers(nodes) == {"selfplay": 1}
    snapshot = await observe(bus, LoopState(), LOOP, nodes)
    assert snapshot.selfplay_workers == 1
