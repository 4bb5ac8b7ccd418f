"""The m,n,k family: agreement with the built-in games, N-player outcomes, gravity, symmetries."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.learn.games import BadNotation, Game, IllegalMove
from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.mnk import FAMILY, MnkGame, MnkState
from shared.learn.games.tictactoe import GAME as TICTACTOE

Grid = dict[tuple[int, int], int]  # (row from the top, column) -> player index
choices = st.lists(st.integers(0, 1 << 16), max_size=90)
NAMES = sorted(FAMILY)


def legal_actions(game: MnkGame, state: MnkState) -> list[int]:
    return [int(a) for a in np.flatnonzero(game.legal_mask(state))]


def actions_of(game: MnkGame, picks: list[int]) -> list[int]:
    """Turn picks into legal actions (pick i is the i-th legal action, mod their number)."""
    state, actions = game.initial(), list[int]()
    for pick in picks:
        legal = legal_actions(game, state)
        if not legal:
            break
        actions.append(legal[pick % len(legal)])
        state = game.apply(state, actions[-1])
    return actions


def grid_of(game: MnkGame, actions: list[int]) -> Grid:
    """An independent board: stones dropped (or placed) by the rules, not by the game's code."""
    grid: Grid = {}
    for ply, action in enumerate(actions):
        if game.gravity:
            row = game.rows - 1 - sum(1 for _, c in grid if c == action)
            cell = (row, action)
        else:
            cell = divmod(action, game.cols)
        grid[cell] = ply % game.num_players
    return grid


def reference_winner(game: MnkGame, grid: Grid) -> int | None:
    """Slow: look for k in a row from every stone in every direction."""
    for (r, c), player in grid.items():
        for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
            if all(grid.get((r + i * dr, c + i * dc)) == player for i in range(game.k)):
                return player
    return None


def test_family_shapes() -> None:
    expected = {
        "tictactoe-mnk": (9, 2, (2, 3, 3)),
        "connect4-mnk": (7, 2, (2, 6, 7)),
        "tictacmo": (15, 3, (3, 3, 5)),
        "connect3-6x7-3p": (7, 3, (3, 6, 7)),
        "connect3-7x8-4p": (8, 4, (4, 7, 8)),
        "gomoku-9x9": (81, 2, (2, 9, 9)),
    }
    for name, (actions, players, shape) in expected.items():
        game = FAMILY[name]
        assert game.name == name
        assert (game.num_actions, game.num_players, game.encoding_shape) == (
            actions,
            players,
            shape,
        )
        assert game.encode(game.initial()).shape == shape
        assert game.legal_mask(game.initial()).all()
        assert not game.legal_mask(game.initial()).flags.writeable


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rows": 0}, "rows must be at least 1"),
        ({"cols": -1}, "cols must be at least 1"),
        ({"k": 0}, "k must be at least 1"),
        ({"k": 8}, r"k must be at most max\(rows, cols\) = 7"),
        ({"players": 1}, "players must be 2..4"),
        ({"players": 5}, "players must be 2..4"),
        ({"name": ""}, "name must not be empty"),
    ],
)
def test_constructor_validates_fields(fields: dict[str, int | str], message: str) -> None:
    args: dict[str, int | str] = {"name": "x", "rows": 6, "cols": 7, "k": 4, "players": 2}
    args.update(fields)
    with pytest.raises(ValueError, match=message):
        MnkGame(
            str(args["name"]),
            int(args["rows"]),
            int(args["cols"]),
            int(args["k"]),
            gravity=True,
            players=int(args["players"]),
        )


@given(st.permutations(list(range(9))))
def test_tictactoe_agrees_with_the_builtin(order: list[int]) -> None:
    game = FAMILY["tictactoe-mnk"]
    ours, theirs = game.initial(), TICTACTOE.initial()
    for action in order:
        assert np.array_equal(game.legal_mask(ours), TICTACTOE.legal_mask(theirs))
        assert game.terminal_value(ours) == TICTACTOE.terminal_value(theirs)
        assert game.outcome(ours) == TICTACTOE.outcome(theirs)
        assert game.to_play(ours) == TICTACTOE.to_play(theirs)
        assert game.notation(ours) == TICTACTOE.notation(theirs)
        if game.outcome(ours) is not None:
            break
        ours, theirs = game.apply(ours, action), TICTACTOE.apply(theirs, action)
    assert game.outcome(ours) is not None


@given(choices)
def test_connect4_agrees_with_the_builtin(picks: list[int]) -> None:
    game = FAMILY["connect4-mnk"]
    ours, theirs = game.initial(), CONNECT4.initial()
    for action in [*actions_of(game, picks), None]:
        assert np.array_equal(game.legal_mask(ours), CONNECT4.legal_mask(theirs))
        assert game.terminal_value(ours) == CONNECT4.terminal_value(theirs)
        assert game.outcome(ours) == CONNECT4.outcome(theirs)
        assert game.notation(ours) == CONNECT4.notation(theirs)
        # The built-in's first two planes are the mover's and the opponent's stones too.
        assert np.array_equal(game.encode(ours), CONNECT4.encode(theirs)[:2])
        if action is not None:
            ours, theirs = game.apply(ours, action), CONNECT4.apply(theirs, action)


@pytest.mark.parametrize("builtin", [TICTACTOE, CONNECT4], ids=lambda g: g.name)
@given(picks=choices)
def test_builtin_outcome_matches_terminal_value(builtin: Game[Any], picks: list[int]) -> None:
    state = builtin.initial()
    for pick in picks:
        outcome = builtin.outcome(state)
        value = builtin.terminal_value(state)
        assert (outcome is None) == (value is None)
        if outcome is None:
            legal = np.flatnonzero(builtin.legal_mask(state))
            state = builtin.apply(state, int(legal[pick % len(legal)]))
            continue
        assert outcome[builtin.to_play(state)] == value
        assert sum(outcome) == 0.0 and len(outcome) == builtin.num_players == 2
        break


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40)
@given(picks=choices)
def test_random_playouts_follow_the_rules(name: str, picks: list[int]) -> None:
    game = FAMILY[name]
    state, actions = game.initial(), list[int]()
    before = np.ones(game.num_actions, dtype=bool)
    for action in [*actions_of(game, picks), None]:
        grid = grid_of(game, actions)
        winner = reference_winner(game, grid)
        over = winner is not None or len(grid) == game.rows * game.cols
        outcome = game.outcome(state)
        assert (outcome is not None) == over == (game.terminal_value(state) is not None)
        if outcome is not None:
            assert outcome == tuple(
                0.0 if winner is None else 1.0 if p == winner else -1.0
                for p in range(game.num_players)
            )
            assert game.terminal_value(state) == (0.0 if winner is None else -1.0)
            assert not game.legal_mask(state).any()
        assert game.ply(state) == len(actions)
        assert game.to_play(state) == len(actions) % game.num_players
        assert game.parse(game.notation(state)) == state
        # Legal moves only ever shrink: by the cell played, or by a column once it fills up.
        now = game.legal_mask(state)
        assert not (now & ~before).any()
        if actions and not game.gravity and outcome is None:
            assert now.sum() == before.sum() - 1 and not now[actions[-1]]
        before = now
        if action is not None:
            actions.append(action)
            state = game.apply(state, action)


@pytest.mark.parametrize(
    ("moves", "line"),
    [
        ("1,6,10,2,12,15,3", "horizontal"),
        ("1,2,3,6,4,5,11", "vertical"),
        ("1,2,4,7,3,5,13", "diagonal down-right"),
        ("11,1,4,7,2,5,3", "diagonal up-right"),
    ],
)
def test_three_players_lines_in_every_direction(moves: str, line: str) -> None:
    game = FAMILY["tictacmo"]  # cells 1..5 on the top row, 11..15 on the bottom row
    state = game.parse(moves)
    assert game.outcome(state) == (1.0, -1.0, -1.0), line
    assert game.terminal_value(state) == -1.0
    assert not game.legal_mask(state).any()
    before = game.parse(moves.rsplit(",", 1)[0])
    assert game.outcome(before) is None and game.terminal_value(before) is None, line


def test_three_players_third_player_wins() -> None:
    game = FAMILY["tictacmo"]
    state = game.parse("1,2,13,7,9,14,4,6,15")  # the third player takes 13, 14, 15
    assert game.outcome(state) == (-1.0, -1.0, 1.0)
    assert game.to_play(state) == 0


def test_four_players_fourth_player_wins() -> None:
    game = FAMILY["connect3-7x8-4p"]
    moves = "1238" + "4128" + "3458"  # the fourth player stacks column 8; no other line
    assert game.outcome(game.parse(moves[:-1])) is None
    state = game.parse(moves)
    assert game.outcome(state) == (-1.0, -1.0, -1.0, 1.0)
    assert game.terminal_value(state) == -1.0
    assert game.outcome(game.parse("123412341")) == (1.0, -1.0, -1.0, -1.0)


def test_gravity_drops_to_the_lowest_empty_row() -> None:
    game = FAMILY["connect3-6x7-3p"]
    state = game.parse("444")
    planes = game.encode(state)  # player 0 to move again: planes are players 0, 1, 2
    assert planes[:, :, 3].tolist() == [
        [0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 1, 0, 0],
    ]
    assert planes.sum() == 3.0
    after = game.encode(game.parse("4445"))  # player 1 to move: planes are players 1, 2, 0
    assert after[0, 4, 3] == 1.0 and after[1, 3, 3] == 1.0 and after[2, 5, 3] == 1.0
    assert after[2, 5, 4] == 1.0 and after.sum() == 4.0
    assert game.legal_mask(game.parse("444444")).tolist() == [1, 1, 1, 0, 1, 1, 1]


def test_encoding_seats_rotate_with_the_mover() -> None:
    game = FAMILY["tictacmo"]
    planes = game.encode(game.parse("1,2"))  # player 2 to move; plane 1 = player 0, 2 = player 1
    assert planes[0].sum() == 0.0
    assert planes[1, 0, 0] == 1.0 and planes[1].sum() == 1.0
    assert planes[2, 0, 1] == 1.0 and planes[2].sum() == 1.0


def test_symmetry_groups() -> None:
    assert [s.name for s in FAMILY["connect4-mnk"].symmetries()] == ["identity", "mirror"]
    assert len(FAMILY["gomoku-9x9"].symmetries()) == 8
    assert [s.name for s in FAMILY["tictacmo"].symmetries()] == [
        "identity",
        "mirror",
        "flip",
        "rot180",
    ]
    for game in FAMILY.values():
        syms = game.symmetries()
        assert syms[0].name == "identity"
        assert np.array_equal(syms[0].actions, np.arange(game.num_actions))
        images = {tuple(s.actions.tolist()) for s in syms}
        assert len(images) == len(syms)
        assert all(sorted(image) == list(range(game.num_actions)) for image in images)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25)
@given(picks=choices, index=st.integers(0, 7))
def test_symmetries_map_games_consistently(name: str, picks: list[int], index: int) -> None:
    game = FAMILY[name]
    sym = game.symmetries()[index % len(game.symmetries())]
    state, image = game.initial(), game.initial()
    for action in [*actions_of(game, picks), None]:
        assert np.array_equal(game.encode(image), sym.planes(game.encode(state)))
        mapped = np.zeros(game.num_actions, dtype=bool)
        mapped[sym.actions] = game.legal_mask(state)
        assert np.array_equal(game.legal_mask(image), mapped)
        assert game.outcome(image) == game.outcome(state)
        assert game.terminal_value(image) == game.terminal_value(state)
        if action is not None:
            state, image = game.apply(state, action), game.apply(image, int(sym.actions[action]))


def test_notation_forms() -> None:
    gomoku = FAMILY["gomoku-9x9"]
    state = gomoku.parse("41,10,81")
    assert gomoku.notation(state) == "41,10,81"
    assert gomoku.action_name(80) == "81"
    assert gomoku.notation(gomoku.initial()) == "" and gomoku.parse("") == gomoku.initial()
    assert FAMILY["connect3-7x8-4p"].notation(FAMILY["connect3-7x8-4p"].parse("8812")) == "8812"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("gomoku-9x9", "41,,3", "position '41,,3': bad move '' at move 2"),
        ("gomoku-9x9", "41,", "position '41,': bad move '' at move 2"),
        ("gomoku-9x9", "41, 3", "position '41, 3': bad move ' 3' at move 2"),
        ("gomoku-9x9", "0", "position '0': bad move '0' at move 1"),
        ("gomoku-9x9", "07", "position '07': bad move '07' at move 1"),
        ("gomoku-9x9", "5,82", r"position '5,82': move 82 is out of range 1..81 at move 2"),
        ("gomoku-9x9", "5,5", "position '5,5': cell 5 is occupied at move 2"),
        ("tictacmo", "1,6,10,2,12,15,3,4", r"the game is over \(.*move 7\) at move 8"),
        ("connect4-mnk", "448", "position '448': bad character '8' at move 3"),
        ("connect4-mnk", "4444444", "position '4444444': column 4 is full at move 7"),
        ("connect3-7x8-4p", "19", "position '19': bad character '9' at move 2"),
        ("tictactoe-mnk", "1,2", "position '1,2': bad character ',' at move 2"),
    ],
)
def test_bad_notation_names_the_problem(name: str, text: str, message: str) -> None:
    with pytest.raises(BadNotation, match=message):
        FAMILY[name].parse(text)


def test_illegal_moves_rejected() -> None:
    game = FAMILY["tictacmo"]
    with pytest.raises(IllegalMove, match="cell 1 is occupied in position '1'"):
        game.apply(game.parse("1"), 0)
    with pytest.raises(IllegalMove, match=r"action 15 is out of range 0\.\.14"):
        game.apply(game.initial(), 15)
    with pytest.raises(IllegalMove, match="the game is over"):
        game.apply(game.parse("1,6,10,2,12,15,3"), 4)


def test_key_ignores_move_order_and_states_hash() -> None:
    game = FAMILY["tictacmo"]
    a, b = game.parse("1,2,3,4"), game.parse("4,2,3,1")
    assert game.key(a) == game.key(b) and a != b
    assert len({a, b, game.parse("1,2,3,4")}) == 2
