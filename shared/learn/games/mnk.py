"""The m,n,k family: k in a row on a rows x cols board for 2 to 4 players, with or without gravity.

Without gravity a move is a cell (row-major from the top left); with gravity (Connect-style) a move
is a column and the stone drops to the lowest empty row. Players move in turn 0, 1, .., N-1; the
first to make k in a row (horizontally, vertically or diagonally) wins; a full board is a draw.

Notation is the move string of 1-based actions: digits as in the built-in games when there are at
most 9 actions ("4453"), else numbers joined by commas ("3,10,7").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import MappingProxyType
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

NO_WINNER = -1
_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))  # (row, column) steps; rows grow downwards
_NUMBER = re.compile(r"[1-9][0-9]*")
Ray = tuple[int, ...]  # cells stepping away from a cell, nearest first


class MnkState(NamedTuple):
    """A position: cell i holds 0 if empty, else 1 + the index of the player whose stone it is."""

    board: bytes  # row-major from the top left
    moves: tuple[int, ...]  # the actions played so far
    winner: int  # the player who made k in a row, else NO_WINNER


@lru_cache(maxsize=1 << 16)
def _empty(cells: bytes) -> BoolArray:
    # Keyed by the cells themselves, so one cache serves every board size and both move kinds.
    mask: BoolArray = np.frombuffer(cells, dtype=np.uint8) == 0
    mask.flags.writeable = False
    return mask


class MnkGame:
    """The `Game` for one member of the m,n,k family."""

    def __init__(
        self, name: str, rows: int, cols: int, k: int, *, gravity: bool, players: int = 2
    ) -> None:
        _validate(name, rows, cols, k, players)
        self.name = name
        self.rows, self.cols, self.k = rows, cols, k
        self.gravity = gravity
        self.num_players = players
        self.num_actions = cols if gravity else rows * cols
        self.encoding_shape = (players, rows, cols)
        self._cells = rows * cols
        self._rays = _rays(rows, cols, k)
        # Gravity: a column's cells from the bottom up, where a dropped stone looks for room.
        self._drops = tuple(tuple(range(c + (rows - 1) * cols, -1, -cols)) for c in range(cols))
        # Seat j of the player to move is player (mover + j) % N; stones are stored as player + 1.
        self._seats = tuple(
            np.array([(m + j) % players + 1 for j in range(players)], np.uint8)[:, None, None]
            for m in range(players)
        )
        self._no_moves = _empty(b"\x01" * self.num_actions)
        self._symmetries = _symmetries(rows, cols, gravity)
        self._digits = self.num_actions <= 9

    def __repr__(self) -> str:
        return (
            f"MnkGame({self.name!r}, rows={self.rows}, cols={self.cols}, k={self.k}, "
            f"gravity={self.gravity}, players={self.num_players})"
        )

    def initial(self) -> MnkState:
        return MnkState(bytes(self._cells), (), NO_WINNER)

    def legal_mask(self, state: MnkState) -> BoolArray:
        """A read-only mask; all False once the game is over."""
        if state.winner != NO_WINNER:
            return self._no_moves
        # With gravity a column is playable exactly while its top cell is empty.
        return _empty(state.board[: self.cols] if self.gravity else state.board)

    def apply(self, state: MnkState, action: int) -> MnkState:
        board, moves, winner = state
        cell = self._target(state, action)
        if cell < 0:
            reason = self._why_illegal(state, action)
            raise IllegalMove(f"{reason} in position {self._text(moves)!r}")
        mover = len(moves) % self.num_players
        board = board[:cell] + bytes((mover + 1,)) + board[cell + 1 :]
        if self._makes_line(board, cell):
            winner = mover
        return MnkState(board, (*moves, action), winner)

    def terminal_value(self, state: MnkState) -> float | None:
        if state.winner != NO_WINNER:
            return -1.0  # the winner just moved, so the player to move is not it
        if len(state.moves) == self._cells:
            return 0.0
        return None

    def outcome(self, state: MnkState) -> tuple[float, ...] | None:
        if state.winner != NO_WINNER:
            return finished(self.num_players, state.winner)
        if len(state.moves) == self._cells:
            return finished(self.num_players, None)
        return None

    def to_play(self, state: MnkState) -> int:
        return len(state.moves) % self.num_players

    def ply(self, state: MnkState) -> int:
        return len(state.moves)

    def key(self, state: MnkState) -> bytes:
        # The board decides the rest: the mover by its stone count, a win by the lines on it.
        return state.board

    def encode(self, state: MnkState) -> FloatArray:
        """Plane j holds the stones of the player j seats after the mover (plane 0: the mover's)."""
        board = np.frombuffer(state.board, dtype=np.uint8).reshape(self.rows, self.cols)
        seats = self._seats[len(state.moves) % self.num_players]
        planes: FloatArray = (board == seats).astype(np.float32)
        return planes

    def symmetries(self) -> tuple[Symmetry, ...]:
        return self._symmetries

    def notation(self, state: MnkState) -> str:
        return self._text(state.moves)

    def parse(self, text: str) -> MnkState:
        state = self.initial()
        for index, token in enumerate(self._tokens(text), start=1):
            action = self._action_of(text, token, index)
            if self._target(state, action) < 0:
                reason = self._why_illegal(state, action)
                raise BadNotation(f"position {text!r}: {reason} at move {index}")
            state = self.apply(state, action)
        return state

    def action_name(self, action: int) -> str:
        return str(action + 1)

    def _target(self, state: MnkState, action: int) -> int:
        """The cell that `action` fills, or -1 if it is not legal."""
        if state.winner != NO_WINNER or not 0 <= action < self.num_actions:
            return -1
        if not self.gravity:
            return action if state.board[action] == 0 else -1
        return next((cell for cell in self._drops[action] if state.board[cell] == 0), -1)

    def _makes_line(self, board: bytes, cell: int) -> bool:
        """Whether the stone on `cell` is part of k in a row (only lines through it can be new)."""
        stone = board[cell]
        for forward, backward in self._rays[cell]:
            run = 1 + _run(board, forward, stone) + _run(board, backward, stone)
            if run >= self.k:
                return True
        return False

    def _text(self, moves: tuple[int, ...]) -> str:
        return ("" if self._digits else ",").join(str(action + 1) for action in moves)

    def _tokens(self, text: str) -> list[str]:
        if self._digits:
            return list(text)
        return text.split(",") if text else []

    def _action_of(self, text: str, token: str, index: int) -> int:
        if self._digits:
            if not "1" <= token <= str(self.num_actions):
                raise BadNotation(f"position {text!r}: bad character {token!r} at move {index}")
        elif not _NUMBER.fullmatch(token):
            raise BadNotation(f"position {text!r}: bad move {token!r} at move {index}")
        elif int(token) > self.num_actions:
            raise BadNotation(
                f"position {text!r}: move {token} is out of range 1..{self.num_actions}"
                f" at move {index}"
            )
        return int(token) - 1

    def _why_illegal(self, state: MnkState, action: int) -> str:
        if state.winner != NO_WINNER:
            return f"the game is over (won by the player who made move {len(state.moves)})"
        if not 0 <= action < self.num_actions:
            return f"action {action} is out of range 0..{self.num_actions - 1}"
        return f"column {action + 1} is full" if self.gravity else f"cell {action + 1} is occupied"


def _validate(name: str, rows: int, cols: int, k: int, players: int) -> None:
    if not name:
        raise ValueError("name must not be empty")
    for field, value in (("rows", rows), ("cols", cols), ("k", k)):
        if value < 1:
            raise ValueError(f"{field} must be at least 1, got {value}")
    if k > max(rows, cols):
        raise ValueError(f"k must be at most max(rows, cols) = {max(rows, cols)}, got {k}")
    if not 2 <= players <= 4:
        raise ValueError(f"players must be 2..4, got {players}")


def _run(board: bytes, ray: Ray, stone: int) -> int:
    """How many cells along `ray` hold `stone` before the first that does not."""
    count = 0
    for cell in ray:
        if board[cell] != stone:
            break
        count += 1
    return count


def _rays(rows: int, cols: int, k: int) -> tuple[tuple[tuple[Ray, Ray], ...], ...]:
    """Per cell, per direction: the k-1 cells (at most) each way, as far as the board goes."""

    def ray(r: int, c: int, dr: int, dc: int) -> Ray:
        steps = ((r + i * dr, c + i * dc) for i in range(1, k))
        return tuple(y * cols + x for y, x in steps if 0 <= y < rows and 0 <= x < cols)

    return tuple(
        tuple((ray(r, c, dr, dc), ray(r, c, -dr, -dc)) for dr, dc in _DIRECTIONS)
        for r in range(rows)
        for c in range(cols)
    )


def _symmetries(rows: int, cols: int, gravity: bool) -> tuple[Symmetry, ...]:
    """Mirror only with gravity (it points down); else the dihedral group of the board's shape."""
    if gravity:
        columns = np.arange(cols, dtype=np.int64)
        return (
            Symmetry("identity", _identity, columns),
            Symmetry("mirror", _transform(0, True, False), columns[::-1].copy()),
        )
    if rows == cols:
        shapes = [(turns, flip, False) for flip in (False, True) for turns in range(4)]
    else:  # a quarter turn would not map the board onto itself
        shapes = [(0, False, False), (0, True, False), (0, False, True), (2, False, False)]
    return tuple(_cell_symmetry(rows, cols, *shape) for shape in shapes)


def _identity(x: FloatArray) -> FloatArray:
    return x


def _transform(turns: int, mirror: bool, flip: bool) -> Callable[[FloatArray], FloatArray]:
    """Mirror left-right, then flip upside down, then turn `turns` quarter turns."""

    def planes(x: FloatArray) -> FloatArray:
        y = np.flip(x, axis=-1) if mirror else x
        y = np.flip(y, axis=-2) if flip else y
        return np.ascontiguousarray(np.rot90(y, turns, axes=(-2, -1)))

    return planes


def _cell_symmetry(rows: int, cols: int, turns: int, mirror: bool, flip: bool) -> Symmetry:
    planes = _transform(turns, mirror, flip)
    # image[r, c] is the cell that lands on (r, c), so the image of cell `a` is where `a` appears.
    image = planes(np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)).ravel()
    actions = np.argsort(image).astype(np.int64)
    parts = ["mirror"] * mirror + ["flip"] * flip + [f"rot{90 * turns}"] * bool(turns)
    return Symmetry("_".join(parts) or "identity", _identity if not parts else planes, actions)


def _family() -> Mapping[str, MnkGame]:
    games = (
        MnkGame("tictactoe-mnk", 3, 3, 3, gravity=False),
        MnkGame("connect4-mnk", 6, 7, 4, gravity=True),
        MnkGame("tictacmo", 3, 5, 3, gravity=False, players=3),  # Petosa & Balch
        MnkGame("connect3-6x7-3p", 6, 7, 3, gravity=True, players=3),
        MnkGame("connect3-7x8-4p", 7, 8, 3, gravity=True, players=4),
        MnkGame("gomoku-9x9", 9, 9, 5, gravity=False),
    )
    return MappingProxyType({game.name: game for game in games})


# Not in the built-in registry yet: search and training are still two-player only.
FAMILY: Mapping[str, MnkGame] = _family()
_PROTOCOL_CHECK: Game[MnkState] = FAMILY["tictactoe-mnk"]  # mypy proves MnkGame is a Game
