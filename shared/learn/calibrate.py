"""How large a batch a device wants: positions/s of batched inference at growing batch sizes,
and the largest batch whose rate still rises (the self-play batch a worker sizes from it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.learn.evaltypes import Evaluator
from shared.learn.games.base import BoolArray, FloatArray, Game

RISE = 1.05  # a larger batch must be this much faster per position to be worth its latency


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
    """Batches 1, 2, 4, ... up to `max_batch` (and the positions given), each timed for about
    `seconds_per_size`; stops at the first that is not `RISE` faster than the one before."""
    encodings, masks = positions
    rates: dict[int, float] = {}
    best, batch = 1, 1
    while batch <= min(max_batch, len(masks)):
        rates[batch] = _rate(evaluator, encodings[:batch], masks[:batch], seconds_per_size, clock)
        if batch > 1 and rates[batch] < RISE * rates[best]:
            break
        best, batch = batch, batch * 2
    return Calibration(rates, best)


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
