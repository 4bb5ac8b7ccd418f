"""Reference opponents for gauntlets: `random`, `onestep` and plain UCT `mcts:N`.

Every agent is game-generic and draws all randomness from the generator it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from schemas.jobs import MAX_SIMS
from shared.learn.games.base import Game

S = TypeVar("S")


class BadAgentSpec(ValueError):
    """An agent spec that is not 'random', 'onestep' or 'mcts:N'."""


class NoLegalMove(ValueError):
    """The agent was asked to move in a finished position."""


class Agent(Protocol):
    """Chooses an action for the player to move."""

    @property
    def name(self) -> str: ...

    def choose(self, game: Game[S], state: S, rng: np.random.Generator) -> int: ...


def legal_actions(game: Game[S], state: S) -> list[int]:
    """The legal actions; raise NoLegalMove (naming the position) if there are none."""
    actions = np.flatnonzero(game.legal_mask(state)).tolist()
    if not actions or game.terminal_value(state) is not None:
        raise NoLegalMove(f"position {game.notation(state)!r}: the game is over")
    return actions


def _pick(actions: list[int], rng: np.random.Generator) -> int:
    return actions[int(rng.random() * len(actions))]


@dataclass(frozen=True)
class RandomAgent:
    """Uniformly random legal moves."""

    name: str = "random"

    def choose(self, game: Game[S], state: S, rng: np.random.Generator) -> int:
        return _pick(legal_actions(game, state), rng)


def wins_at_once(game: Game[S], state: S, action: int) -> bool:
    return game.terminal_value(game.apply(state, action)) == -1.0


def opponent_can_win(game: Game[S], state: S) -> bool:
    if game.terminal_value(state) is not None:
        return False
    actions: list[int] = np.flatnonzero(game.legal_mask(state)).tolist()
    return any(wins_at_once(game, state, a) for a in actions)


@dataclass(frozen=True)
class OneStepAgent:
    """Win at once if possible; else avoid moves after which the opponent wins at once; else random.

    Avoiding those moves blocks every single immediate threat (and, in Connect Four, also stops
    the agent from playing directly beneath one).
    """

    name: str = "onestep"

    def choose(self, game: Game[S], state: S, rng: np.random.Generator) -> int:
        actions = legal_actions(game, state)
        winning = [a for a in actions if wins_at_once(game, state, a)]
        if winning:
            return _pick(winning, rng)
        safe = [a for a in actions if not opponent_can_win(game, game.apply(state, a))]
        return _pick(safe or actions, rng)


@dataclass(slots=True)
class _Node(Generic[S]):
    state: S
    terminal: float | None
    untried: list[int]
    children: list[tuple[int, _Node[S]]] = field(default_factory=list)
    visits: int = 0
    total: float = 0.0  # summed results for the player who moved into this node


def _new_node(game: Game[S], state: S, rng: np.random.Generator) -> _Node[S]:
    terminal = game.terminal_value(state)
    untried = [] if terminal is not None else np.flatnonzero(game.legal_mask(state)).tolist()
    rng.shuffle(untried)
    return _Node(state, terminal, untried)


def _select(node: _Node[S], exploration: float) -> _Node[S]:
    log_visits = math.log(node.visits)

    def ucb(child: _Node[S]) -> float:
        return child.total / child.visits + exploration * math.sqrt(log_visits / child.visits)

    return max((child for _, child in node.children), key=ucb)


def rollout(game: Game[S], state: S, rng: np.random.Generator) -> float:
    """Play uniformly random moves to the end; the result for the player to move at `state`."""
    sign = 1.0
    value = game.terminal_value(state)
    while value is None:
        actions = np.flatnonzero(game.legal_mask(state))
        state = game.apply(state, int(actions[int(rng.random() * len(actions))]))
        sign = -sign
        value = game.terminal_value(state)
    return sign * value


def _simulate(game: Game[S], root: _Node[S], rng: np.random.Generator, exploration: float) -> None:
    path, node = [root], root
    while not node.untried and node.children:
        node = _select(node, exploration)
        path.append(node)
    if node.untried:
        action = node.untried.pop()
        child = _new_node(game, game.apply(node.state, action), rng)
        node.children.append((action, child))
        node = child
        path.append(node)
    value = node.terminal if node.terminal is not None else rollout(game, node.state, rng)
    for visited in reversed(path):
        visited.visits += 1
        visited.total -= value  # `value` is for the player to move at `visited`
        value = -value


@dataclass(frozen=True)
class MctsAgent:
    """Plain UCT (Kocsis & Szepesvari 2006), uniformly random rollouts; plays the most visited."""

    simulations: int
    exploration: float = math.sqrt(2.0)

    @property
    def name(self) -> str:
        return f"mcts:{self.simulations}"

    def choose(self, game: Game[S], state: S, rng: np.random.Generator) -> int:
        legal_actions(game, state)  # raises NoLegalMove in a finished position
        root = _new_node(game, state, rng)
        for _ in range(self.simulations):
            _simulate(game, root, rng, self.exploration)
        return max(root.children, key=lambda pair: pair[1].visits)[0]


def make_agent(spec: str) -> Agent:
    """Build an agent from 'random', 'onestep' or 'mcts:N' (N simulations, 1 <= N <= MAX_SIMS:
    a job names its agents, and no job may ask for a search without end)."""
    if spec == "random":
        return RandomAgent()
    if spec == "onestep":
        return OneStepAgent()
    kind, _, count = spec.partition(":")
    digits = count.isascii() and count.isdigit() and len(count) <= len(str(MAX_SIMS))
    if kind == "mcts" and digits and 1 <= int(count) <= MAX_SIMS:
        return MctsAgent(int(count))
    raise BadAgentSpec(
        f"agent spec {spec[:80]!r} is not one of 'random', 'onestep', 'mcts:N' "
        f"(N a whole number from 1 to {MAX_SIMS})"
    )
