"""Tic-tac-toe on bitmasks: cell `i` (0..8, row-major from the top left) is bit `i`.

Notation is the move string of 1-based cell digits, e.g. "159" (X on 1 and 9, O on 5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from shared.learn.games.base import (
    BadNotation,
    BoolArray,
    FloatArray,
    Game,
    IllegalMove,
    Symmetry,
    finished,
)

CELLS = 9
_FULL = (1 << CELLS) - 1
_ROWS = (0b000000111, 0b000111000, 0b111000000)
_COLUMNS = (0b001001001, 0b010010010, 0b100100100)
_LINES = (*_ROWS, *_COLUMNS, 0b100010001, 0b001010100)


class TicTacToeState(NamedTuple):
    """A position; `mine`/`theirs` are the stones of the player to move and of the other player."""

    mine: int
    theirs: int
    moves: str  # 1-based cell digits played so far
    won: bool  # the player who just moved has three in a row


def _has_line(stones: int) -> bool:
    return any(stones & line == line for line in _LINES)


def _planes_table() -> tuple[FloatArray, ...]:
    table = []
    for bits in range(1 << CELLS):
        plane = np.array([(bits >> i) & 1 for i in range(CELLS)], dtype=np.float32)
        table.append(plane.reshape(3, 3))
    return tuple(table)


def _legal_table() -> tuple[BoolArray, ...]:
    table = []
    for occupied in range(1 << CELLS):
        legal = np.array([not (occupied >> i) & 1 for i in range(CELLS)], dtype=np.bool_)
        legal.flags.writeable = False
        table.append(legal)
    return tuple(table)


_PLANES = _planes_table()
_LEGAL = _legal_table()
_NO_MOVES = _LEGAL[_FULL]


def _dihedral(turns: int, flip: bool) -> Callable[[FloatArray], FloatArray]:
    def planes(x: FloatArray) -> FloatArray:
        y = np.flip(x, axis=-1) if flip else x
        return np.ascontiguousarray(np.rot90(y, turns, axes=(-2, -1)))

    return planes


def _symmetry(turns: int, flip: bool) -> Symmetry:
    planes = _dihedral(turns, flip)
    # image[r, c] is the cell that lands on (r, c), so the image of cell `a` is where `a` appears.
    image = planes(np.arange(CELLS, dtype=np.float32).reshape(3, 3)).ravel()
    actions = np.argsort(image).astype(np.int64)
    name = ("flip_" if flip else "") + ("rot" + str(90 * turns) if turns else "")
    return Symmetry(name=name.rstrip("_") or "identity", planes=planes, actions=actions)


_SYMMETRIES = tuple(_symmetry(turns, flip) for flip in (False, True) for turns in range(4))


class TicTacToe:
    """The `Game` for tic-tac-toe."""

    name = "tictactoe"
    num_players = 2
    num_actions = CELLS
    encoding_shape = (3, 3, 3)

    def initial(self) -> TicTacToeState:
        return TicTacToeState(0, 0, "", False)

    def legal_mask(self, state: TicTacToeState) -> BoolArray:
        """A read-only mask; all False once the game is over."""
        if state.won:
            return _NO_MOVES
        return _LEGAL[state.mine | state.theirs]

    def apply(self, state: TicTacToeState, action: int) -> TicTacToeState:
        mine, theirs, moves, won = state
        if won or not 0 <= action < CELLS or (mine | theirs) >> action & 1:
            reason = _why_illegal(state, action)
            raise IllegalMove(f"{reason} in position {moves!r}")
        stones = mine | 1 << action
        return TicTacToeState(theirs, stones, moves + str(action + 1), _has_line(stones))

    def terminal_value(self, state: TicTacToeState) -> float | None:
        if state.won:
            return -1.0
        if len(state.moves) == CELLS:
            return 0.0
        return None

    def outcome(self, state: TicTacToeState) -> tuple[float, ...] | None:
        if state.won:  # by the player who just moved
            return finished(2, (len(state.moves) - 1) & 1)
        if len(state.moves) == CELLS:
            return finished(2, None)
        return None

    def to_play(self, state: TicTacToeState) -> int:
        return len(state.moves) & 1

    def ply(self, state: TicTacToeState) -> int:
        return len(state.moves)

    def key(self, state: TicTacToeState) -> tuple[int, int]:
        return state.mine, state.theirs

    def encode(self, state: TicTacToeState) -> FloatArray:
        """Planes: the mover's stones, the opponent's stones, all ones if X (first) is to move."""
        out = np.empty(self.encoding_shape, dtype=np.float32)
        out[0] = _PLANES[state.mine]
        out[1] = _PLANES[state.theirs]
        out[2] = 1.0 - (len(state.moves) & 1)
        return out

    def symmetries(self) -> tuple[Symmetry, ...]:
        return _SYMMETRIES

    def notation(self, state: TicTacToeState) -> str:
        return state.moves

    def parse(self, text: str) -> TicTacToeState:
        state = self.initial()
        for index, char in enumerate(text, start=1):
            if not "1" <= char <= "9":
                raise BadNotation(f"position {text!r}: bad character {char!r} at move {index}")
            action = int(char) - 1
            if state.won or (state.mine | state.theirs) >> action & 1:
                reason = _why_illegal(state, action)
                raise BadNotation(f"position {text!r}: {reason} at move {index}")
            state = self.apply(state, action)
        return state

    def action_name(self, action: int) -> str:
        return str(action + 1)


def _why_illegal(state: TicTacToeState, action: int) -> str:
    if state.won:
        return f"the game is over (won by the player who made move {len(state.moves)})"
    if not 0 <= action < CELLS:
        return f"action {action} is out of range 0..{CELLS - 1}"
    return f"cell {action + 1} is occupied"


GAME: Game[TicTacToeState] = TicTacToe()
