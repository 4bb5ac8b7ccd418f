"""Search on real games: forced wins and blocks, perfect play with an oracle, symmetry."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.inference import NetEvaluator, symmetrised, uniform_evaluator
from shared.learn.net import NetConfig, PolicyValueNet, WrongGame, save_checkpoint
from shared.learn.search import gumbel_search, puct_search
from shared.learn.search.agent import checkpoint_agent

LINES = (0o7, 0o70, 0o700, 0o111, 0o222, 0o444, 0o421, 0o124)
FULL = 0o777


@functools.cache
def negamax(mine: int, theirs: int) -> int:
    """Exact tic-tac-toe value for the player to move (`mine`), -1/0/+1."""
    if any(theirs & line == line for line in LINES):
        return -1
    if mine | theirs == FULL:
        return 0
    free = [a for a in range(9) if not (mine | theirs) >> a & 1]
    return max(-negamax(theirs, mine | 1 << a) for a in free)


def oracle(x: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact values decoded from tic-tac-toe encodings; priors 75% uniform, 25% on best moves.

    With fully uniform priors the search can lose at these budgets: completed Q imputes
    unvisited moves with the prior policy's (average) value and mean backups dilute exact
    values (see docs/search.md), so the prior carries a little knowledge of the best moves.
    """
    weights = 1 << np.arange(9)
    mines = (x[:, 0].reshape(len(x), 9) @ weights).astype(int).tolist()
    theirs = (x[:, 1].reshape(len(x), 9) @ weights).astype(int).tolist()
    priors = 0.75 * masks / masks.sum(axis=1, keepdims=True)
    values = []
    for i, (mine, their) in enumerate(zip(mines, theirs, strict=True)):
        values.append(negamax(mine, their))
        best = [a for a in np.flatnonzero(masks[i]) if -negamax(their, mine | 1 << a) == values[-1]]
        priors[i, best] += 0.25 / len(best)
    return priors.astype(np.float32), np.array(values, dtype=np.float32)


@pytest.mark.parametrize(
    ("game", "moves", "best", "sims"),
    [
        (TICTACTOE, "1425", 2, 32),  # X completes 1-2-3
        (TICTACTOE, "152", 2, 128),  # O must block 3
        (TICTACTOE, "517", 2, 128),  # O must block 3 (X threatens 3-5-7)
        (TICTACTOE, "15349", 5, 64),  # O completes 4-5-6 rather than block X's two threats
        (CONNECT4, "112233", 3, 32),  # X completes the bottom row
        (CONNECT4, "17273", 3, 200),  # O must block column 4
    ],
)
def test_finds_wins_and_blocks(game: Any, moves: str, best: int, sims: int) -> None:
    root = game.parse(moves)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        gumbel = gumbel_search(game, [root], uniform_evaluator, rng, num_simulations=sims)
        assert gumbel.action[0] == best, (moves, seed, gumbel.visits)
        assert np.argmax(gumbel.policy[0]) == best
    puct = puct_search(game, [root], uniform_evaluator, rng, num_simulations=4 * sims)
    assert puct.action[0] == best, (moves, puct.visits)


def _apply_all(states: list[Any], player: int) -> tuple[list[Any], int]:
    """Every reply of `player`'s opponent; count the replies that beat the player."""
    nxt, losses = {}, 0
    for state in states:
        for reply in np.flatnonzero(TICTACTOE.legal_mask(state)):
            after = TICTACTOE.apply(state, int(reply))
            if TICTACTOE.terminal_value(after) is None:
                nxt[TICTACTOE.key(after)] = after
            elif TICTACTOE.terminal_value(after) == -1.0:
                losses += 1
    return list(nxt.values()), losses


@pytest.mark.parametrize("sims", [8, 16, 32])
@pytest.mark.parametrize("player", [0, 1])
def test_search_with_perfect_values_never_loses(player: int, sims: int) -> None:
    """Against every opponent reply at every turn, exhaustively, batching all positions."""
    rng = np.random.default_rng(player)
    frontier = [TICTACTOE.initial()]
    if player == 1:
        frontier, _ = _apply_all(frontier, player)
    positions = 0
    while frontier:
        out = gumbel_search(TICTACTOE, frontier, oracle, rng, num_simulations=sims)
        positions += len(frontier)
        moved = [TICTACTOE.apply(s, int(a)) for s, a in zip(frontier, out.action, strict=True)]
        alive = [s for s in moved if TICTACTOE.terminal_value(s) is None]
        frontier, losses = _apply_all(alive, player)
        assert losses == 0
    assert positions > 20


def test_symmetric_positions_get_mirrored_policies() -> None:
    torch.manual_seed(0)
    net = PolicyValueNet(NetConfig(blocks=1, channels=8), TICTACTOE.encoding_shape, 9)
    evaluate = symmetrised(NetEvaluator(net, threads=1), TICTACTOE.symmetries())
    root = TICTACTOE.parse("12")
    for sym in TICTACTOE.symmetries():
        image = TICTACTOE.parse("".join(str(sym.actions[int(c) - 1] + 1) for c in "12"))
        # One simulation per legal action: every root child is visited exactly once.
        outs = [
            gumbel_search(
                TICTACTOE,
                [s],
                evaluate,
                np.random.default_rng(0),
                num_simulations=7,
                gumbel_scale=0.0,
            )
            for s in (root, image)
        ]
        assert np.allclose(outs[1].policy[0][sym.actions], outs[0].policy[0], atol=1e-4), sym.name
        assert np.isclose(outs[1].root_value[0], outs[0].root_value[0], atol=1e-5)


def test_connect4_mirror_through_the_net() -> None:
    torch.manual_seed(1)
    net = PolicyValueNet(NetConfig(blocks=1, channels=8), CONNECT4.encoding_shape, 7)
    evaluate = symmetrised(NetEvaluator(net, threads=1), CONNECT4.symmetries())
    a, b = CONNECT4.parse("4431"), CONNECT4.parse("4457")
    x = np.stack([CONNECT4.encode(a), CONNECT4.encode(b)])
    masks = np.stack([CONNECT4.legal_mask(a), CONNECT4.legal_mask(b)])
    priors, values = evaluate(x, masks)
    assert np.allclose(priors[1], priors[0][::-1], atol=1e-5)
    assert np.isclose(values[0], values[1], atol=1e-5)


def test_checkpoint_agent_plays_the_search_move(tmp_path: Path) -> None:
    net = PolicyValueNet(NetConfig(blocks=1, channels=8), TICTACTOE.encoding_shape, 9)
    path = tmp_path / "gen2.ckpt"
    save_checkpoint(path, net, "tictactoe", generation=2)
    agent = checkpoint_agent(TICTACTOE, path, sims=32)
    assert agent.name.startswith("gen2-")
    assert agent.choose(TICTACTOE, TICTACTOE.parse("1425"), np.random.default_rng(0)) == 2
    with pytest.raises(WrongGame):
        checkpoint_agent(CONNECT4, path, sims=8)
    with pytest.raises(ValueError, match="finished"):
        agent.choose(TICTACTOE, TICTACTOE.parse("14253"), np.random.default_rng(0))
