"""A worker's check of its device before it takes work (lc0's backend self-check: broken drivers
once uploaded garbage): a fixed network on fixed positions gives the known outputs, and a small
search with it finds a win in one."""

from __future__ import annotations

import numpy as np
import torch

from shared.learn.device import Compute, SelfTestFailed
from shared.learn.games import get_game
from shared.learn.inference import NetEvaluator
from shared.learn.net import PolicyValueNet
from shared.learn.netconfig import NetConfig
from shared.learn.search.agent import SearchAgent

GAME = "tictactoe"
NET = NetConfig(blocks=1, channels=8, value_hidden=8)
POSITIONS = ("", "15", "1527")  # by notation
WIN_IN_ONE = "1425"  # X to move: 3 completes the top row
TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2, "fp16": 1e-2}
# The fixed network's outputs on POSITIONS (fp32): priors row by row, then the values.
KNOWN_PRIORS = (
    (0.09932, 0.09921, 0.11587, 0.09711, 0.07389, 0.15256, 0.13928, 0.17175, 0.05101),
    (0.0, 0.12, 0.14014, 0.11746, 0.0, 0.18453, 0.16845, 0.20773, 0.06169),
    (0.0, 0.0, 0.19695, 0.16507, 0.0, 0.25933, 0.0, 0.29194, 0.0867),
)
KNOWN_VALUES = (0.57551, 0.57421, 0.57836)


def fixed_net() -> PolicyValueNet:
    """The self-test's network: weights from a fixed numpy stream (the same on every machine
    and torch version), batch-norm variances kept positive."""
    game = get_game(GAME)
    net = PolicyValueNet(NET, game.encoding_shape, game.num_actions)
    rng = np.random.default_rng(20261130)
    state = {}
    for name, tensor in sorted(net.state_dict().items()):
        if not tensor.is_floating_point():
            state[name] = tensor
            continue
        values = rng.standard_normal(tuple(tensor.shape)) * 0.3
        if name.endswith("running_var"):
            values = 1.0 + np.abs(values)
        state[name] = torch.from_numpy(values.astype(np.float32))
    net.load_state_dict(state)
    return net.eval()


def outputs(evaluator: NetEvaluator) -> tuple[np.ndarray, np.ndarray]:
    """`evaluator`'s priors and values on POSITIONS."""
    game = get_game(GAME)
    states = [game.parse(p) for p in POSITIONS]
    encodings = np.stack([game.encode(s) for s in states])
    masks = np.stack([np.asarray(game.legal_mask(s), dtype=np.bool_) for s in states])
    return evaluator(encodings, masks)


def self_test(compute: Compute) -> None:
    """Raise SelfTestFailed saying what `compute` got wrong."""
    evaluator = NetEvaluator(fixed_net(), threads=None, compute=compute)
    priors, values = outputs(evaluator)
    known_p, known_v = np.array(KNOWN_PRIORS), np.array(KNOWN_VALUES)
    off = max(float(np.abs(priors - known_p).max()), float(np.abs(values - known_v).max()))
    tolerance = TOLERANCE[compute.precision]
    if not np.isfinite(off) or off > tolerance:
        raise SelfTestFailed(
            f"self-test failed on {compute.describe()}: the test network's outputs are off by "
            f"{off:.3g} (tolerance {tolerance})"
        )
    game = get_game(GAME)
    state = game.parse(WIN_IN_ONE)
    move = SearchAgent("self-test", evaluator, 16).choose(game, state, np.random.default_rng(0))
    if game.terminal_value(game.apply(state, move)) != -1.0:  # -1: the side to move then lost
        raise SelfTestFailed(
            f"self-test failed on {compute.describe()}: a 16-simulation search missed the win in "
            f"one at {WIN_IN_ONE} (played {game.action_name(move)})"
        )
