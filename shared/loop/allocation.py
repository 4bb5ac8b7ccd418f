"""Self-play's share of the workers per configuration (game): a pure, documented priority.

    priority_i = weight_i * learning_i * staleness_i,      share_i = priority_i / sum_j priority_j

`weight_i` is the operator's base weight (`LoopConfig.weights`, 1 when missing; 0 pauses the
config's self-play). The two factors follow Teacher-Student curriculum learning (Matiisen et
al. 2017: practise where the learner improves fastest, never stop practising anything):

learning: the recent slope of the config's Elo chain (`Progress`: cumulative SPRT Elo of each
promotion, flat through each rejection, against the self-play games it was trained on), in Elo
per 1000 games over its last `RECENT_POINTS` points:

    slope_i = 1000 * (elo_last - elo_first) / (games_last - games_first)
    learning_i = max(FLOOR, max(0, slope_i) / max_j slope_j)      (j over configs with a signal)

A config with fewer than `MIN_POINTS` points, or no games between them, has no signal and gets
a neutral 1 (a new config is explored, not starved); when no slope is positive every config
with a signal gets `FLOOR`.

staleness: grows linearly with the time since the config's last promotion, bounded:

    staleness_i = 1 + (STALE_MAX - 1) * min(1, age_i / STALE_HORIZON_S)      (1 when unknown)

so a plateaued config's share recovers somewhat while it waits, and never by more than
`STALE_MAX`. Together: with no learning signal and equal staleness, shares are the base weights
exactly; and every config of positive weight keeps at least `FLOOR / STALE_MAX` of its base
share, weight_i / sum_j weight_j. See docs/allocation.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

FLOOR = 0.25  # the least learning factor: a plateaued config keeps practising
MIN_POINTS = 3  # points of the Elo chain before its slope counts (two decisions after the first)
RECENT_POINTS = 4  # the slope is over this many newest points
HISTORY_POINTS = 16  # points kept per config in the loop record
STALE_MAX = 1.5  # the most the staleness factor grows
STALE_HORIZON_S = 3600.0  # ... reached this long after the last promotion
ACTUAL_WINDOW_S = 1200.0  # the actual share is over the self-play games of this window


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """A config's Elo chain: (self-play games trained on, cumulative Elo of the best) at each
    decided candidate, the newest `HISTORY_POINTS`; and the time of its last promotion."""

    points: list[tuple[int, float]] = []
    promoted_at: float | None = None


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    """One config's factors and self-play share: `target` from the priority, `actual` the share
    of the recent window's self-play games (None before any were played)."""

    weight: float
    learning: float
    staleness: float
    target: float
    actual: float | None = None


def promoted(progress: Progress, games: int, elo: float | None, now: float) -> Progress:
    """After a promotion of a candidate trained on `games` games, `elo` its SPRT estimate (None
    when ungated: it starts the chain, or adds nothing to it)."""
    last = progress.points[-1][1] if progress.points else 0.0
    if elo is None and progress.points:
        return msgspec.structs.replace(progress, promoted_at=now)
    point = (games, round(last + (elo or 0.0), 2))
    return Progress(points=[*progress.points, point][-HISTORY_POINTS:], promoted_at=now)


def rejected(progress: Progress, games: int) -> Progress:
    """After a rejection: `games` more games trained on and the best no better."""
    last = progress.points[-1][1] if progress.points else 0.0
    points = [*progress.points, (games, last)][-HISTORY_POINTS:]
    return msgspec.structs.replace(progress, points=points)


def slope(points: list[tuple[int, float]]) -> float | None:
    """Elo per 1000 games over the newest `RECENT_POINTS` points; None without a signal."""
    recent = points[-RECENT_POINTS:]
    if len(recent) < MIN_POINTS:
        return None
    (g0, e0), (g1, e1) = recent[0], recent[-1]
    if g1 <= g0:
        return None
    return 1000.0 * (e1 - e0) / (g1 - g0)


def learning_factors(slopes: Mapping[str, float | None]) -> dict[str, float]:
    """Each config's learning factor from its slope (module docstring)."""
    fastest = max((s for s in slopes.values() if s is not None), default=0.0)
    factors = {}
    for name, s in slopes.items():
        if s is None:
            factors[name] = 1.0
        else:
            relative = max(0.0, s) / fastest if fastest > 0 else 0.0
            factors[name] = max(FLOOR, relative)
    return factors


def staleness(promoted_at: float | None, now: float) -> float:
    if promoted_at is None:
        return 1.0
    age = max(0.0, now - promoted_at)
    return 1.0 + (STALE_MAX - 1.0) * min(1.0, age / STALE_HORIZON_S)


def allocate(
    weights: Mapping[str, float], progress: Mapping[str, Progress], now: float
) -> dict[str, Allocation]:
    """Every config of `weights` with its factors and target share (all 0 when no weight is
    positive); a config missing from `progress` has no signal and unknown staleness."""
    for name, weight in weights.items():
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight of {name!r} must be finite and >= 0, got {weight}")
    known = {name: progress.get(name, Progress()) for name in weights}
    learning = learning_factors({name: slope(p.points) for name, p in known.items()})
    stale = {name: staleness(p.promoted_at, now) for name, p in known.items()}
    base = normalised(weights)  # only their ratios count
    priority = {name: base[name] * learning[name] * stale[name] for name in weights}
    shares = normalised(priority)
    return {
        name: Allocation(
            weight=weights[name],
            learning=round(learning[name], 4),
            staleness=round(stale[name], 4),
            target=shares[name],
        )
        for name in weights
    }


def normalised(values: Mapping[str, float]) -> dict[str, float]:
    """`values` scaled to sum to 1 (all 0 when their sum is not positive)."""
    total = math.fsum(values.values())
    return {name: (v / total if total > 0 else 0.0) for name, v in values.items()}


def split_jobs(total: int, shares: Mapping[str, float], minimum: int = 0) -> dict[str, int]:
    """`total` jobs split over `shares` (normalised) by largest remainder, ties by name; with
    `total` > 0, each config of positive share gets at least `minimum`, so the sum exceeds
    `total` when the minimums need more."""
    if total < 0 or minimum < 0:
        raise ValueError(f"total and minimum must be >= 0, got {total} and {minimum}")
    quotas = {name: total * s for name, s in normalised(shares).items()}
    jobs = {name: math.floor(q) for name, q in quotas.items()}
    left = total - sum(jobs.values()) if any(quotas.values()) else 0
    for name in sorted(quotas, key=lambda n: (jobs[n] - quotas[n], n))[:left]:
        jobs[name] += 1
    if total > 0:
        jobs = {name: max(n, minimum) if quotas[name] > 0 else n for name, n in jobs.items()}
    return jobs


def actual_shares(
    counts: Mapping[str, list[tuple[float, int]]], now: float, window_s: float = ACTUAL_WINDOW_S
) -> dict[str, float]:
    """Each config's share of the self-play games stored over the last `window_s`, from the
    loop record's (time, games so far) samples; {} when none were."""
    made = {name: _made_since(series, now - window_s) for name, series in counts.items()}
    return normalised(made) if sum(made.values()) > 0 else {}


def _made_since(series: list[tuple[float, int]], since: float) -> int:
    """Games from the newest sample at or before `since` (else the oldest) to the newest."""
    if not series:
        return 0
    start = series[0][1]
    for at, games in series:
        if at > since:
            break
        start = games
    return max(0, series[-1][1] - start)
