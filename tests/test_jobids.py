"""Job ids come from the loop state: a leader repeating an enqueue from the same state (its
predecessor died before writing the state) repeats the ids, so JetStream drops the copies."""

from __future__ import annotations

import time

from schemas import names
from schemas.codec import encode
from schemas.jobs import EvalJob, EvalResult, PlayerSpec, SelfplayJob
from shared.bus.ports import Bus
from shared.loop.backgroundeval import BackgroundEval, next_rating_job, rating_job_id
from shared.loop.effects import Effects, EffectSettings, issue, selfplay_job_id
from shared.loop.evalplan import EvalBudget
from shared.loop.policy import (
    EnqueueSelfplay,
    GameState,
    LoopConfig,
    LoopState,
    apply,
    rating_issued,
)
from shared.work.jobs import JobSettings, Puller, ensure_consumer

GAME = "tictactoe"
BEST = "ab" * 32
LOOP = LoopConfig(games=(GAME,))
MODEL = PlayerSpec("gen0", BEST, sims=8)
RANDOM = PlayerSpec("random", agent="random")


async def queued(bus: Bus, kind: str) -> int:
    return sum((await bus.subject_counts(names.JOBS_STREAM, f"jobs.{kind}.>")).values())


async def pulled_selfplay_ids(bus: Bus) -> list[str]:
    """Every queued self-play job's id (left unacknowledged)."""
    await ensure_consumer(bus, "selfplay", JobSettings())
    puller = Puller(bus, "selfplay", SelfplayJob)
    ids = []
    while (delivery := await puller.next(timeout_s=0.5)) is not None:
        ids.append(delivery.job.job_id)
    return ids


async def test_a_repeated_selfplay_enqueue_repeats_its_ids_and_the_next_one_does_not(
    bus: Bus,
) -> None:
    state = LoopState({GAME: GameState(generation=0, best=BEST)})
    action = EnqueueSelfplay(GAME, 3, 10, BEST)
    await Effects(bus, LOOP, EffectSettings(), term=1).carry_out(action, state)
    assert await queued(bus, "selfplay") == 3
    # A new leader (another term) repeats the action from the state that was never advanced.
    await Effects(bus, LOOP, EffectSettings(), term=2).carry_out(action, state)
    assert await queued(bus, "selfplay") == 3  # the same ids: JetStream dropped the copies
    state = apply(state, action)
    assert state.game(GAME).selfplay_jobs == 3
    await Effects(bus, LOOP, EffectSettings(), term=2).carry_out(action, state)
    assert await queued(bus, "selfplay") == 6
    ids = await pulled_selfplay_ids(bus)
    assert sorted(ids) == sorted(selfplay_job_id(GAME, BEST, n) for n in range(6))
    assert len(set(ids)) == 6


async def test_a_repeated_rating_job_repeats_its_id_and_the_next_one_does_not(bus: Bus) -> None:
    played = EvalJob(
        job_id=f"{GAME}-r-played",
        game=GAME,
        kind="rating",
        a=MODEL,
        b=RANDOM,
        games=4,
        term=1,
        group="r",
    )
    await issue(bus, played)
    result = EvalResult(
        job_id=played.job_id,
        game=GAME,
        kind="rating",
        a=MODEL,
        b=RANDOM,
        wins_a=3,
        draws=0,
        wins_b=1,
        term=1,
        finished_at=time.time(),
        group="r",
    )
    await bus.publish_durable(names.results_subject(GAME, "r"), encode(result))
    background = BackgroundEval(
        bus, loop=LOOP, settings=EffectSettings(), budget=EvalBudget(), term=1
    )
    state = LoopState({GAME: GameState(generation=0, best=BEST)})
    job = await background.rating_job(GAME, state)
    again = await BackgroundEval(
        bus, loop=LOOP, settings=EffectSettings(), budget=EvalBudget(), term=2
    ).rating_job(GAME, state)
    assert job is not None and again is not None
    assert job.job_id == again.job_id
    following = await background.rating_job(GAME, rating_issued(state, GAME))
    assert following is not None and following.job_id != job.job_id


def test_rating_ids_differ_by_number_and_pairing_and_a_restore_counts_on_past_them() -> None:
    first = rating_job_id(GAME, 0, MODEL, RANDOM, 4)
    assert first == rating_job_id(GAME, 0, MODEL, RANDOM, 4)
    others = {
        rating_job_id(GAME, 1, MODEL, RANDOM, 4),
        rating_job_id(GAME, 0, RANDOM, MODEL, 4),
        rating_job_id(GAME, 0, MODEL, RANDOM, 6),
    }
    assert first not in others and len(others) == 3
    restored = [first, rating_job_id(GAME, 7, MODEL, RANDOM, 4), f"{GAME}-m3-0", "connect4-r-9-ab"]
    assert next_rating_job(GAME, restored) == 8
    assert next_rating_job(GAME, [f"{GAME}-r-0f3a9c2b41de"]) == 0  # an older build's random id
