"""The game API: what a board game must provide to be searched, trained and played."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cache
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

S = TypeVar("S")


class IllegalMove(ValueError):
    """An action that is not legal in the given position."""


class BadNotation(ValueError):
    """Text that does not describe a position of the game."""


def num_players(game: object) -> int:
    """A game's player count (2 for games written before it was part of the protocol)."""
    return int(getattr(game, "num_players", 2))


@cache
def finished(num_players: int, winner: int | None) -> tuple[float, ...]:
    """The `outcome` of a finished game: `winner` +1 and the others -1, or 0 for all if None."""
    if winner is None:
        return (0.0,) * num_players
    return tuple(1.0 if player == winner else -1.0 for player in range(num_players))


@dataclass(frozen=True)
class Symmetry:
    """A board symmetry: how it maps encoded planes and how it maps action indices.

    `planes(x)` maps an encoding of shape (..., C, H, W); `actions[a]` is the image of action `a`,
    so a policy `p` maps to `p_sym` with `p_sym[actions] = p`.
    """

    name: str
    planes: Callable[[FloatArray], FloatArray]
    actions: IntArray


class Game(Protocol[S]):
    """A perfect-information game for 2 to 4 players, moving in turn, with a fixed action space.

    Players are indexed 0..num_players-1. States are immutable and hashable. `terminal_value` is
    the two-player, zero-sum view (from the player to move); `outcome` is the view of every player.
    """

    name: str
    num_actions: int
    num_players: int  # 2..4
    encoding_shape: tuple[int, int, int]  # (planes, height, width)

    def initial(self) -> S: ...

    def legal_mask(self, state: S) -> BoolArray:
        """Shape (num_actions,), all False once the game is over; may be shared and read-only."""
        ...

    def apply(self, state: S, action: int) -> S:
        """Return the position after `action`; raise IllegalMove if it is not legal."""
        ...

    def terminal_value(self, state: S) -> float | None:
        """+1/0/-1 for the player to move if the game is over, else None.

        Exact for two players; with more, -1 when anyone has won (the winner just moved).
        """
        ...

    def outcome(self, state: S) -> tuple[float, ...] | None:
        """None while the game goes on, else one value per player index: the winner +1 and every
        other player -1, or 0 for all in a draw."""
        ...

    def to_play(self, state: S) -> int:
        """The index of the player to move, 0..num_players-1 (0 moves first)."""
        ...

    def ply(self, state: S) -> int: ...

    def key(self, state: S) -> Hashable:
        """A transposition key: equal for equal positions reached by different move orders."""
        ...

    def encode(self, state: S) -> FloatArray:
        """Planes of shape `encoding_shape`, from the view of the player to move."""
        ...

    def symmetries(self) -> tuple[Symmetry, ...]:
        """All symmetries of the board, the identity first."""
        ...

    def notation(self, state: S) -> str:
        """Compact text for a position (for Connect Four, the 1-based column-digit move string)."""
        ...

    def parse(self, text: str) -> S:
        """Inverse of `notation`; raise BadNotation naming what is wrong."""
        ...

    def action_name(self, action: int) -> str: ...
