"""Hexapawn's rules, checked against a second, plain implementation on (row, column) squares,
its mirror symmetry, and its fit with Conclave's self-play, record check and training."""

from __future__ import annotations

from importlib.metadata import entry_points
from itertools import pairwise

import numpy as np
import pytest
from conclave_hexapawn.game import GAME, SIZE, STEPS, HexapawnState
from hypothesis import given
from hypothesis import strategies as st

from shared.learn.evaltypes import uniform_evaluator
from shared.learn.games import BadNotation, IllegalMove, game_source, get_game
from shared.learn.netconfig import NetConfig, TrainSettings
from shared.learn.recordcheck import check_record
from shared.learn.replay import ReplayWindow, positions_of
from shared.learn.selfplay import SelfPlayConfig, self_play
from shared.learn.solver.small import SmallSolver
from shared.learn.training import new_net, train

Board = dict[tuple[int, int], int]  # (row, column) -> player, row 0 = rank 3

picks = st.lists(st.integers(0, 1_000), max_size=12)


def board_of(state: HexapawnState) -> Board:
    board: Board = {}
    for cell in range(SIZE * SIZE):
        for player, pawns in enumerate((state.white, state.black)):
            if pawns >> cell & 1:
                board[divmod(cell, SIZE)] = player
    return board


def reference_moves(board: Board, player: int) -> set[tuple[tuple[int, int], tuple[int, int]]]:
    """The rules as Gardner states them: straight ahead onto empty, diagonally onto the enemy."""
    ahead = -1 if player == 0 else 1
    moves = set()
    for (row, col), owner in board.items():
        if owner != player or not 0 <= row + ahead < SIZE:
            continue
        if (row + ahead, col) not in board:
            moves.add(((row, col), (row + ahead, col)))
        for side in (col - 1, col + 1):
            if board.get((row + ahead, side)) == 1 - player:
                moves.add(((row, col), (row + ahead, side)))
    return moves


def moves_of(state: HexapawnState) -> set[tuple[tuple[int, int], tuple[int, int]]]:
    legal = np.flatnonzero(GAME.legal_mask(state))
    return {(divmod(STEPS[a].source, SIZE), divmod(STEPS[a].target, SIZE)) for a in legal}


def played(choices: list[int]) -> list[HexapawnState]:
    """The positions of a game whose k-th move is legal move number choices[k] (mod count)."""
    states = [GAME.initial()]
    for choice in choices:
        legal = np.flatnonzero(GAME.legal_mask(states[-1]))
        if len(legal) == 0:
            break
        states.append(GAME.apply(states[-1], int(legal[choice % len(legal)])))
    return states


def winner_by_reference(before: Board, after: Board, mover: int) -> bool:
    goal = 0 if mover == 0 else SIZE - 1
    reached = any(row == goal and owner == mover for (row, _), owner in after.items())
    return reached or not reference_moves(after, 1 - mover)


def test_the_opening_position() -> None:
    state = GAME.initial()
    board = board_of(state)
    assert sorted(p for p in board.values()) == [0, 0, 0, 1, 1, 1]
    assert all(row == SIZE - 1 for (row, _), p in board.items() if p == 0)
    assert moves_of(state) == reference_moves(board, 0)
    assert GAME.to_play(state) == 0 and GAME.outcome(state) is None


@given(picks)
def test_legal_moves_and_endings_follow_the_rules(choices: list[int]) -> None:
    states = played(choices)
    for before, after in pairwise(states):
        mover = GAME.to_play(before)
        assert moves_of(before) == reference_moves(board_of(before), mover)
        won = winner_by_reference(board_of(before), board_of(after), mover)
        assert after.won == won
        assert GAME.terminal_value(after) == (-1.0 if won else None)
        if won:
            assert GAME.outcome(after) == tuple(1.0 if p == mover else -1.0 for p in (0, 1))
            assert not GAME.legal_mask(after).any()
        else:
            assert GAME.legal_mask(after).any(), "a player with no move has lost"


@given(st.lists(st.integers(0, 1_000), min_size=40, max_size=40))
def test_every_game_ends_within_seven_plies(choices: list[int]) -> None:
    # A pawn reaching the far rank wins, so each pawn makes at most one move that does not:
    # at most 6 such moves, then the 7th ends it (or a player is stuck sooner).
    final = played(choices)[-1]
    assert GAME.outcome(final) is not None
    assert GAME.ply(final) <= 2 * SIZE + 1


@given(picks)
def test_captures_take_exactly_one_pawn(choices: list[int]) -> None:
    states = played(choices)
    for before, after in pairwise(states):
        step = STEPS[_last(after)]
        counts = [bin(p).count("1") for p in (before.white, before.black)]
        after_counts = [bin(p).count("1") for p in (after.white, after.black)]
        mover = GAME.to_play(before)
        assert after_counts[mover] == counts[mover]
        assert after_counts[1 - mover] == counts[1 - mover] - step.capture


def _last(state: HexapawnState) -> int:
    return [GAME.action_name(a) for a in range(GAME.num_actions)].index(state.moves[-4:])


@given(picks)
def test_notation_round_trips_and_encodes_the_mover_first(choices: list[int]) -> None:
    for state in played(choices):
        assert GAME.parse(GAME.notation(state)) == state
        planes = GAME.encode(state)
        mover = GAME.to_play(state)
        board = board_of(state)
        for (row, col), owner in board.items():
            assert planes[0 if owner == mover else 1, row, col] == 1.0
        assert planes[:2].sum() == len(board)
        assert np.all(planes[2] == (1.0 if mover == 0 else 0.0))


def test_transpositions_share_a_key() -> None:
    one, other = GAME.parse("a1a2c3c2b1b2"), GAME.parse("b1b2c3c2a1a2")
    assert (one.white, one.black) == (other.white, other.black)
    assert GAME.key(one) == GAME.key(other)


def test_symmetries_are_the_identity_then_a_mirror_permutation() -> None:
    identity, mirror = GAME.symmetries()
    assert identity.name == "identity"
    assert np.array_equal(identity.actions, np.arange(GAME.num_actions))
    assert sorted(mirror.actions.tolist()) == list(range(GAME.num_actions))
    assert np.array_equal(mirror.actions[mirror.actions], np.arange(GAME.num_actions))


@given(picks)
def test_the_mirror_maps_positions_and_moves(choices: list[int]) -> None:
    # The opening position is its own mirror image, so mirrored moves play the mirrored game.
    mirror = GAME.symmetries()[1]
    state, image = GAME.initial(), GAME.initial()
    for choice in choices:
        legal = GAME.legal_mask(state)
        assert np.array_equal(GAME.encode(image), mirror.planes(GAME.encode(state)[None])[0])
        assert np.array_equal(GAME.legal_mask(image)[mirror.actions], legal)
        moves = np.flatnonzero(legal)
        if len(moves) == 0:
            break
        action = int(moves[choice % len(moves)])
        state, image = GAME.apply(state, action), GAME.apply(image, int(mirror.actions[action]))
    assert GAME.outcome(state) == GAME.outcome(image)


def test_black_wins_with_perfect_play() -> None:
    """Gardner's result: the second player wins."""
    assert SmallSolver(GAME).value(GAME.initial()) == -1.0


@pytest.mark.parametrize(
    ("moves", "action", "why"),
    [
        ("", "b1b2", None),
        ("", "b2b1", "wrong way"),
        ("", "a1b2", "enemy pawn"),
        ("b1b2", "b3b2", "occupied"),
        ("b1b2", "b1b2", "wrong way"),
        ("b1b2a3a2", "c2c3", "no pawn"),
    ],
)
def test_illegal_moves_are_refused_with_the_reason(
    moves: str, action: str, why: str | None
) -> None:
    state = GAME.parse(moves)
    index = [GAME.action_name(a) for a in range(GAME.num_actions)].index(action)
    if why is None:
        assert GAME.apply(state, index).moves == moves + action
        return
    with pytest.raises(IllegalMove, match=why):
        GAME.apply(state, index)
    with pytest.raises(BadNotation, match=why):
        GAME.parse(moves + action)


@pytest.mark.parametrize("text", ["b1b", "b1b4", "zzzz", "b1b2b2b3b3b4"])
def test_bad_notation_names_the_fault(text: str) -> None:
    with pytest.raises(BadNotation, match="position"):
        GAME.parse(text)


def test_the_installed_entry_point_names_this_game() -> None:
    found = [e for e in entry_points(group="conclave.games") if e.name == GAME.name]
    assert len(found) == 1 and found[0].dist is not None
    assert get_game(GAME.name) is GAME
    assert game_source(GAME.name) == found[0].dist.name


def test_selfplay_records_pass_the_record_check_and_train() -> None:
    config = SelfPlayConfig(concurrent_games=4, num_simulations=8, sample_plies=2)
    rng = np.random.default_rng(0)
    records = list(self_play(GAME, uniform_evaluator, rng, config, num_games=12))
    assert len(records) == 12
    window = ReplayWindow(window_games=100, max_reuse=8)
    for record in records:
        replayed = check_record(GAME, record)
        assert GAME.outcome(replayed.final) is not None
        assert window.add(positions_of(GAME, record))
    net = new_net(GAME, NetConfig(blocks=1, channels=8, value_hidden=8))
    report = train(net, GAME, window, 3, TrainSettings(batch_size=16), rng)
    assert report.steps == 3 and report.skipped == 0
