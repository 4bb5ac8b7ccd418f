"""Exact values of small games by memoised negamax, and a check that a player never errs."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.learn.games.base import Game

Chooser = Callable[[Any], int]


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
    solver = SmallSolver(game)
    seen: set[Hashable] = set()
    mistakes: list[str] = []
    for side in (0, 1):
        _walk(game, game.initial(), side, choose, solver, seen, mistakes)
    return PerfectPlayReport(len(seen), mistakes)


def _walk(
    game: Game[Any],
    state: Any,
    side: int,
    choose: Chooser,
    solver: SmallSolver,
    seen: set[Hashable],
    mistakes: list[str],
) -> None:
    if game.terminal_value(state) is not None:
        return
    if game.to_play(state) != side:
        for action in solver.legal(state):
            _walk(game, game.apply(state, action), side, choose, solver, seen, mistakes)
        return
    key = game.key(state)
    if key in seen:
        return
    seen.add(key)
    action = choose(state)
    if not solver.keeps_value(state, action):
        mistakes.append(f"{game.notation(state) or '(start)'}: {game.action_name(action)}")
    _walk(game, game.apply(state, action), side, choose, solver, seen, mistakes)
