"""Exact Connect Four solver in C (_c4solver.c here); scores in Pascal Pons' convention.

Moves are 1-based column digits from the empty board; a bad character, a full column or a
position whose game is over raises ValueError naming the position.
"""

def solve(moves: str, *, weak: bool = False) -> int:
    """The score for the side to move; with `weak`, only its sign (1, 0 or -1)."""

def move_scores(moves: str, *, weak: bool = False) -> list[int | None]:
    """The score for the side to move of playing each column; None for a full column."""

def nodes() -> int:
    """Positions searched since import or the last `clear()`."""

def clear() -> None:
    """Free the transposition table and reset the node count."""
