"""Background evaluation while this node leads: gauntlets of the newest best, then rating games,
enqueued only as far as `shared.loop.evalplan` allows (idle evaluators, evaluation under budget)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping

import msgspec

from schemas import names
from schemas.jobs import EvalJob, EvalResult, PlayerSpec
from shared.bus.ports import Bus
from shared.learn.games import seats_of
from shared.loop.effects import EffectSettings, issue, model_name, settings_for
from shared.loop.evalplan import EvalBudget, background_jobs, games_for, gauntlet_settled
from shared.loop.phase import GauntletOpponent, GauntletPhase
from shared.loop.policy import LoopConfig, LoopState, rating_issued
from shared.loop.ratingjobs import SkipLog, game_results, pair_results
from shared.loop.ratings import fit, pairing_uncertainty

log = logging.getLogger("conclave.background")

Pace = dict[tuple[str, str], float]  # seconds per game by pairing kind (agent spec or "model")


def gauntlet_group(generation: int, opponent: int) -> str:
    """One job group per gauntlet opponent, so its queued job can be counted on its own."""
    return f"g{generation}-{opponent}"


def rating_job_id(game: str, n: int, a: PlayerSpec, b: PlayerSpec, games: int) -> str:
    """The id of `game`'s `n`th rating job (counted from 0). A leader repeating it from the same
    state repeats the id; the pairing's digest tells apart two leaders' `n`th jobs whose pairings
    differ (results arrived in between), so neither overwrites the other's issued record."""
    pairing = hashlib.sha256(msgspec.json.encode((a, b, games))).hexdigest()
    return f"{game}-r-{n}-{pairing[:12]}"


def next_rating_job(game: str, job_ids: Iterable[str]) -> int:
    """One past the highest number among `game`'s rating job ids: where a restored loop's count
    goes on from, so that no new job takes a restored result's id."""
    numbered = re.compile(rf"{re.escape(game)}-r-(\d+)-[0-9a-f]+")
    numbers = [int(m.group(1)) for job_id in job_ids if (m := numbered.fullmatch(job_id))]
    return max(numbers, default=-1) + 1


def pace_key(a: PlayerSpec, b: PlayerSpec) -> tuple[str, str]:
    ka, kb = a.agent or "model", b.agent or "model"
    return (ka, kb) if ka <= kb else (kb, ka)


def measured_pace(results: Iterable[EvalResult]) -> Pace:
    """Mean seconds per game of each pairing kind over its last ten timed results."""
    samples: dict[tuple[str, str], list[float]] = {}
    for r in sorted(results, key=lambda r: r.finished_at):
        games = r.games  # pairs / pairs_per_game
        if r.elapsed_s > 0 and games > 0:
            samples.setdefault(pace_key(r.a, r.b), []).append(r.elapsed_s / games)
    return {key: sum(s[-10:]) / len(s[-10:]) for key, s in samples.items()}


class QueueDepths:
    """Evaluation jobs queued or running, from the JOBS stream's per-subject counts."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def lane(self, lane: str) -> int:
        prefix = names.job_prefix("eval", lane)
        return sum(n for subject, n in self.counts.items() if subject.startswith(prefix))

    def subject(self, subject: str) -> int:
        return self.counts.get(subject, 0)


class BackgroundEval:
    """Each tick: as many background jobs as the plan allows, gauntlets before ratings."""

    def __init__(
        self,
        bus: Bus,
        *,
        loop: LoopConfig,
        settings: EffectSettings,
        budget: EvalBudget,
        term: int,
        skips: SkipLog | None = None,
        by_game: Mapping[str, EffectSettings] | None = None,
    ) -> None:
        self.bus, self.loop, self.settings, self.budget, self.term = (
            bus,
            loop,
            settings,
            budget,
            term,
        )
        self.by_game = by_game or {}
        self.skips = skips  # results that count for nothing, met while reading
        self.pace: Pace = {}
        self._scores: dict[str, tuple[int, tuple[int, int, int]]] = {}
        self._no_pair: dict[str, int] = {}  # results stored when a game last had no pair

    async def step(
        self,
        state: LoopState,
        gauntlets: dict[str, GauntletPhase],
        eval_workers: int,
        share: float | None,
    ) -> LoopState:
        """Enqueue what fits now (gauntlets first); returns `state` with the rating jobs
        enqueued counted, which names the next ones."""
        all_lanes = names.job_filter("eval", None)
        depths = QueueDepths(await self.bus.subject_counts(names.JOBS_STREAM, all_lanes))
        queued_background = depths.lane("gauntlet") + depths.lane("rating")
        slots = background_jobs(
            eval_workers, depths.lane("match"), queued_background, share, self.budget
        )
        submitted = 0
        for game, phase in gauntlets.items():
            jobs = self.gauntlet_jobs(game, state, phase, depths, slots - submitted)
            for job in jobs:
                await issue(self.bus, job)
            submitted += len(jobs)
        for game in self.loop.games:
            if submitted >= slots:
                break
            rating = await self.rating_job(game, state)
            if rating is not None:
                await issue(self.bus, rating)
                state = rating_issued(state, game)
                submitted += 1
        return state

    async def gauntlet_phase(self, game: str, state: LoopState) -> GauntletPhase | None:
        """The newest best's score against each baseline, and which of them are settled."""
        current = state.game(game)
        if current.best is None:
            return None
        counts = await self.bus.subject_counts(
            names.RESULTS_STREAM, names.results_subject(game, names.ANY)
        )
        opponents = []
        settings = settings_for(game, self.settings, self.by_game)
        pairs = seats_of(game) - 1
        for k, agent in enumerate(settings.gauntlet):
            group = gauntlet_group(current.generation, k)
            wins, draws, losses = await self._gauntlet_score(game, group, counts)
            played = (wins + draws + losses) // pairs  # W/D/L are pairwise: games are fewer
            settled = played >= settings.gauntlet_games or gauntlet_settled(
                wins, draws, losses, self.budget, pairs_per_game=pairs
            )
            opponents.append(
                GauntletOpponent(
                    opponent=agent, wins=wins, draws=draws, losses=losses, settled=settled
                )
            )
        return GauntletPhase(current.generation, opponents)

    def gauntlet_jobs(
        self, game: str, state: LoopState, phase: GauntletPhase, depths: QueueDepths, slots: int
    ) -> list[EvalJob]:
        """The next chunk against each baseline the newest best has not settled yet, one job
        per baseline at a time."""
        current = state.game(game)
        if current.best is None or phase.generation != current.generation:
            return []
        settings = settings_for(game, self.settings, self.by_game)
        me = PlayerSpec(model_name(phase.generation), current.best, sims=settings.eval_sims)
        jobs: list[EvalJob] = []
        for k, opponent in enumerate(phase.opponents):
            group = gauntlet_group(phase.generation, k)
            queued = depths.subject(names.job_subject("eval", game, group, "gauntlet"))
            if len(jobs) >= slots or queued > 0 or opponent.settled:
                continue
            seats = seats_of(game)
            played = (opponent.wins + opponent.draws + opponent.losses) // (seats - 1)
            them = PlayerSpec(opponent.opponent, agent=opponent.opponent)
            most = max(seats, min(settings.gauntlet_games - played, self.budget.gauntlet_chunk))
            games = games_for(self.pace.get(pace_key(me, them)), most, self.budget, seats)
            job_id = f"{game}-{group}-at{played}"
            jobs.append(
                EvalJob(
                    job_id=job_id,
                    game=game,
                    kind="gauntlet",
                    a=me,
                    b=them,
                    games=games,
                    term=self.term,
                    seed=played + 1,
                    group=group,
                )
            )
        return jobs

    async def _gauntlet_score(
        self, game: str, group: str, counts: dict[str, int]
    ) -> tuple[int, int, int]:
        """Summed over the group's results, reread only when their count changed."""
        subject = names.results_subject(game, group)
        n = counts.get(subject, 0)
        cached = self._scores.get(subject)
        if cached is None or cached[0] != n:
            results = await game_results(self.bus, game, group, self.skips) if n else []
            self._learn_pace(results)
            cached = (n, _score(results))
            self._scores[subject] = cached
        return cached[1]

    async def rating_job(self, game: str, state: LoopState) -> EvalJob | None:
        """The single most informative rating pairing of `game`, sized to its measured pace;
        None (without rereading every result) while nothing was played since there was none."""
        stored = await self.bus.subject_counts(
            names.RESULTS_STREAM, names.results_subject(game, names.ANY)
        )
        if self._no_pair.get(game) == sum(stored.values()):
            return None
        results = await game_results(self.bus, game, skips=self.skips)
        self._learn_pace(results)
        players = {spec.name: spec for r in results for spec in (r.a, r.b)}
        # The Newton fit is CPU work: off the scheduler's loop, which also pulses.
        ratings = await asyncio.to_thread(fit, pair_results(results))
        pairs = pairing_uncertainty(ratings, [p for p in players if p in ratings], count=1)
        if not pairs:
            self._no_pair[game] = sum(stored.values())
            return None
        a, b = players[pairs[0][0]], players[pairs[0][1]]
        seats = seats_of(game)
        games = games_for(
            self.pace.get(pace_key(a, b)), self.budget.rating_games, self.budget, seats
        )
        return EvalJob(
            job_id=rating_job_id(game, state.game(game).rating_jobs, a, b, games),
            game=game,
            kind="rating",
            a=a,
            b=b,
            games=games,
            term=self.term,
            group="r",
        )

    def _learn_pace(self, results: list[EvalResult]) -> None:
        self.pace.update(measured_pace(results))


def _score(results: Iterable[EvalResult]) -> tuple[int, int, int]:
    """The model's (side a's) wins, draws and losses over gauntlet results."""
    wins = draws = losses = 0
    for r in results:
        wins, draws, losses = wins + r.wins_a, draws + r.draws, losses + r.wins_b
    return wins, draws, losses
