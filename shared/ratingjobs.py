"""Rating games chosen by uncertainty, scheduled on an interval while this node leads."""

from __future__ import annotations

import logging
import uuid

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.jobs import EvalJob, EvalResult, PlayerSpec
from shared.bus import Bus, BusError
from shared.jobs import submit
from shared.loopeffects import EffectSettings
from shared.policy import LoopConfig
from shared.ratings import PairResult, Rating, fit, pairing_uncertainty

log = logging.getLogger("conclave.ratingjobs")


async def game_results(bus: Bus, game: str) -> list[EvalResult]:
    """Every evaluation result of a game (matches, gauntlets, rating games), each job once."""
    found: dict[str, EvalResult] = {}
    for msg in await bus.read_all(names.RESULTS_STREAM, f"results.{game}.>"):
        try:
            result = decode(msg.data, EvalResult, subject=msg.subject)
        except BadMessage as e:
            log.warning("%s", e)
            continue
        found[result.job_id] = result
    return list(found.values())


def pair_results(results: list[EvalResult]) -> list[PairResult]:
    return [PairResult(r.a.name, r.b.name, r.wins_a, r.draws, r.wins_b) for r in results]


async def game_ratings(bus: Bus, game: str) -> tuple[dict[str, Rating], dict[str, PlayerSpec]]:
    """Bradley-Terry ratings of all who played `game` (random anchored at 0), and who they are."""
    results = await game_results(bus, game)
    players = {spec.name: spec for r in results for spec in (r.a, r.b)}
    return fit(pair_results(results)), players


class RatingScheduler:
    """An apscheduler interval job that enqueues the most informative rating games."""

    def __init__(
        self, bus: Bus, loop: LoopConfig, settings: EffectSettings, term: int, every_s: float
    ) -> None:
        self.bus, self.loop, self.settings, self.term = bus, loop, settings, term
        self.scheduler = AsyncIOScheduler()
        self.scheduler.add_job(self.enqueue, "interval", seconds=every_s, max_instances=1)

    def start(self) -> None:
        self.scheduler.start()

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=False)

    async def enqueue(self, pairs_per_game: int = 2) -> int:
        submitted = 0
        for game in self.loop.games:
            try:
                submitted += await self._enqueue_game(game, pairs_per_game)
            except BusError as e:
                log.warning("rating games for %s not scheduled: %s", game, e)
        return submitted

    async def _enqueue_game(self, game: str, count: int) -> int:
        ratings, players = await game_ratings(self.bus, game)
        pairs = pairing_uncertainty(ratings, [p for p in players if p in ratings], count=count)
        for a, b in pairs:
            job = EvalJob(
                f"{game}-r-{uuid.uuid4().hex[:12]}",
                game,
                "rating",
                players[a],
                players[b],
                self.settings.gauntlet_games,
                self.term,
                group="r",
            )
            await submit(self.bus, "eval", job)
        return len(pairs)
