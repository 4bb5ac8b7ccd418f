"""Resignation calibrated on games played out, and its false-resign rate checked (pure).

Games where resigning was not allowed (all games while resignation is off, and a fraction of
games once it is on) are played to the end. In each, every player who did not lose had a lowest
root value along the way; resigning at a threshold at or above it would have resigned a game
that was not lost. The threshold is set so that at most `target` of those players would have
resigned (Leela Zero's and KataGo's calibration), and the games where a player *would* have
resigned at the threshold in force tell the false-resign rate actually run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec

_BELOW = 1e-6  # a threshold strictly under the sample it must not catch


class ResignSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`target`: the most false resigns allowed among games played out; no threshold until
    `min_samples` non-losing players were seen; never resign above `highest` (a position the
    search thinks is only bad, not lost)."""

    target: float = 0.05
    min_samples: int = 100
    highest: float = -0.8

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"ResignSettings.target must be in (0, 1), got {self.target}")
        if self.min_samples < 1:
            raise ValueError(f"ResignSettings.min_samples must be >= 1, got {self.min_samples}")
        if not -1.0 <= self.highest <= 1.0:
            raise ValueError(f"ResignSettings.highest must be in [-1, 1], got {self.highest}")


class ResignReport(msgspec.Struct, frozen=True):
    """The calibrated threshold (None: do not resign yet), from `samples` non-losing players;
    of `checked` games where someone would have resigned, `false` were not lost by them."""

    threshold: float | None
    samples: int
    checked: int
    false: int

    @property
    def false_rate(self) -> float | None:
        return self.false / self.checked if self.checked else None


def lowest_values(
    root_values: list[float], movers: list[int], outcomes: list[float]
) -> list[float]:
    """Each non-losing player's lowest root value (their own view) over a played-out game;
    `outcomes[p]` is player p's result (+1, 0, -1)."""
    lowest: dict[int, float] = {}
    for value, mover in zip(root_values, movers, strict=True):
        lowest[mover] = min(lowest.get(mover, math.inf), value)
    return [v for p, v in sorted(lowest.items()) if outcomes[p] >= 0]


def threshold(lowest: list[float], settings: ResignSettings) -> float | None:
    """The highest threshold at which at most `target` of the non-losing players would have
    resigned, capped at `highest`; None with too few samples or when it would be below -1."""
    if len(lowest) < settings.min_samples:
        return None
    ordered = sorted(lowest)
    caught = math.floor(settings.target * len(ordered))  # this many may fall at or below it
    t = ordered[caught] - _BELOW
    if t < -1.0:
        return None
    return min(t, settings.highest)


def report(
    lowest: Iterable[float], would_resign_false: Iterable[bool], settings: ResignSettings
) -> ResignReport:
    samples = list(lowest)
    checks = list(would_resign_false)
    return ResignReport(threshold(samples, settings), len(samples), len(checks), sum(checks))
