"""Exact Connect Four solver: the win/draw/loss value of every legal move of a position.

Negamax with alpha-beta over values {-1, 0, +1} in the design of Pascal Pons' solver
(blog.gamesolver.org): bitboards from `shared.learn.games.connect4`, only moves that do not hand the
opponent an immediate win, move ordering by the number of threats a move creates (centre first
on ties), and a transposition table of value bounds keyed by `position + mask`.

`move_values` and `scores` use the same design in C (`shared.learn.solver._c4solver`, about 50x
faster) when it is built, as `pip install -e .` does; `Solver` is the pure-Python fallback and
reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.learn.games.base import IllegalMove
from shared.learn.games.connect4 import BOTTOM, CELLS, HEIGHT, WIDTH, Connect4State, aligned

try:
    from shared.learn.solver import _c4solver

    HAVE_C_SOLVER = True
except ImportError:  # not built: `move_values` falls back to the pure-Python Solver
    HAVE_C_SOLVER = False

WIN, DRAW, LOSS = 1, 0, -1

_H1 = HEIGHT + 1
_H2 = HEIGHT + 2
_BOTTOM_ROW = sum(BOTTOM)
_BOARD = _BOTTOM_ROW * ((1 << HEIGHT) - 1)
_CENTRE_FIRST = tuple(sorted(range(WIDTH), key=lambda c: abs(2 * c - (WIDTH - 1))))
_COLUMNS = tuple(((1 << HEIGHT) - 1) << (_H1 * c) for c in range(WIDTH))
_ORDERED_COLUMNS = tuple(_COLUMNS[c] for c in _CENTRE_FIRST)


# Bounds are stored as small ints, which Python never allocates, to keep the table compact.
_BOUNDS = tuple((lower, upper) for lower in (LOSS, DRAW, WIN) for upper in (LOSS, DRAW, WIN))
_CODES = {bounds: code for code, bounds in enumerate(_BOUNDS)}
_UNKNOWN = _CODES[LOSS, WIN]


class SolvedPosition(ValueError):
    """The position is already over, so it has no moves to value."""


class TooHard(RuntimeError):
    """The search reached `Solver.node_limit` before proving a value."""


def _check_open(state: Connect4State) -> None:
    if state.won or len(state.moves) == CELLS:
        raise SolvedPosition(f"position {state.moves!r}: the game is over")


def winning_cells(stones: int, mask: int) -> int:
    """Empty cells (playable or not) where `stones` would complete four in a row."""
    # Unrolled over the four directions: this is where the solver spends most of its time.
    cells = (stones << 1) & (stones << 2) & (stones << 3)  # vertical: three below
    pair = (stones << _H1) & (stones << 2 * _H1)  # horizontal
    cells |= pair & ((stones << 3 * _H1) | (stones >> _H1))
    pair = (stones >> _H1) & (stones >> 2 * _H1)
    cells |= pair & ((stones << _H1) | (stones >> 3 * _H1))
    pair = (stones << HEIGHT) & (stones << 2 * HEIGHT)  # diagonal, down to the right
    cells |= pair & ((stones << 3 * HEIGHT) | (stones >> HEIGHT))
    pair = (stones >> HEIGHT) & (stones >> 2 * HEIGHT)
    cells |= pair & ((stones << HEIGHT) | (stones >> 3 * HEIGHT))
    pair = (stones << _H2) & (stones << 2 * _H2)  # diagonal, up to the right
    cells |= pair & ((stones << 3 * _H2) | (stones >> _H2))
    pair = (stones >> _H2) & (stones >> 2 * _H2)
    cells |= pair & ((stones << _H2) | (stones >> 3 * _H2))
    return cells & (_BOARD ^ mask)


def _safe_moves(position: int, mask: int) -> int:
    """Playable cells after which the opponent cannot win at once (0 if there are none)."""
    playable = (mask + _BOTTOM_ROW) & _BOARD
    threats = winning_cells(position ^ mask, mask)
    forced = playable & threats
    if forced:
        if forced & (forced - 1):
            return 0  # two immediate threats: one can only be blocked
        playable = forced
    return playable & ~(threats >> 1)  # never play directly beneath a threat


def _ordered(position: int, mask: int, moves: int) -> list[int]:
    """The safe moves, those creating the most threats first, then centre first."""
    if not moves & (moves - 1):
        return [moves]
    scored = []
    for rank, column in enumerate(_ORDERED_COLUMNS):
        move = moves & column
        if move:
            threats = winning_cells(position | move, mask | move).bit_count()
            scored.append((-threats, rank, move))
    scored.sort()
    return [move for _, _, move in scored]


@dataclass
class Solver:
    """Keeps its transposition table between calls; `nodes` counts positions searched.

    Raises TooHard once `nodes` exceeds `node_limit`, so a labelling job can skip the rare
    position that would take minutes; the table is cleared when it reaches `max_entries`.
    """

    table: dict[int, int] = field(default_factory=dict)  # key -> code of (lower, upper) bounds
    max_entries: int = 1 << 20
    node_limit: int = 1 << 62
    nodes: int = 0

    def move_values(self, state: Connect4State) -> dict[int, int]:
        """`{action: WIN | DRAW | LOSS}` for every legal action, for the player to move."""
        _check_open(state)
        playable = (state.mask + _BOTTOM_ROW) & _BOARD
        values = {c: self.move_value(state, c) for c in _CENTRE_FIRST if playable & _COLUMNS[c]}
        return dict(sorted(values.items()))

    def move_value(self, state: Connect4State, action: int) -> int:
        """WIN, DRAW or LOSS for the player to move if they play `action`."""
        _check_open(state)
        move = (state.mask + _BOTTOM_ROW) & _COLUMNS[action] if 0 <= action < WIDTH else 0
        if not move:
            raise IllegalMove(f"position {state.moves!r}: column {action + 1} is not playable")
        mask = state.mask | move
        if aligned(state.position | move):
            return WIN
        if len(state.moves) + 1 == CELLS:
            return DRAW
        opponent = state.position ^ state.mask
        if winning_cells(opponent, mask) & (mask + _BOTTOM_ROW) & _BOARD:
            return LOSS  # the opponent wins at once
        try:
            return -self._null_window_value(opponent, mask, len(state.moves) + 1)
        except TooHard as e:
            raise TooHard(f"position {state.moves!r}, column {action + 1}: {e}") from None

    def _null_window_value(self, position: int, mask: int, ply: int) -> int:
        # Two null-window searches prune far more than one search over the whole range.
        if self._negamax(position, mask, ply, LOSS, DRAW) <= LOSS:
            return LOSS
        return WIN if self._negamax(position, mask, ply, DRAW, WIN) >= WIN else DRAW

    def value(self, state: Connect4State) -> int:
        """WIN, DRAW or LOSS for the player to move (LOSS if the last move won)."""
        if state.won:
            return LOSS
        if len(state.moves) == CELLS:
            return DRAW
        best = LOSS
        for column in _CENTRE_FIRST:
            if (state.mask + _BOTTOM_ROW) & _COLUMNS[column]:
                best = max(best, self.move_value(state, column))
                if best == WIN:
                    break
        return best

    def _negamax(self, position: int, mask: int, ply: int, alpha: int, beta: int) -> int:
        """Value for the player to move, who cannot win at once; exact if in (alpha, beta)."""
        self.nodes += 1
        if self.nodes > self.node_limit:
            raise TooHard(f"gave up after {self.node_limit} positions")
        moves = _safe_moves(position, mask)
        if not moves:
            return LOSS
        if ply >= CELLS - 2:
            return DRAW  # neither side can complete a line in the last two cells
        key = position + mask
        lower, upper = _BOUNDS[self.table.get(key, _UNKNOWN)]
        if lower >= beta or lower == upper:
            return lower
        if upper <= alpha:
            return upper
        alpha, beta = max(alpha, lower), min(beta, upper)
        best, opponent = LOSS, position ^ mask
        for move in _ordered(position, mask, moves):
            value = -self._negamax(opponent, mask | move, ply + 1, -beta, -max(alpha, best))
            if value >= beta:
                self._store(key, value, upper)
                return value
            best = max(best, value)
        if best > alpha:
            self._store(key, best, best)
        else:
            self._store(key, lower, min(upper, best))
        return best

    def _store(self, key: int, lower: int, upper: int) -> None:
        if len(self.table) >= self.max_entries:
            self.table.clear()  # crude, but keeps memory bounded on hard positions
        self.table[key] = _CODES[lower, upper]


def move_values(state: Connect4State) -> dict[int, int]:
    """`{action: WIN | DRAW | LOSS}` for every legal action; by the C solver when it is built."""
    _check_open(state)
    if not HAVE_C_SOLVER:
        return Solver().move_values(state)
    values = _c4solver.move_scores(state.moves, weak=True)
    return {action: value for action, value in enumerate(values) if value is not None}


def scores(state: Connect4State) -> dict[int, int]:
    """Pons' score of every legal action (22 - the winner's stones, signed); needs the C solver.

    Raises RuntimeError if `shared.learn.solver._c4solver` is not built.
    """
    _check_open(state)
    if not HAVE_C_SOLVER:
        raise RuntimeError("shared.learn.solver._c4solver is not built: run `pip install -e .`")
    values = _c4solver.move_scores(state.moves)
    return {action: value for action, value in enumerate(values) if value is not None}
