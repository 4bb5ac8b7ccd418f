"""Connect Four on bitboards (7 columns x 6 rows).

Column `c` holds bits `7c .. 7c+5`, bottom to top; bit `7c+6` is an always-empty sentinel, so a
shift never carries a stone from one column into the next and a win is four shift-and-ands.
`position` holds the stones of the player to move and `mask` all stones, as in Pascal Pons'
solver. Notation is the usual 1-based column-digit move string, e.g. "4453".
"""

from __future__ import annotations

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

WIDTH = 7
HEIGHT = 6
_H1 = HEIGHT + 1
CELLS = WIDTH * HEIGHT
BOTTOM = tuple(1 << (_H1 * c) for c in range(WIDTH))
TOP = tuple(1 << (HEIGHT - 1 + _H1 * c) for c in range(WIDTH))
_ALL_TOPS = sum(TOP)
_DIGITS = tuple(str(c + 1) for c in range(WIDTH))


class Connect4State(NamedTuple):
    """A position: bitboards plus the moves that reached it."""

    position: int  # stones of the player to move
    mask: int  # all stones
    moves: str  # 1-based column digits played so far
    won: bool  # the player who just moved has four in a row


def aligned(stones: int) -> bool:
    """Whether a bitboard of one player's stones has four in a row."""
    pairs = stones & (stones >> _H1)  # horizontal
    if pairs & (pairs >> 2 * _H1):
        return True
    pairs = stones & (stones >> HEIGHT)  # diagonal, down to the right
    if pairs & (pairs >> 2 * HEIGHT):
        return True
    pairs = stones & (stones >> (HEIGHT + 2))  # diagonal, up to the right
    if pairs & (pairs >> 2 * (HEIGHT + 2)):
        return True
    pairs = stones & (stones >> 1)  # vertical
    return bool(pairs & (pairs >> 2))


def _legal_table() -> dict[int, BoolArray]:
    # Keyed by `mask & _ALL_TOPS`: which top cells are filled decides which columns are playable.
    table = {}
    for full in range(1 << WIDTH):
        tops = sum(TOP[c] for c in range(WIDTH) if full >> c & 1)
        legal = np.array([not full >> c & 1 for c in range(WIDTH)], dtype=np.bool_)
        legal.flags.writeable = False
        table[tops] = legal
    return table


_LEGAL = _legal_table()
_NO_MOVES = _LEGAL[_ALL_TOPS]
# Bit index of each (plane, row, column), row 0 at the top; plane 1 is stored 64 bits higher.
_CELL_BITS = np.array(
    [
        [[64 * p + _H1 * c + HEIGHT - 1 - r for c in range(WIDTH)] for r in range(HEIGHT)]
        for p in (0, 1)
    ]
)


def _mirror_planes(x: FloatArray) -> FloatArray:
    return np.ascontiguousarray(np.flip(x, axis=-1))


_SYMMETRIES = (
    Symmetry("identity", lambda x: x, np.arange(WIDTH, dtype=np.int64)),
    Symmetry("mirror", _mirror_planes, np.arange(WIDTH - 1, -1, -1, dtype=np.int64)),
)


class Connect4:
    """The `Game` for Connect Four."""

    name = "connect4"
    num_players = 2
    num_actions = WIDTH
    encoding_shape = (3, HEIGHT, WIDTH)

    def initial(self) -> Connect4State:
        return Connect4State(0, 0, "", False)

    def legal_mask(self, state: Connect4State) -> BoolArray:
        """A read-only mask; all False once the game is over."""
        if state.won:
            return _NO_MOVES
        return _LEGAL[state.mask & _ALL_TOPS]

    def apply(self, state: Connect4State, action: int) -> Connect4State:
        position, mask, moves, won = state
        if won or not 0 <= action < WIDTH or mask & TOP[action]:
            raise IllegalMove(f"{_why_illegal(state, action)} in position {moves!r}")
        to_move = position ^ mask  # the opponent moves next
        mask |= mask + BOTTOM[action]
        return Connect4State(to_move, mask, moves + _DIGITS[action], aligned(to_move ^ mask))

    def terminal_value(self, state: Connect4State) -> float | None:
        if state.won:
            return -1.0
        if len(state.moves) == CELLS:
            return 0.0
        return None

    def outcome(self, state: Connect4State) -> tuple[float, ...] | None:
        if state.won:  # by the player who just moved
            return finished(2, (len(state.moves) - 1) & 1)
        if len(state.moves) == CELLS:
            return finished(2, None)
        return None

    def to_play(self, state: Connect4State) -> int:
        return len(state.moves) & 1

    def ply(self, state: Connect4State) -> int:
        return len(state.moves)

    def key(self, state: Connect4State) -> tuple[int, int]:
        return state.position, state.mask

    def encode(self, state: Connect4State) -> FloatArray:
        """Planes: the mover's stones, the opponent's stones, all ones if the first player moves."""
        both = state.position | (state.position ^ state.mask) << 64
        bits = np.unpackbits(
            np.frombuffer(both.to_bytes(16, "little"), np.uint8), bitorder="little"
        )
        out = np.empty(self.encoding_shape, dtype=np.float32)
        out[:2] = bits[_CELL_BITS]
        out[2] = 1.0 - (len(state.moves) & 1)
        return out

    def symmetries(self) -> tuple[Symmetry, ...]:
        return _SYMMETRIES

    def notation(self, state: Connect4State) -> str:
        return state.moves

    def parse(self, text: str) -> Connect4State:
        state = self.initial()
        for index, char in enumerate(text, start=1):
            if not "1" <= char <= _DIGITS[-1]:
                raise BadNotation(f"position {text!r}: bad character {char!r} at move {index}")
            action = int(char) - 1
            if state.won or state.mask & TOP[action]:
                reason = _why_illegal(state, action)
                raise BadNotation(f"position {text!r}: {reason} at move {index}")
            state = self.apply(state, action)
        return state

    def action_name(self, action: int) -> str:
        return _DIGITS[action]


def _why_illegal(state: Connect4State, action: int) -> str:
    if state.won:
        return f"the game is over (won by the player who made move {len(state.moves)})"
    if not 0 <= action < WIDTH:
        return f"action {action} is out of range 0..{WIDTH - 1}"
    return f"column {action + 1} is full"


GAME: Game[Connect4State] = Connect4()
