"""Self-play's share of the workers per configuration (game): a pure, documented priority.

    priority_i = weight_i * learning_i * staleness_i,      share_i = priority_i / sum_j priority_j

`weight_i` is the operator's base weight (`LoopConfig.weights`, 1 when missing; 0 pauses the
config's self-play). The two factors follow Teacher-Student curriculum learning (Matiisen et
al. 2017: practise where the learner improves fastest, never stop practising anything):

learning: the recent slope of the config's Elo chain (`Progress`: cumulative SPRT Elo of each
promotion, flat through each rejection, against the self-play games it was trained on), in Elo
per 1000 games: the least-squares line through its last `RECENT_POINTS` points (each gate
estimate is noisy; a line through several damps one lucky or unlucky match, where the two
endpoints alone made the factors jump between the floor and 1):

    slope_i = 1000 * least-squares slope of elo against games over the recent points
    learning_i = max(FLOOR, max(0, slope_i) / max_j slope_j)      (j over configs with a signal)

A config with fewer than `MIN_POINTS` points, or no games between them, has no signal and gets
a neutral 1 (a new config is explored, not starved); when no slope is positive every config
with a signal gets `FLOOR`.

staleness: grows linearly with the time since the config's last promotion, bounded:

    staleness_i = 1 + (STALE_MAX - 1) * min(1, age_i / STALE_HORIZON_S)      (1 when unknown)

so a plateaued config's share recovers somewhat while it waits, and never by more than
`STALE_MAX`. Together: with no learning signal and equal staleness, shares are the base weights
exactly; and every config of positive weight keeps at least `FLOOR / STALE_MAX` of its base
share, weight_i / sum_j weight_j.

A share is of self-play worker time: the scheduler adds up, tick by tick, the workers each
configuration's jobs keep busy (their pulses say which job), and picks each new job for the
configuration furthest behind its share (`fair_picks`, weighted fair queueing over the last
`ACTUAL_WINDOW_S`, each queued job counted at its measured cost), so a configuration whose
games are slower gets fewer, not more, of the worker-hours. See docs/allocation.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import msgspec

FLOOR = 0.25  # the least learning factor: a plateaued config keeps practising
MIN_POINTS = 3  # points of the Elo chain before its slope counts (two decisions after the first)
RECENT_POINTS = 8  # the slope is a line through this many newest points
HISTORY_POINTS = 16  # points kept per config in the loop record
STALE_MAX = 1.5  # the most the staleness factor grows
STALE_HORIZON_S = 3600.0  # ... reached this long after the last promotion
# The actual share is over the self-play worker time of this window: short, so a config that
# played a burst while its target was high is not held back for long once the target falls.
ACTUAL_WINDOW_S = 300.0
MAX_TICK_S = 5.0  # the most worker time one scheduler tick credits


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
    """Elo per 1000 games, the least-squares line through the newest `RECENT_POINTS` points;
    None without a signal (too few points, or no games between them)."""
    recent = points[-RECENT_POINTS:]
    if len(recent) < MIN_POINTS:
        return None
    mean_g = math.fsum(g for g, _ in recent) / len(recent)
    mean_e = math.fsum(e for _, e in recent) / len(recent)
    spread = math.fsum((g - mean_g) ** 2 for g, _ in recent)
    if spread <= 0:
        return None
    covariance = math.fsum((g - mean_g) * (e - mean_e) for g, e in recent)
    return 1000.0 * covariance / spread


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


# -- worker time: what a share is measured in, and how jobs are picked to honour it -----------


def selfplay_game_of(doing: str) -> str | None:
    """The configuration a self-play worker's pulse says it is playing (`doing` is "selfplay
    <job id>", the id "<game>-sp-<model>-<n>", shared.loop.effects), else None."""
    kind, _, job_id = doing.partition(" ")
    game, sep, _ = job_id.rpartition("-sp-")
    return game if kind == "selfplay" and sep and game else None


def busy_workers(doings: Iterable[str]) -> dict[str, int]:
    """Self-play workers busy on each configuration now, from their pulses' `doing`."""
    busy: dict[str, int] = {}
    for doing in doings:
        game = selfplay_game_of(doing)
        if game is not None:
            busy[game] = busy.get(game, 0) + 1
    return busy


def accrued(
    seconds: Mapping[str, float], busy: Mapping[str, int], elapsed_s: float
) -> dict[str, float]:
    """Worker-seconds per configuration after `elapsed_s` more with `busy` workers on each
    (elapsed capped at `MAX_TICK_S`: a scheduler that stalled or just took over does not
    credit the gap to whatever it sees now)."""
    step = min(max(0.0, elapsed_s), MAX_TICK_S)
    out = dict(seconds)
    for game, workers in busy.items():
        out[game] = out.get(game, 0.0) + step * workers
    return out


def spent_since(series: list[tuple[float, float]], since: float) -> float:
    """Growth of a (time, running total) series from its newest sample at or before `since`
    (else its oldest) to its newest."""
    if not series:
        return 0.0
    start = series[0][1]
    for at, total in series:
        if at > since:
            break
        start = total
    return max(0.0, series[-1][1] - start)


def job_seconds(
    spent: Mapping[str, float], games: Mapping[str, int], games_per_job: Mapping[str, int]
) -> dict[str, float]:
    """Estimated worker-seconds of one self-play job of each configuration: its measured
    seconds per game times the games of a job; configurations not yet measured get the mean of
    those that are (1.0 when none is), so they are neither favoured nor starved."""
    known = {
        name: spent[name] / games[name] * games_per_job[name]
        for name in games_per_job
        if spent.get(name, 0.0) > 0 and games.get(name, 0) > 0
    }
    default = math.fsum(known.values()) / len(known) if known else 1.0
    return {name: known.get(name, default) for name in games_per_job}


def fair_picks(
    slots: int,
    shares: Mapping[str, float],
    spent: Mapping[str, float],
    queued: Mapping[str, int],
    cost: Mapping[str, float],
    room: Mapping[str, int],
) -> dict[str, int]:
    """Which configurations the next `slots` self-play jobs are for, so that worker time goes
    by `shares` (weighted fair queueing): each pick goes to the configuration whose committed
    time (`spent` over the window plus its `queued` jobs at `cost` each), with one more job,
    is smallest relative to its share; at most `room` more of each. Ties go by name."""
    committed = {
        name: spent.get(name, 0.0) + queued.get(name, 0) * cost[name]
        for name, share in shares.items()
        if share > 0
    }
    picks = dict.fromkeys(shares, 0)
    for _ in range(max(0, slots)):
        open_ = [n for n in committed if picks[n] < room.get(n, 0)]
        if not open_:
            break
        name = min(open_, key=lambda n: ((committed[n] + cost[n]) / shares[n], n))
        picks[name] += 1
        committed[name] += cost[name]
    return picks
