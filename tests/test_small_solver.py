"""Exact tic-tac-toe values and the perfect-play check used by the training-loop acceptance test."""

from __future__ import annotations

import numpy as np

from shared.learn.baselines import make_agent
from shared.learn.games import get_game
from shared.learn.solver.small import SmallSolver, check_perfect_play

GAME = get_game("tictactoe")


def test_the_empty_board_is_a_draw_and_a_won_line_is_a_loss_for_the_side_to_move() -> None:
    solver = SmallSolver(GAME)
    assert solver.value(GAME.initial()) == 0
    assert solver.value(GAME.parse("14253")) == -1  # X has 1-2-3; O to move has lost


def test_a_perfect_player_passes_and_onestep_does_not() -> None:
    solver = SmallSolver(GAME)

    def perfect(state: object) -> int:
        return next(a for a in solver.legal(state) if solver.keeps_value(state, a))

    report = check_perfect_play(GAME, perfect)
    assert report.perfect and report.positions > 100
    rng = np.random.default_rng(0)
    onestep = make_agent("onestep")
    flawed = check_perfect_play(GAME, lambda s: onestep.choose(GAME, s, rng))
    assert not flawed.perfect
