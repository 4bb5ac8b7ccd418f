"""Effective strength (Petosa & Balch 2019, "Multiplayer AlphaZero"): how many simulations plain
UCT opponents (`mcts:N`) need before a model stops winning more than its fair share.

A `Rung` is one opponent strength and the model's pairwise results against it in seat-rotated
games (`shared.learn.arena`, docs/evaluation-nplayer.md: a game of P players is P - 1 pairs).
The model beats its fair share at a rung when its pairwise score, (wins + draws / 2) / pairs, is
above 1/2. That is what an equal player scores in expectation with any P (each seat winning 1/P
of the games), and for two players it is the plain score; unlike "games won out of played
against 1/P", a draw counts as half rather than as a loss, so a model that never loses does not
read as weak in a drawish game.

The effective strength is the fewest simulations among the rungs at which the model no longer
beats its fair share (score at most 1/2), or None if it beats every rung. There is no
interpolation: the answer is always a rung of the ladder, so a coarse ladder gives a coarse
answer. The decision is on the point estimate, with no allowance for sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

FAIR_SHARE = 0.5  # the pairwise score of an equal player, whatever the number of players


@dataclass(frozen=True)
class Rung:
    """The model's pairwise (wins, draws, losses) against plain UCT of `sims` simulations."""

    sims: int
    wins: int
    draws: int
    losses: int

    def __post_init__(self) -> None:
        if self.sims < 1:
            raise ValueError(f"Rung.sims must be >= 1, got {self.sims}")
        if min(self.wins, self.draws, self.losses) < 0:
            raise ValueError(f"Rung counts must be >= 0, got {self.counts}")
        if self.pairs == 0:
            raise ValueError(f"Rung at {self.sims} simulations has no results")

    @property
    def counts(self) -> tuple[int, int, int]:
        return self.wins, self.draws, self.losses

    @property
    def pairs(self) -> int:
        return self.wins + self.draws + self.losses

    @property
    def score(self) -> float:
        return (self.wins + self.draws / 2) / self.pairs

    @property
    def beats_fair_share(self) -> bool:
        # In whole numbers, so a score of exactly 1/2 is never read as above it.
        return 2 * self.wins + self.draws > self.pairs


def merged(ladder: Iterable[Rung]) -> list[Rung]:
    """The ladder by increasing simulations, the results of rungs of equal simulations summed."""
    totals: dict[int, tuple[int, int, int]] = {}
    for rung in ladder:
        w, d, lo = totals.get(rung.sims, (0, 0, 0))
        totals[rung.sims] = (w + rung.wins, d + rung.draws, lo + rung.losses)
    return [Rung(sims, *totals[sims]) for sims in sorted(totals)]


def effective_strength(ladder: Iterable[Rung]) -> int | None:
    """The fewest simulations at which the model no longer beats its fair share; None if it
    beats every rung. Raise ValueError for an empty ladder (it measures nothing)."""
    rungs = merged(ladder)
    if not rungs:
        raise ValueError("the ladder has no rungs")
    return next((rung.sims for rung in rungs if not rung.beats_fair_share), None)


# -- "more often than a player's fair share", confirmed --------------------------------------


@dataclass(frozen=True)
class ShareTest:
    """Wald's SPRT on games won: H0 "wins a fair share" (p0 = 1/P of the games) against H1
    "wins p1 = p0 + margin" (each game won or not, a draw not won), at error rates alpha, beta.
    """

    players: int
    margin: float = 0.15
    alpha: float = 0.05
    beta: float = 0.05

    def __post_init__(self) -> None:
        if not 2 <= self.players <= 4:
            raise ValueError(f"ShareTest.players must be in 2..4, got {self.players}")
        if not 0 < self.p1 < 1:
            raise ValueError(f"ShareTest.margin must keep p0 + margin in (0, 1), got {self.margin}")
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5):
            raise ValueError(f"ShareTest alpha and beta must be in (0, 0.5), got {self}")

    @property
    def p0(self) -> float:
        return 1.0 / self.players

    @property
    def p1(self) -> float:
        return self.p0 + self.margin

    def llr(self, won: int, games: int) -> float:
        """The log-likelihood ratio of H1 over H0 after `won` of `games` games."""
        if not 0 <= won <= games:
            raise ValueError(f"won must be in [0, games], got {won} of {games}")
        lost = games - won
        return won * math.log(self.p1 / self.p0) + lost * math.log((1 - self.p1) / (1 - self.p0))

    def decision(self, won: int, games: int) -> str:
        """ "above" (H1: more than its fair share), "not above" (H0), or "continue"."""
        ratio = self.llr(won, games)
        if ratio >= math.log((1 - self.beta) / self.alpha):
            return "above"
        if ratio <= math.log(self.beta / (1 - self.alpha)):
            return "not above"
        return "continue"
