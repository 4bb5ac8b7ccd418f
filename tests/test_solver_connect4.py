from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.learn.games import IllegalMove
from shared.learn.games.connect4 import GAME, Connect4State
from shared.learn.solver.connect4 import (
    DRAW,
    LOSS,
    WIN,
    SolvedPosition,
    Solver,
    TooHard,
    winning_cells,
)

DRAW_GAME = "446323116125713546635334125521577677446722"


def brute_force(state: Connect4State, memo: dict[Hashable, int]) -> int:
    """Plain memoised minimax over the game API: the value for the player to move."""
    key = GAME.key(state)
    if key not in memo:
        terminal = GAME.terminal_value(state)
        if terminal is not None:
            memo[key] = int(terminal)
        else:
            legal = [a for a in range(7) if GAME.legal_mask(state)[a]]
            memo[key] = max(-brute_force(GAME.apply(state, a), memo) for a in legal)
    return memo[key]


def late_position(choices: list[int]) -> Connect4State:
    """Play choice `i` as the i-th legal move that does not end the game, while there is one."""
    state = GAME.initial()
    for choice in choices:
        legal = [a for a in range(7) if GAME.legal_mask(state)[a]]
        going_on = [
            s for s in (GAME.apply(state, a) for a in legal) if GAME.terminal_value(s) is None
        ]
        if not going_on:
            break
        state = going_on[choice % len(going_on)]
    return state


late_positions = st.lists(st.integers(0, 6), min_size=26, max_size=41).map(late_position)


def test_winning_cells() -> None:
    state = GAME.parse("2737")  # first player on the bottom of columns 2 and 3
    bits = GAME.apply(state, 3)  # ... and 4: threats on the bottom of columns 1 and 5
    mover = bits.position ^ bits.mask
    cells = winning_cells(mover, bits.mask)
    assert cells == (1 << 0) | (1 << 4 * 7)


def test_immediate_win_and_what_it_leaves() -> None:
    state, solver = GAME.parse("121212"), Solver()
    assert solver.move_value(state, 0) == WIN
    # Anything but column 1 or 2 lets the opponent win in column 2.
    assert [solver.move_value(state, c) for c in range(2, 7)] == [LOSS] * 5


def test_every_move_loses_against_two_threats() -> None:
    # The second player has the bottom of columns 2, 3 and 4, open at both ends.
    assert Solver().move_values(GAME.parse("727364")) == dict.fromkeys(range(7), LOSS)


def test_an_open_three_wins() -> None:
    state, solver = GAME.parse("3344"), Solver()
    assert solver.move_value(state, 1) == WIN
    assert solver.move_value(state, 4) == WIN


def test_last_moves_of_a_drawn_game() -> None:
    solver = Solver()
    assert solver.move_values(GAME.parse(DRAW_GAME[:-1])) == {1: DRAW}
    assert solver.value(GAME.parse(DRAW_GAME[:-4])) == DRAW
    assert solver.value(GAME.parse(DRAW_GAME)) == DRAW
    assert solver.value(GAME.parse("1212121")) == LOSS


def test_finished_positions_and_full_columns_are_rejected() -> None:
    with pytest.raises(SolvedPosition, match="position '1212121': the game is over"):
        Solver().move_values(GAME.parse("1212121"))
    with pytest.raises(IllegalMove, match="position '444444': column 4 is not playable"):
        Solver().move_value(GAME.parse("444444"), 3)


def test_node_limit() -> None:
    with pytest.raises(TooHard, match="position '44', column 4: gave up after 100 positions"):
        Solver(node_limit=100).move_value(GAME.parse("44"), 3)


def test_small_table_still_solves() -> None:
    state = late_position([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4] * 3)
    memo: dict[Hashable, int] = {}
    expected = {a: -brute_force(GAME.apply(state, a), memo) for a in Solver().move_values(state)}
    assert Solver(max_entries=16).move_values(state) == expected


@settings(max_examples=30, deadline=None)
@given(late_positions)
def test_move_values_match_brute_force(state: Connect4State) -> None:
    memo: dict[Hashable, int] = {}
    legal = [a for a in range(7) if GAME.legal_mask(state)[a]]
    expected = {a: -brute_force(GAME.apply(state, a), memo) for a in legal}
    solver = Solver()
    assert solver.move_values(state) == expected
    assert solver.value(state) == max(expected.values())
