"""Hexapawn (Martin Gardner, 1962): three pawns a side on a 3x3 board.

White (player 0) starts on rank 1 and moves up the board; Black (player 1) starts on rank 3 and
moves down. A pawn steps straight ahead onto an empty square, or diagonally ahead onto an enemy
pawn, capturing it. A player wins by reaching the far rank, or when the opponent has no move
(which includes having no pawns left). There are no draws; with perfect play Black wins.

Squares are named as in chess: files a-c from the left, ranks 1-3 from White's side. Cell `i`
(bit `i` of a bitmask) is row `i // 3`, column `i % 3`, row 0 being rank 3, so an encoded plane
reads like the board printed with White at the bottom. An action is a step between two
neighbouring rows, named from-to ("b1b2", "a1b2"): each names one action whoever makes it, and
each player can only ever make the steps in its own direction. Notation is the moves played,
concatenated: "b1b2a3b2".
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np

from shared.learn.games.base import (
    BadNotation,
    BoolArray,
    FloatArray,
    Game,
    IllegalMove,
    IntArray,
    Symmetry,
    finished,
)

SIZE = 3
CELLS = SIZE * SIZE
WHITE, BLACK = 0, 1
FORWARD = (-1, 1)  # row step of each player's pawns
GOAL_ROW = (0, SIZE - 1)  # the row each player wins on
START = (sum(1 << (SIZE * (SIZE - 1) + c) for c in range(SIZE)), sum(1 << c for c in range(SIZE)))


class Step(NamedTuple):
    """An action: a pawn's step from cell `source` to cell `target`."""

    source: int
    target: int
    player: int  # the only player whose pawns step this way
    capture: bool  # diagonal: onto an enemy pawn


def _steps() -> tuple[Step, ...]:
    steps = []
    for source in range(CELLS):
        row, col = divmod(source, SIZE)
        for player in (WHITE, BLACK):
            for dcol in (-1, 0, 1):
                to_row, to_col = row + FORWARD[player], col + dcol
                if 0 <= to_row < SIZE and 0 <= to_col < SIZE:
                    steps.append(Step(source, to_row * SIZE + to_col, player, dcol != 0))
    return tuple(steps)


STEPS = _steps()
NUM_ACTIONS = len(STEPS)


def square(cell: int) -> str:
    row, col = divmod(cell, SIZE)
    return "abc"[col] + str(SIZE - row)


_NAMES = tuple(square(s.source) + square(s.target) for s in STEPS)
_ACTION_OF = {name: action for action, name in enumerate(_NAMES)}
_BY_PLAYER = tuple(tuple(a for a, s in enumerate(STEPS) if s.player == p) for p in (WHITE, BLACK))


class HexapawnState(NamedTuple):
    """A position: each player's pawns as bitmasks, the moves so far, and whether the player who
    made the last one has won."""

    white: int
    black: int
    moves: str  # the action names played, concatenated (4 characters each)
    won: bool

    @property
    def ply(self) -> int:
        return len(self.moves) // 4


def _pawns(state: HexapawnState, player: int) -> tuple[int, int]:
    """The pawns of `player` and of the other player."""
    return (state.white, state.black) if player == WHITE else (state.black, state.white)


@cache
def _legal(mine: int, theirs: int, player: int) -> BoolArray:
    """The moves of `player` with pawns `mine` against `theirs` (read-only, shared)."""
    legal = np.zeros(NUM_ACTIONS, dtype=np.bool_)
    for action in _BY_PLAYER[player]:
        step = STEPS[action]
        if not mine >> step.source & 1:
            continue
        if step.capture:
            legal[action] = bool(theirs >> step.target & 1)
        else:
            legal[action] = not (mine | theirs) >> step.target & 1
    legal.flags.writeable = False
    return legal


_NO_MOVES = np.zeros(NUM_ACTIONS, dtype=np.bool_)
_NO_MOVES.flags.writeable = False


@cache
def _plane(bits: int) -> FloatArray:
    plane = np.array([(bits >> i) & 1 for i in range(CELLS)], dtype=np.float32)
    return plane.reshape(SIZE, SIZE)


def _mirror_planes(x: FloatArray) -> FloatArray:
    return np.ascontiguousarray(np.flip(x, axis=-1))


def _mirror_cell(cell: int) -> int:
    row, col = divmod(cell, SIZE)
    return row * SIZE + (SIZE - 1 - col)


def _mirror_actions() -> IntArray:
    index = {(s.source, s.target): a for a, s in enumerate(STEPS)}
    image = [index[_mirror_cell(s.source), _mirror_cell(s.target)] for s in STEPS]
    return np.array(image, dtype=np.int64)


# Left-right only: the pawns' direction rules out turning or flipping the board upside down.
_SYMMETRIES = (
    Symmetry("identity", lambda x: x, np.arange(NUM_ACTIONS, dtype=np.int64)),
    Symmetry("mirror", _mirror_planes, _mirror_actions()),
)


class Hexapawn:
    """The `Game` for Hexapawn."""

    name = "hexapawn"
    num_players = 2
    num_actions = NUM_ACTIONS
    encoding_shape = (3, SIZE, SIZE)

    def initial(self) -> HexapawnState:
        return HexapawnState(START[WHITE], START[BLACK], "", False)

    def legal_mask(self, state: HexapawnState) -> BoolArray:
        """A read-only mask; all False once the game is over."""
        if state.won:
            return _NO_MOVES
        player = state.ply & 1
        return _legal(*_pawns(state, player), player)

    def apply(self, state: HexapawnState, action: int) -> HexapawnState:
        if not 0 <= action < NUM_ACTIONS or not self.legal_mask(state)[action]:
            raise IllegalMove(f"{_why_illegal(state, action)} in position {state.moves!r}")
        player = state.ply & 1
        mine, theirs = _pawns(state, player)
        step = STEPS[action]
        mine = mine & ~(1 << step.source) | 1 << step.target
        theirs &= ~(1 << step.target)
        reached = step.target // SIZE == GOAL_ROW[player]
        won = reached or not _legal(theirs, mine, 1 - player).any()
        white, black = (mine, theirs) if player == WHITE else (theirs, mine)
        return HexapawnState(white, black, state.moves + _NAMES[action], won)

    def terminal_value(self, state: HexapawnState) -> float | None:
        return -1.0 if state.won else None  # the player to move has lost; no draws

    def outcome(self, state: HexapawnState) -> tuple[float, ...] | None:
        return finished(2, (state.ply - 1) & 1) if state.won else None

    def to_play(self, state: HexapawnState) -> int:
        return state.ply & 1

    def ply(self, state: HexapawnState) -> int:
        return state.ply

    def key(self, state: HexapawnState) -> tuple[int, int, int]:
        return state.white, state.black, state.ply & 1

    def encode(self, state: HexapawnState) -> FloatArray:
        """Planes: the mover's pawns, the opponent's pawns, all ones if White is to move."""
        player = state.ply & 1
        mine, theirs = _pawns(state, player)
        out = np.empty(self.encoding_shape, dtype=np.float32)
        out[0] = _plane(mine)
        out[1] = _plane(theirs)
        out[2] = 1.0 - player
        return out

    def symmetries(self) -> tuple[Symmetry, ...]:
        return _SYMMETRIES

    def notation(self, state: HexapawnState) -> str:
        return state.moves

    def parse(self, text: str) -> HexapawnState:
        if len(text) % 4:
            raise BadNotation(f"position {text!r}: {len(text)} characters, not 4 per move")
        state = self.initial()
        for index in range(len(text) // 4):
            name = text[4 * index : 4 * index + 4]
            action = _ACTION_OF.get(name)
            if action is None:
                raise BadNotation(f"position {text!r}: move {index + 1} {name!r} is no step")
            if not self.legal_mask(state)[action]:
                reason = _why_illegal(state, action)
                raise BadNotation(f"position {text!r}: {reason} at move {index + 1}")
            state = self.apply(state, action)
        return state

    def action_name(self, action: int) -> str:
        return _NAMES[action]


def _why_illegal(state: HexapawnState, action: int) -> str:
    if state.won:
        return f"the game is over (won by the player who made move {state.ply})"
    if not 0 <= action < NUM_ACTIONS:
        return f"action {action} is out of range 0..{NUM_ACTIONS - 1}"
    step, player = STEPS[action], state.ply & 1
    mine = _pawns(state, player)[0]
    name = _NAMES[action]
    if step.player != player:
        return f"{name} moves the wrong way for {('White', 'Black')[player]}"
    if not mine >> step.source & 1:
        return f"{name}: no pawn of the mover on {square(step.source)}"
    if step.capture:
        return f"{name}: a diagonal step needs an enemy pawn on {square(step.target)}"
    return f"{name}: {square(step.target)} is occupied"


GAME: Game[HexapawnState] = Hexapawn()
