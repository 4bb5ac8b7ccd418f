"""The C solver against the pure-Python one, brute force and positions from the literature."""

from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.learn.games.connect4 import CELLS, GAME, Connect4State
from shared.learn.solver import _c4solver
from shared.learn.solver.connect4 import (
    DRAW,
    LOSS,
    WIN,
    SolvedPosition,
    Solver,
    move_values,
    scores,
)
from tests.test_solver_connect4 import DRAW_GAME, late_position


def pons_score(state: Connect4State, memo: dict[Hashable, int]) -> int:
    """Memoised minimax over the game API: 22 - the winner's stones, signed for the mover."""
    key = GAME.key(state)
    if key not in memo:
        ply = GAME.ply(state)
        if state.won:
            memo[key] = (ply + 1) // 2 - 22  # the player who just moved has (ply + 1) // 2 stones
        elif ply == CELLS:
            memo[key] = 0
        else:
            legal = [a for a in range(7) if GAME.legal_mask(state)[a]]
            memo[key] = max(-pons_score(GAME.apply(state, a), memo) for a in legal)
    return memo[key]


def sign(x: int) -> int:
    return (x > 0) - (x < 0)


def test_positions_from_pons_test_protocol() -> None:
    # blog.gamesolver.org part 2: the mover wins with their 4th stone; loses to red's 7th.
    assert _c4solver.solve("4455") == 18
    assert _c4solver.solve("44455554221") == -15


# As listed, with the scores of Pons' solver, in benburk/connect_four, c4/README.md.
LISTED = [
    ("6146", 18),
    ("32164625", 11),
    ("243335424257", 12),
    ("5512243243536", 13),
    ("7343363417254", 14),
]


@pytest.mark.parametrize(("moves", "score"), LISTED)
def test_scores_listed_for_pons_solver(moves: str, score: int) -> None:
    assert _c4solver.solve(moves) == score


def test_immediate_win_and_immediate_losses() -> None:
    assert _c4solver.solve("121212") == 18
    assert _c4solver.move_scores("121212") == [18, -3, -18, -18, -18, -18, -18]
    assert _c4solver.move_scores("121212", weak=True) == [WIN] + [LOSS] * 6
    # The second player has the bottom of columns 2, 3 and 4, open at both ends.
    assert _c4solver.move_scores("727364") == [-18] * 7


def test_last_moves_of_a_drawn_game() -> None:
    assert _c4solver.move_scores(DRAW_GAME[:-1]) == [None, 0, None, None, None, None, None]
    assert _c4solver.solve(DRAW_GAME) == 0
    assert _c4solver.move_scores(DRAW_GAME) == [None] * 7


@pytest.mark.parametrize(
    ("moves", "message"),
    [
        ("1212121", "position '1212121': the game is over"),
        ("12121213", "position '12121213': the game was already won at move 8"),
        ("408", "position '408': bad character at move 2"),
        ("4444444", "position '4444444': column is full at move 7"),
    ],
)
def test_bad_positions_name_the_fault(moves: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        _c4solver.solve(moves)
    with pytest.raises(ValueError, match=f"^{message}$"):
        _c4solver.move_scores(moves, weak=True)


def test_mirror_images_score_alike() -> None:
    moves = "4453326"
    mirror = "".join(str(8 - int(c)) for c in moves)
    assert _c4solver.move_scores(mirror) == _c4solver.move_scores(moves)[::-1]


def test_clear_resets_the_table_and_node_count() -> None:
    _c4solver.solve("43437")
    assert _c4solver.nodes() > 0
    _c4solver.clear()
    assert _c4solver.nodes() == 0
    assert _c4solver.solve("43437", weak=True) in (WIN, DRAW, LOSS)


def test_python_wrappers() -> None:
    state = GAME.parse("121212")
    assert move_values(state) == {0: WIN} | dict.fromkeys(range(1, 7), LOSS)
    assert scores(state) == {0: 18, 1: -3} | dict.fromkeys(range(2, 7), -18)
    with pytest.raises(SolvedPosition):
        move_values(GAME.parse("1212121"))


late_positions = st.lists(st.integers(0, 6), min_size=16, max_size=30).map(late_position)
end_positions = st.lists(st.integers(0, 6), min_size=30, max_size=41).map(late_position)


@settings(max_examples=60, deadline=None)
@given(late_positions)
def test_agrees_with_the_python_solver(state: Connect4State) -> None:
    expected = Solver().move_values(state)
    assert move_values(state) == expected
    assert {a: sign(s) for a, s in scores(state).items()} == expected
    assert sign(_c4solver.solve(state.moves)) == max(expected.values())


@settings(max_examples=40, deadline=None)
@given(end_positions)
def test_scores_match_brute_force(state: Connect4State) -> None:
    memo: dict[Hashable, int] = {}
    legal = [a for a in range(7) if GAME.legal_mask(state)[a]]
    expected = {a: -pons_score(GAME.apply(state, a), memo) for a in legal}
    assert scores(state) == expected
    assert _c4solver.solve(state.moves) == max(expected.values())


@pytest.mark.parametrize("moves", ["445326", "32164625", "43443443"])
def test_early_positions_are_consistent(moves: str) -> None:
    move_scores = _c4solver.move_scores(moves)
    best = max(s for s in move_scores if s is not None)
    assert _c4solver.solve(moves) == best
    assert _c4solver.solve(moves, weak=True) == sign(best)
    assert _c4solver.move_scores(moves, weak=True) == [
        None if s is None else sign(s) for s in move_scores
    ]


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # a minute of one core: not beside the other CPU-heavy tests
def test_empty_board_is_a_first_player_win() -> None:
    # About a minute on one core: 5e8 positions.
    assert _c4solver.solve("", weak=True) == WIN
