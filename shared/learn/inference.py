"""Batched network inference behind the evaluator interface (`shared.learn.evaltypes`).

An `Evaluator` maps encodings (B, C, H, W) float32 and legal masks (B, A) bool to priors (B, A)
(a softmax over the legal actions, 0 elsewhere) and values in [-1, 1], each from the view of
the player to move: (B,) for two players, (B, P) for P > 2 in turn order from the mover (entry j:
the player j seats after the mover), as the search takes them. Search only ever sees this
callable (mctx's "the network passed in").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from shared.learn.device import CPU, Compute
from shared.learn.evaltypes import Evaluator, uniform_evaluator
from shared.learn.games.base import BoolArray, FloatArray, Symmetry
from shared.learn.net import PolicyValueNet, inference_copy

_MASKED_LOGIT = -1e30


class NetEvaluator:
    """Batched inference of a policy-value network under `torch.inference_mode()`.

    Runs a snapshot of `net` with batch norms folded into the convolutions (build a new
    evaluator after changing the weights) on `compute`'s device and precision; inputs and
    outputs stay numpy on the host. `threads` sets torch's intra-op thread count, a
    process-wide torch setting, once, here.
    """

    def __init__(
        self, net: PolicyValueNet, threads: int | None = 1, compute: Compute = CPU
    ) -> None:
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        self.compute = compute
        self.device = torch.device(compute.device)  # parsed once: inference runs per simulation
        self.net = inference_copy(net).to(self.device)

    def __call__(self, encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        if len(encodings) != len(masks):
            raise ValueError(f"{len(encodings)} encodings but {len(masks)} masks")
        device = self.device
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(encodings, dtype=np.float32)).to(device)
            with self.compute.autocast():
                logits, values = self.net(x)
            mask = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.bool_)).to(device)
            logits = logits.float().masked_fill(~mask, _MASKED_LOGIT)
            priors = torch.softmax(logits, dim=1).masked_fill(~mask, 0.0)
            return priors.cpu().numpy(), values.float().cpu().numpy()


def symmetrised(evaluator: Evaluator, symmetries: Sequence[Symmetry]) -> Evaluator:
    """Average `evaluator` over all board symmetries, so its outputs are exactly equivariant.

    Values, (B,) or (B, P), are averaged as they are: a board symmetry keeps the turn order.
    """
    inverse = [_inverse(s.actions) for s in symmetries]

    def evaluate(encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        total_p = np.zeros(masks.shape, dtype=np.float64)
        total_v: npt.NDArray[np.float64] | None = None
        for sym, inv in zip(symmetries, inverse, strict=True):
            # The image position has image masks: image action sym[a] is legal iff a is.
            p, v = evaluator(sym.planes(encodings), masks[:, inv])
            total_p += p[:, sym.actions]
            total_v = v.astype(np.float64) if total_v is None else total_v + v
        if total_v is None:  # no symmetries at all: `Game.symmetries` always has the identity
            raise ValueError("symmetrised needs at least one symmetry")
        n = len(symmetries)
        return (total_p / n).astype(np.float32), (total_v / n).astype(np.float32)

    return evaluate


def _inverse(permutation: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    inverse = np.empty_like(permutation)
    inverse[permutation] = np.arange(len(permutation))
    return inverse


__all__ = ["Evaluator", "NetEvaluator", "symmetrised", "uniform_evaluator"]
