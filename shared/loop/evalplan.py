"""Background evaluation (gauntlets and rating games) planned under a compute budget, pure.

Promotion matches decide whether the loop learns, so they always come first (their own lane,
scheduled by the policy). Everything else an evaluator does is measurement: gauntlets of the
newest best against the baselines, then rating games chosen by information. Those are enqueued
only while

- the evaluators have idle capacity: no match job is queued and fewer than
  `background_per_evaluator` background jobs per live evaluator are queued or running, and
- evaluation (matches included) used less than `budget` of the workers' CPU time (self-play,
  training and evaluation) over the recent window, as measured from the processes themselves.

Each background job is sized from the measured seconds per game of its kind of pairing, so that
it lasts about `target_job_s`: a match that arrives waits at most one short job.
"""

from __future__ import annotations

import math
from collections import deque

import msgspec

WORKER_SERVICES = ("selfplay", "trainer", "evaluator")
EVALUATION_SERVICE = "evaluator"
_Z95 = 1.959963984540054


class EvalBudget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How much measuring the loop may do. `budget` is the most of the workers' CPU that
    evaluation may have used (over `window_s`) for background work to be enqueued."""

    budget: float = 0.15
    window_s: float = 600.0
    background_per_evaluator: int = 1
    target_job_s: float = 30.0
    rating_games: int = 40  # most games of one rating job (pairs of colours)
    gauntlet_chunk: int = 20  # most games of one gauntlet job; the gauntlet stops early
    gauntlet_halfwidth: float = 0.1  # stop once the score's 95% interval is this narrow
    gauntlet_decisive: float = 0.9  # or once it lies wholly above this (or below 1 - this)

    def __post_init__(self) -> None:
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"EvalBudget.budget must be in (0, 1], got {self.budget}")
        for name in ("window_s", "target_job_s", "gauntlet_halfwidth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EvalBudget.{name} must be > 0, got {getattr(self, name)}")
        if self.background_per_evaluator < 1:
            raise ValueError(
                "EvalBudget.background_per_evaluator must be >= 1, "
                f"got {self.background_per_evaluator}"
            )
        for name in ("rating_games", "gauntlet_chunk"):
            if getattr(self, name) < 2:
                raise ValueError(f"EvalBudget.{name} must be >= 2, got {getattr(self, name)}")
        if not 0.5 < self.gauntlet_decisive < 1.0:
            raise ValueError(
                f"EvalBudget.gauntlet_decisive must be in (0.5, 1), got {self.gauntlet_decisive}"
            )


class CpuReading(msgspec.Struct, frozen=True):
    """One process's CPU seconds since it started, as its last pulse reported them."""

    process: str  # node/service/pid: a restarted service is a new process
    service: str
    cpu_s: float


class CpuMeter:
    """CPU seconds per service over a sliding window, from successive readings of every live
    process. The first reading only sets the baseline (processes' earlier CPU is not recent);
    a process first seen later is new, so all its CPU counts."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last: dict[str, float] = {}
        self._buckets: deque[tuple[float, dict[str, float]]] = deque()
        self._primed = False

    def update(self, readings: list[CpuReading], now: float) -> None:
        used: dict[str, float] = {}
        for r in readings:
            before = self._last.get(r.process, 0.0 if self._primed else r.cpu_s)
            used[r.service] = used.get(r.service, 0.0) + max(0.0, r.cpu_s - before)
        self._last = {r.process: r.cpu_s for r in readings}
        self._buckets.append((now, used))
        while self._buckets and self._buckets[0][0] < now - self.window_s:
            self._buckets.popleft()
        self._primed = True

    def used(self) -> dict[str, float]:
        """CPU seconds per service within the window."""
        total: dict[str, float] = {}
        for _, used in self._buckets:
            for service, seconds in used.items():
                total[service] = total.get(service, 0.0) + seconds
        return total


def evaluation_share(used: dict[str, float]) -> float | None:
    """Evaluation's share of the workers' CPU seconds; None before any worker used any."""
    workers = sum(used.get(s, 0.0) for s in WORKER_SERVICES)
    if workers <= 0:
        return None
    return used.get(EVALUATION_SERVICE, 0.0) / workers


def background_jobs(
    eval_workers: int,
    queued_matches: int,
    queued_background: int,
    share: float | None,
    budget: EvalBudget,
) -> int:
    """How many background evaluation jobs may be enqueued now (0 when over budget or busy)."""
    for name, value in (
        ("eval_workers", eval_workers),
        ("queued_matches", queued_matches),
        ("queued_background", queued_background),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if eval_workers == 0 or queued_matches > 0:
        return 0
    if share is not None and share >= budget.budget:
        return 0
    return max(0, eval_workers * budget.background_per_evaluator - queued_background)


def games_for(seconds_per_game: float | None, most: int, budget: EvalBudget, seats: int = 2) -> int:
    """Games for one background job: about `target_job_s` of play at the measured pace, in
    seat rotations (colour-swapped pairs for two players), between one rotation and `most`;
    half of `most` for a pairing not yet measured."""
    if seconds_per_game is None or not math.isfinite(seconds_per_game) or seconds_per_game <= 0:
        games = most // 2
    else:
        games = int(min(float(most), budget.target_job_s / seconds_per_game))
    whole = max(seats, min(most, games - games % seats))
    # `most` may not be whole rotations (two players keep what they always had: `most` itself)
    return whole - whole % seats if seats > 2 else whole


def score_interval(wins: int, draws: int, losses: int) -> tuple[float, float, float]:
    """(score, lo, hi): the score (draws count half) and its 95% Wilson interval, which stays
    honest at 20-0 where the normal one collapses to a point; (0.5, 0, 1) with no games."""
    n = wins + draws + losses
    if n == 0:
        return 0.5, 0.0, 1.0
    score = (wins + draws / 2) / n
    var = max(0.0, (wins + draws / 4) / n - score * score)
    z2 = _Z95 * _Z95
    centre = (score + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(var / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return score, max(0.0, min(score, centre - half)), min(1.0, max(score, centre + half))


def gauntlet_settled(
    wins: int, draws: int, losses: int, budget: EvalBudget, *, pairs_per_game: int = 1
) -> bool:
    """A gauntlet pairing can stop: its score is known to within `gauntlet_halfwidth`, or it is
    decisively one-sided, so more games would hardly move the ratings. With more than two
    players the counts are pairs, `pairs_per_game` of one game's: the interval is as wide as
    the games' (sqrt(k) times the pairs')."""
    if wins + draws + losses == 0:
        return False
    _, lo, hi = score_interval(wins, draws, losses)
    narrow = (hi - lo) / 2 * math.sqrt(pairs_per_game) <= budget.gauntlet_halfwidth
    one_sided = lo >= budget.gauntlet_decisive or hi <= 1 - budget.gauntlet_decisive
    return narrow or one_sided
