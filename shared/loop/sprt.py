"""Sequential probability ratio test for promoting a candidate over the current best.

Trinomial results (wins, draws, losses from the candidate's view) under fishtest's GSPRT
normal approximation on the logistic Elo scale. With N = W + D + L,

    s_bar = (W + D/2) / N,   var = (W + D/4) / N - s_bar^2,   s_i = 1 / (1 + 10^(-elo_i / 400)),
    LLR ~ N * (s1 - s0) * (2*s_bar - s0 - s1) / (2*var),

with Wald's bounds lower = ln(beta / (1 - alpha)) and upper = ln((1 - beta) / alpha): accept H1
("candidate is at least elo1") at LLR >= upper, H0 ("candidate is at most elo0") at LLR <= lower.

Degenerate counts: an outcome never seen (W, D or L = 0) is counted as 1/2 (fishtest's
`regularize` uses 1e-3; 1/2 keeps a handful of identical results from looking like near-zero
variance). Counts that are all positive are used as they are, so the formula above is exact
there. Zero games gives LLR 0 and "continue".

Cap rule: once `max_games` games are in and neither bound was crossed, the candidate is promoted
(accept_h1) iff its estimated Elo is at least elo0, i.e. unless the point estimate itself says
"worse by elo0 or more". This is lc0's fixed-length gate (pass if Elo > threshold) with the
threshold at elo0; with the strict gate (elo0 = 0) it is KataGo's gatekeeper rule (score >= 50%).

Games of P > 2 players (docs/evaluation-nplayer.md): W/D/L count the candidate's pairwise results,
`pairs_per_game` = P - 1 of them a game. The pairs of one game are correlated, so each game is one
unit of evidence: the LLR is divided by `pairs_per_game`, the Elo interval is widened by its
square root, and the cap rule counts games (pairs // pairs_per_game). With 1 nothing changes.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

Decision = Literal["accept_h1", "accept_h0", "continue"]

_Z95 = 1.959963984540054
_UNSEEN = 0.5


class SprtConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """H0: Elo <= elo0, H1: Elo >= elo1; alpha = P(accept H1 | H0), beta = P(accept H0 | H1).

    The default (-20, 0) promotes unless the candidate is shown worse; (0, +20) promotes only a
    candidate shown better.
    """

    elo0: float = -20.0
    elo1: float = 0.0
    alpha: float = 0.05
    beta: float = 0.05
    max_games: int = 400

    def __post_init__(self) -> None:
        for name in ("elo0", "elo1"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"SprtConfig.{name} must be finite, got {getattr(self, name)}")
        if not self.elo1 > self.elo0:
            raise ValueError(f"SprtConfig.elo1 must be > elo0 ({self.elo0}), got {self.elo1}")
        for name in ("alpha", "beta"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"SprtConfig.{name} must be in (0, 1), got {getattr(self, name)}")
        if not self.alpha + self.beta < 1.0:
            raise ValueError(f"SprtConfig.beta must be < 1 - alpha, got {self.beta}")
        if self.max_games < 1:
            raise ValueError(f"SprtConfig.max_games must be >= 1, got {self.max_games}")


class SprtResult(msgspec.Struct, frozen=True, kw_only=True):
    """The test's state after `games` games (for P > 2 players, pairs // pairs_per_game).

    `elo` is the candidate's estimated Elo difference, [`elo_lo`, `elo_hi`] its ~95% interval
    (+/-inf where the score interval leaves (0, 1)). `truncated` marks a decision by the cap rule.
    """

    llr: float
    lower: float
    upper: float
    decision: Decision
    games: int
    elo: float
    elo_lo: float
    elo_hi: float
    truncated: bool = False


def score_from_elo(elo: float) -> float:
    """Expected score 1 / (1 + 10^(-elo/400)), computed without overflow."""
    if math.isnan(elo):
        raise ValueError("elo must not be NaN")
    x = elo * math.log(10.0) / 400.0
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def elo_from_score(score: float) -> float:
    """Elo difference -400*log10(1/score - 1); +/-inf at score 1 and 0."""
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be in [0, 1], got {score}")
    if score == 0.0:
        return -math.inf
    if score == 1.0:
        return math.inf
    return 400.0 * math.log10(score / (1.0 - score))


def bounds(cfg: SprtConfig) -> tuple[float, float]:
    """Wald's (lower, upper) = (ln(beta / (1 - alpha)), ln((1 - beta) / alpha))."""
    return math.log(cfg.beta / (1.0 - cfg.alpha)), math.log((1.0 - cfg.beta) / cfg.alpha)


def llr(wins: int, draws: int, losses: int, elo0: float, elo1: float) -> float:
    """GSPRT log-likelihood ratio of elo1 against elo0 (module docstring), regularised counts."""
    if wins + draws + losses == 0:
        return 0.0
    w, d, lo = _regularize(wins, draws, losses)
    n = w + d + lo
    mean = (w + d / 2.0) / n
    var = (w + d / 4.0) / n - mean * mean
    s0, s1 = score_from_elo(elo0), score_from_elo(elo1)
    return n * (s1 - s0) * (2.0 * mean - s0 - s1) / (2.0 * var)


def elo_interval(
    wins: int, draws: int, losses: int, *, pairs_per_game: int = 1
) -> tuple[float, float, float]:
    """(Elo, lo, hi) by lc0's formula.

    mu = (W + D/2) / N, Var(mu_hat) = [W (1 - mu)^2 + D (1/2 - mu)^2 + L mu^2] / N^2, and the
    interval mu +/- 1.96 sd mapped to Elo (an end outside (0, 1) becomes +/-inf). With
    `pairs_per_game` k the variance is k times larger: N pairs are only N / k games' evidence.
    """
    if wins + draws + losses == 0:
        return 0.0, -math.inf, math.inf
    w, d, lo = _regularize(wins, draws, losses)
    n = w + d + lo
    mu = (w + d / 2.0) / n
    sd = math.sqrt(w * (1.0 - mu) ** 2 + d * (0.5 - mu) ** 2 + lo * mu**2) / n
    if pairs_per_game != 1:  # skipped at 1 so that two-player results stay bit-identical
        sd *= math.sqrt(pairs_per_game)
    lo_mu, hi_mu = max(mu - _Z95 * sd, 0.0), min(mu + _Z95 * sd, 1.0)
    return elo_from_score(mu), elo_from_score(lo_mu), elo_from_score(hi_mu)


def sprt(
    wins: int, draws: int, losses: int, cfg: SprtConfig, *, pairs_per_game: int = 1
) -> SprtResult:
    """The SPRT decision after W/D/L (candidate's view), with the cap rule at `cfg.max_games`.

    For games of more than two players the counts are pairs, `pairs_per_game` of them a game.
    """
    for name, value in (("wins", wins), ("draws", draws), ("losses", losses)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if pairs_per_game < 1:
        raise ValueError(f"pairs_per_game must be >= 1, got {pairs_per_game}")
    games = (wins + draws + losses) // pairs_per_game
    # One game's pairs share its moves: the game, not the pair, is the unit of evidence.
    ratio = llr(wins, draws, losses, cfg.elo0, cfg.elo1) / pairs_per_game
    lower, upper = bounds(cfg)
    elo, elo_lo, elo_hi = elo_interval(wins, draws, losses, pairs_per_game=pairs_per_game)
    decision: Decision = "continue"
    truncated = False
    if ratio >= upper:
        decision = "accept_h1"
    elif ratio <= lower:
        decision = "accept_h0"
    elif games >= cfg.max_games:
        decision = "accept_h1" if elo >= cfg.elo0 else "accept_h0"
        truncated = True
    return SprtResult(
        llr=ratio,
        lower=lower,
        upper=upper,
        decision=decision,
        games=games,
        elo=elo,
        elo_lo=elo_lo,
        elo_hi=elo_hi,
        truncated=truncated,
    )


def _regularize(wins: int, draws: int, losses: int) -> tuple[float, float, float]:
    w, d, lo = (float(c) if c > 0 else _UNSEEN for c in (wins, draws, losses))
    return w, d, lo
