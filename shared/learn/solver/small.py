"""Exact values of small games by memoised negamax, and a check that a player never errs."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.learn.games.base import Game

Chooser = Callable[[Any], int]
BatchChooser = Callable[[list[Any]], list[int]]  # a move for each position, in order


@dataclass
class SmallSolver:
    """Game-theoretic values (for the player to move) of every position of a small game."""

    game: Game[Any]
    memo: dict[Hashable, float] = field(default_factory=dict)

    def value(self, state: Any) -> float:
        key = self.game.key(state)
        if key not in self.memo:
            self.memo[key] = self._solve(state)
        return self.memo[key]

    def _solve(self, state: Any) -> float:
        terminal = self.game.terminal_value(state)
        if terminal is not None:
            return terminal
        return max(-self.value(self.game.apply(state, int(a))) for a in self.legal(state))

    def legal(self, state: Any) -> list[int]:
        return [int(a) for a in np.flatnonzero(self.game.legal_mask(state))]

    def keeps_value(self, state: Any, action: int) -> bool:
        return -self.value(self.game.apply(state, action)) == self.value(state)


@dataclass(frozen=True)
class PerfectPlayReport:
    positions: int
    mistakes: list[str]

    @property
    def perfect(self) -> bool:
        return not self.mistakes


def check_perfect_play(game: Game[Any], choose: Chooser) -> PerfectPlayReport:
    """Every position reachable with `choose` to move (as either player, against every reply):
    does its move keep the game-theoretic value? Mistakes are listed by position notation."""
    return check_perfect_play_batched(game, lambda states: [choose(s) for s in states])


def check_perfect_play_batched(game: Game[Any], choose_all: BatchChooser) -> PerfectPlayReport:
    """`check_perfect_play` asking for the moves of a whole ply at once (one batched search
    instead of one per position)."""
    solver = SmallSolver(game)
    seen: set[Hashable] = set()
    mistakes: list[str] = []
    for side in (0, 1):
        frontier = [game.initial()]
        while frontier:
            frontier = _next_ply(game, frontier, side, choose_all, solver, seen, mistakes)
    return PerfectPlayReport(len(seen), mistakes)


def _next_ply(
    game: Game[Any],
    states: list[Any],
    side: int,
    choose_all: BatchChooser,
    solver: SmallSolver,
    seen: set[Hashable],
    mistakes: list[str],
) -> list[Any]:
    """The positions one move on from `states`: `side`'s chosen move (each position judged once),
    every reply of the other side."""
    going = [s for s in states if game.terminal_value(s) is None]
    replies = [game.apply(s, a) for s in going if game.to_play(s) != side for a in solver.legal(s)]
    mine = _unseen([s for s in going if game.to_play(s) == side], game, seen)
    for state, action in zip(mine, choose_all(mine) if mine else [], strict=True):
        if not solver.keeps_value(state, action):
            mistakes.append(f"{game.notation(state) or '(start)'}: {game.action_name(action)}")
        replies.append(game.apply(state, action))
    return replies


def _unseen(states: list[Any], game: Game[Any], seen: set[Hashable]) -> list[Any]:
    """`states` not judged before, each once; they are marked judged."""
    fresh: list[Any] = []
    for state in states:
        key = game.key(state)
        if key not in seen:
            seen.add(key)
            fresh.append(state)
    return fresh
