"""The ratings pool: every evaluation result of a game, and the Bradley-Terry fit over them."""

from __future__ import annotations

import logging

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.jobs import EvalResult, PlayerSpec
from shared.bus import Bus
from shared.ratings import PairResult, Rating, fit

log = logging.getLogger("conclave.ratingjobs")


async def game_results(bus: Bus, game: str, group: str = names.ANY) -> list[EvalResult]:
    """Every evaluation result of a game (matches, gauntlets, rating games), or of one job
    group of it, each job once."""
    found: dict[str, EvalResult] = {}
    for msg in await bus.read_all(names.RESULTS_STREAM, names.results_subject(game, group)):
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
