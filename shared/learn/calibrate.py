"""How large a batch a device wants: positions/s of batched inference at growing batch sizes,
and the largest batch before the rate falls (the self-play batch a worker sizes from it).

Larger batches cost a self-play worker nothing but memory (the memory guard sizes that apart):
the search's own per-step overhead is shared by every game in flight, so fewer games at once is
slower even where the network's rate is flat. So the chosen batch is the largest whose rate is
within `FALL` of the best, not the first that stops rising: a noisy measurement (a worker
calibrates while its node starts everything else) must not pin it to one game at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.learn.evaltypes import Evaluator
from shared.learn.games.base import BoolArray, FloatArray, Game

FALL = 0.75  # a batch below this share of the best rate is past the device's best
REPEATS = 2  # each size is timed this often and the fastest kept: load only ever slows


@dataclass(frozen=True)
class Calibration:
    """Positions/s at each batch size tried, and the batch chosen."""

    rates: dict[int, float]
    best_batch: int

    @property
    def best_rate(self) -> float:
        return self.rates[self.best_batch]


def sample_positions(
    game: Game[Any], count: int, rng: np.random.Generator
) -> tuple[FloatArray, BoolArray]:
    """Encodings and legal masks of `count` random early positions."""
    states = []
    for _ in range(count):
        state = game.initial()
        for _ in range(int(rng.integers(0, 12))):
            if game.terminal_value(state) is not None:
                break
            state = game.apply(state, int(rng.choice(np.flatnonzero(game.legal_mask(state)))))
        states.append(state)
    masks = np.stack([game.legal_mask(s) for s in states])
    return np.stack([game.encode(s) for s in states]), masks


def calibrate(
    evaluator: Evaluator,
    positions: tuple[FloatArray, BoolArray],
    *,
    max_batch: int = 1024,
    seconds_per_size: float = 0.3,
    clock: Callable[[], float] = time.perf_counter,
) -> Calibration:
    """Batches 1, 2, 4, ... up to `max_batch` (and the positions given), each timed `REPEATS`
    times for about `seconds_per_size` in all; stops after two sizes in a row fall below `FALL`
    of the best, and chooses the largest batch within `FALL` of the best."""
    encodings, masks = positions
    rates: dict[int, float] = {}
    falls, batch = 0, 1
    while batch <= min(max_batch, len(masks)) and falls < 2:
        timed = [
            _rate(evaluator, encodings[:batch], masks[:batch], seconds_per_size / REPEATS, clock)
            for _ in range(REPEATS)
        ]
        rates[batch] = max(timed)
        falls = falls + 1 if rates[batch] < FALL * max(rates.values()) else 0
        batch *= 2
    return Calibration(rates, chosen(rates))


def chosen(rates: dict[int, float]) -> int:
    """The largest batch whose rate is within `FALL` of the best."""
    best = max(rates.values())
    return max(batch for batch, rate in rates.items() if rate >= FALL * best)


def _rate(
    evaluator: Evaluator,
    encodings: FloatArray,
    masks: BoolArray,
    seconds: float,
    clock: Callable[[], float],
) -> float:
    evaluator(encodings, masks)  # warm-up: first calls allocate
    calls, start = 0, clock()
    while (elapsed := clock() - start) < seconds or calls < 2:
        evaluator(encodings, masks)
        calls += 1
    return calls * len(masks) / max(elapsed, 1e-9)
