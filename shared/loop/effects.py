"""Carrying out the master loop's actions: jobs, the best-model pointer, model events.

Every effect is idempotent, because a leader may die between acting and recording: job ids are
derived from the loop state (so JetStream drops a re-submission), and the best pointer only ever
moves forward by compare-and-set, stamped with the promoting term.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import assert_never

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.jobs import (
    BestPointer,
    EvalJob,
    ModelEvent,
    ModelEventKind,
    ModelMeta,
    PlayerSpec,
    SelfplayJob,
    TrainJob,
)
from shared.bus.ports import Bus
from shared.learn.games import players_of
from shared.lease.fencing import StaleTerm, cas_put, read_termed
from shared.loop.observe import match_group, train_group, train_job_id
from shared.loop.policy import (
    AbandonTraining,
    Action,
    EnqueueSelfplay,
    LoopConfig,
    LoopState,
    Promote,
    Reject,
    StartMatch,
    StartTraining,
)
from shared.loop.sprt import SprtResult
from shared.work.jobs import submit

log = logging.getLogger("conclave.effects")


class EffectSettings(msgspec.Struct, frozen=True):
    """Job parameters. With `selfplay_sims_start` set, self-play's simulations grow linearly
    from it (generation 0) to `selfplay_sims` (at `sims_ramp_generations`): a progressive
    simulation budget (MiniZero), cheap searches while the net knows little."""

    selfplay_sims: int = 64
    selfplay_sims_start: int | None = None
    sims_ramp_generations: int = 10
    eval_sims: int = 64
    train_steps: int = 400
    resign: bool = False  # self-play resigns at the threshold the trainer calibrated
    gauntlet: tuple[str, ...] = ("random", "onestep", "mcts:200")
    gauntlet_games: int = 20


def selfplay_sims(settings: EffectSettings, generation: int) -> int:
    """Simulations per self-play move for games played by the net of `generation`."""
    start = settings.selfplay_sims_start
    if start is None or settings.sims_ramp_generations <= 0:
        return settings.selfplay_sims
    progress = min(1.0, max(0, generation) / settings.sims_ramp_generations)
    return max(1, round(start + (settings.selfplay_sims - start) * progress))


def model_name(generation: int) -> str:
    return f"gen{generation}"


def selfplay_job_id(game: str, model: str, n: int) -> str:
    """The id of `game`'s `n`th self-play job (counted from 0), played by net `model`."""
    return f"{game}-sp-{model[:12] or 'uniform'}-{n}"


async def issue(bus: Bus, job: EvalJob) -> None:
    """Record `job` in KV `loop` as owed a result, then submit it: only an issued job's result
    counts (`shared.loop.ratingjobs`), so the record is stored before any evaluator can see the job.
    A re-issue under the same id (a leader repeating an action) writes the record again."""
    key = names.issued_key(job.game, job.group, job.job_id)
    await bus.write(names.LOOP_BUCKET, key, encode(job))
    await submit(bus, "eval", job)


def settings_for(
    game: str, settings: EffectSettings, by_game: Mapping[str, EffectSettings]
) -> EffectSettings:
    """A configuration's own job parameters (`conclave up --config`), else the shared ones."""
    return by_game.get(game, settings)


class Effects:
    def __init__(
        self,
        bus: Bus,
        loop: LoopConfig,
        settings: EffectSettings,
        term: int,
        by_game: Mapping[str, EffectSettings] | None = None,
    ) -> None:
        self.bus, self.loop, self.settings, self.term = bus, loop, settings, term
        self.by_game = by_game or {}

    def settings_of(self, game: str) -> EffectSettings:
        return settings_for(game, self.settings, self.by_game)

    async def carry_out(self, action: Action, state: LoopState) -> None:
        game = state.game(action.game)
        match action:
            case EnqueueSelfplay():
                await self.selfplay(action, game.generation, game.selfplay_jobs)
            case StartTraining():
                # From the best, never from a rejected candidate: a poisoned or broken net
                # that lost its match must not be the parent of every later one.
                await self.train(action, game.best)
            case StartMatch():
                first_job = game.match_games // self.loop.for_game(action.game).eval_games_per_job
                if game.pending_eval != action.candidate:
                    first_job = 0
                await self.match(action, game.generation, game.trainings, first_job)
            case Promote():
                await self.promote(action)
            case Reject():
                detail = "; ".join(filter(None, (action.reason, _sprt_detail(action.result))))
                await self.decided("rejected", action.game, action.generation, action.candidate)
                await self.event(
                    "rejected", action.game, action.generation, action.candidate, detail
                )
            case AbandonTraining():
                log.warning(
                    "training %d of %s dead-lettered; retrying", action.training, action.game
                )
            case _:
                assert_never(action)

    async def selfplay(self, action: EnqueueSelfplay, generation: int, enqueued: int) -> None:
        """`action.jobs` jobs, numbered on from the `enqueued` ones before them."""
        resign = await self.resign_value(action.game, action.model)
        tiers = action.tiers or (names.DEFAULT_TIER,) * action.jobs
        for n, tier in zip(range(enqueued, enqueued + action.jobs), tiers, strict=True):
            job = SelfplayJob(
                job_id=selfplay_job_id(action.game, action.model, n),
                game=action.game,
                model_sha256=action.model,
                generation=generation,
                games=action.games_per_job,
                sims=selfplay_sims(self.settings_of(action.game), generation),
                term=self.term,
                resign_value=resign,
            )
            await submit(self.bus, "selfplay", job, tier=tier)

    async def resign_value(self, game: str, model: str) -> float | None:
        """The resign threshold calibrated by the training that made `model` (when enabled)."""
        if not self.settings_of(game).resign or not model or players_of(game) > 2:
            return None  # resigning is two-player: who would win is not settled by one loser
        key = names.model_key(game, model)
        entry = await self.bus.last(names.REGISTRY_BUCKET, key)
        if entry.value is None:
            return None
        try:
            return decode(entry.value, ModelMeta, subject=key).resign_threshold
        except BadMessage as e:  # a broken or hostile trainer's: play every game out
            log.warning("%s; no resignation", e, extra={"field": e.field})
            return None

    async def train(self, action: StartTraining, parent: str | None) -> None:
        job = TrainJob(
            job_id=train_job_id(action.game, action.training),
            game=action.game,
            generation=action.generation,
            parent_sha256=parent or "",
            steps=self.settings_of(action.game).train_steps,
            term=self.term,
            group=train_group(action.training),
        )
        await submit(self.bus, "train", job, tier=action.tier)

    async def match(self, action: StartMatch, generation: int, training: int, first: int) -> None:
        group = match_group(training)
        sims = self.settings_of(action.game).eval_sims
        a = PlayerSpec(model_name(generation + 1), action.candidate, sims=sims)
        b = PlayerSpec(model_name(generation), action.best, sims=sims)
        per_job = self.loop.for_game(action.game).eval_games_per_job
        for k in range(first, first + action.games // per_job):
            job = EvalJob(
                job_id=f"{action.game}-{group}-{k}",
                game=action.game,
                kind="match",
                a=a,
                b=b,
                games=per_job,
                term=self.term,
                seed=k + 1,
                group=group,
            )
            await issue(self.bus, job)

    async def promote(self, action: Promote) -> None:
        key = names.best_key(action.game)
        current, revision = await read_termed(self.bus, names.REGISTRY_BUCKET, key, BestPointer)
        if current is not None and current.term > self.term:
            raise StaleTerm(f"best pointer of {action.game} moved by term {current.term}")
        if current is None or current.generation < action.generation:
            detail = _sprt_detail(action.result) if action.result else "first network, ungated"
            pointer = BestPointer(
                game=action.game,
                generation=action.generation,
                sha256=action.candidate,
                term=self.term,
                promoted_at=time.time(),
                reason=detail,
            )
            await cas_put(self.bus, names.REGISTRY_BUCKET, key, pointer, revision)
        if action.result is not None:
            await self.decided("promoted", action.game, action.generation, action.candidate)
        await self.event(
            "promoted",
            action.game,
            action.generation,
            action.candidate,
            _sprt_detail(action.result) if action.result else "ungated",
        )

    async def decided(self, kind: ModelEventKind, game: str, generation: int, sha: str) -> None:
        """Mark the candidate's match decided, so evaluators drop its jobs still queued."""
        event = ModelEvent(kind=kind, game=game, generation=generation, sha256=sha, at=time.time())
        await self.bus.write(names.REGISTRY_BUCKET, names.decided_key(game, sha), encode(event))

    async def event(
        self, kind: ModelEventKind, game: str, generation: int, sha: str, detail: str
    ) -> None:
        event = ModelEvent(
            kind=kind, game=game, generation=generation, sha256=sha, at=time.time(), detail=detail
        )
        # A leader that dies between this and its state write repeats the action: same id.
        msg_id = f"{kind}-{game}-{generation}-{sha[:16]}"
        await self.bus.publish_durable(names.model_event_subject(kind), encode(event), msg_id)
        log.info("generation %d of %s %s: %s", generation, game, kind, detail)


def _sprt_detail(r: SprtResult | None) -> str:
    if r is None:
        return ""
    return (
        f"{r.games} games, elo {r.elo:+.0f} [{r.elo_lo:+.0f}, {r.elo_hi:+.0f}], "
        f"llr {r.llr:.2f} in [{r.lower:.2f}, {r.upper:.2f}] -> {r.decision}"
    )
