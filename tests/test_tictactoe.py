import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.learn.games import BadNotation, IllegalMove
from shared.learn.games.tictactoe import GAME, TicTacToeState


def play(cells: list[int]) -> TicTacToeState:
    """Play 0-based cells in order, stopping at the end of the game."""
    state = GAME.initial()
    for cell in cells:
        if GAME.terminal_value(state) is not None:
            break
        state = GAME.apply(state, cell)
    return state


games = st.tuples(st.permutations(list(range(9))), st.integers(0, 9)).map(
    lambda pair: play(pair[0][: pair[1]])
)


def reference_value(moves: str) -> float | None:
    """Slow terminal check over a 3x3 grid of 'X'/'O'/'.'."""
    grid = [["."] * 3 for _ in range(3)]
    for ply, char in enumerate(moves):
        cell = int(char) - 1
        grid[cell // 3][cell % 3] = "XO"[ply % 2]
    lines = [row for row in grid] + [[grid[r][c] for r in range(3)] for c in range(3)]
    lines += [[grid[i][i] for i in range(3)], [grid[i][2 - i] for i in range(3)]]
    mover = "XO"[len(moves) % 2]
    for line in lines:
        if line[0] != "." and line.count(line[0]) == 3:
            return 1.0 if line[0] == mover else -1.0
    return 0.0 if len(moves) == 9 else None


def test_shapes() -> None:
    assert GAME.encode(GAME.initial()).shape == GAME.encoding_shape == (3, 3, 3)
    assert GAME.legal_mask(GAME.initial()).tolist() == [True] * 9


@pytest.mark.parametrize(
    ("moves", "line"),
    [("14253", "row"), ("12457", "column"), ("12569", "diagonal"), ("31527", "anti-diagonal")],
)
def test_first_player_wins(moves: str, line: str) -> None:
    state = GAME.parse(moves)
    assert GAME.terminal_value(state) == -1.0, line
    assert not GAME.legal_mask(state).any()


def test_second_player_wins_and_draw() -> None:
    assert GAME.terminal_value(GAME.parse("415293")) == -1.0
    draw = GAME.parse("159287364")
    assert GAME.terminal_value(draw) == 0.0
    assert GAME.terminal_value(GAME.parse("15928736")) is None


def test_occupied_cell_rejected() -> None:
    state = GAME.parse("15")
    with pytest.raises(IllegalMove, match="cell 5 is occupied in position '15'"):
        GAME.apply(state, 4)
    with pytest.raises(BadNotation, match="position '155': cell 5 is occupied at move 3"):
        GAME.parse("155")


def test_moves_after_the_end_rejected() -> None:
    with pytest.raises(BadNotation, match=r"position '142536': the game is over .* at move 6"):
        GAME.parse("142536")
    with pytest.raises(IllegalMove, match="game is over"):
        GAME.apply(GAME.parse("14253"), 5)


@pytest.mark.parametrize(
    ("text", "char", "index"), [("0", "0", 1), ("12a", "a", 3), ("1 2", " ", 2)]
)
def test_bad_characters_rejected(text: str, char: str, index: int) -> None:
    with pytest.raises(
        BadNotation, match=f"position '{text}': bad character '{char}' at move {index}"
    ):
        GAME.parse(text)


def test_out_of_range_action_rejected() -> None:
    with pytest.raises(IllegalMove, match="action 9 is out of range"):
        GAME.apply(GAME.initial(), 9)


def test_encoding_is_from_the_movers_view() -> None:
    state = GAME.parse("19")  # X on 1, O on 9; X to move
    planes = GAME.encode(state)
    assert planes[0, 0, 0] == 1.0 and planes[1, 2, 2] == 1.0
    assert planes[0].sum() == 1.0 and planes[1].sum() == 1.0
    assert (planes[2] == 1.0).all()
    assert (GAME.encode(GAME.apply(state, 4))[2] == 0.0).all()


def test_symmetries_are_the_dihedral_group() -> None:
    syms = GAME.symmetries()
    assert syms[0].name == "identity"
    assert (syms[0].actions == np.arange(9)).all()
    images = {tuple(s.actions.tolist()) for s in syms}
    assert len(images) == 8
    assert all(sorted(image) == list(range(9)) for image in images)


@given(games)
def test_notation_round_trip(state: TicTacToeState) -> None:
    assert GAME.parse(GAME.notation(state)) == state


@given(games)
def test_terminal_value_matches_reference(state: TicTacToeState) -> None:
    assert GAME.terminal_value(state) == reference_value(state.moves)
    assert GAME.ply(state) == len(state.moves)
    assert GAME.to_play(state) == len(state.moves) % 2


@given(games, st.sampled_from(range(8)))
def test_symmetry_maps_encoding_and_legal_mask(state: TicTacToeState, index: int) -> None:
    sym = GAME.symmetries()[index]
    image = GAME.parse("".join(str(sym.actions[int(c) - 1] + 1) for c in state.moves))
    assert np.array_equal(GAME.encode(image), sym.planes(GAME.encode(state)))
    mapped = np.zeros(9, dtype=bool)
    mapped[sym.actions] = GAME.legal_mask(state)
    assert np.array_equal(GAME.legal_mask(image), mapped)


@given(st.permutations(list(range(9))))
def test_transpositions_share_a_key(order: list[int]) -> None:
    # X's and O's first two moves swapped among themselves reach the same position.
    first, second = order[:4], [order[2], order[3], order[0], order[1]]
    a, b = play(first), play(second)
    assert GAME.key(a) == GAME.key(b)
    assert np.array_equal(GAME.encode(a), GAME.encode(b))
