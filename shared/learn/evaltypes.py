"""The evaluator interface search is given (no torch here, so search and config stay light).

An `Evaluator` maps encodings (B, C, H, W) float32 and legal masks (B, A) bool to priors (B, A)
(a softmax over the legal actions, 0 elsewhere) and values (B,) in [-1, 1], each from the view of
the player to move.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shared.learn.games.base import BoolArray, FloatArray

Evaluator = Callable[[FloatArray, BoolArray], tuple[FloatArray, FloatArray]]


def uniform_evaluator(encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
    """Uniform priors over legal actions and value 0: search reduces to plain MCTS."""
    legal = masks.astype(np.float32)
    counts = np.maximum(legal.sum(axis=1, keepdims=True), 1.0)
    return legal / counts, np.zeros(len(masks), dtype=np.float32)


class Counted:
    """An evaluator that counts the positions it evaluates (a job's throughput, measured)."""

    def __init__(self, inner: Evaluator) -> None:
        self.inner = inner
        self.positions = 0

    def __call__(self, encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        self.positions += len(masks)
        return self.inner(encodings, masks)
