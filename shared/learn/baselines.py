"""Reference opponents for gauntlets: `random`, `onestep` and plain UCT `mcts:N`.

Every agent is game-generic, for 2 to 4 players, and draws all randomness from the generator it
is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from schemas.jobs import MAX_SIMS
from shared.learn.games.base import Game, num_players

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


def final_outcome(game: Game[S], state: S, players: int) -> tuple[float, ...] | None:
    """The result by seat once the game is over, else None.

    Two players read `terminal_value` (which every game has, and which the two-player agents
    always read); more read `outcome`.
    """
    if players > 2:
        return game.outcome(state)
    value = game.terminal_value(state)
    if value is None:
        return None
    return (value, -value) if game.to_play(state) == 0 else (-value, value)


def wins_at_once(game: Game[S], state: S, action: int) -> bool:
    """Whether `action` wins the game outright for the player to move at `state`."""
    after = game.apply(state, action)
    if num_players(game) == 2:
        return game.terminal_value(after) == -1.0
    result = game.outcome(after)
    return result is not None and result[game.to_play(state)] > 0


def opponent_can_win(game: Game[S], state: S) -> bool:
    """Whether the player to move at `state` (the next player, after a move) can win at once."""
    if game.terminal_value(state) is not None:
        return False
    actions: list[int] = np.flatnonzero(game.legal_mask(state)).tolist()
    return any(wins_at_once(game, state, a) for a in actions)


@dataclass(frozen=True)
class OneStepAgent:
    """Win at once if possible; else avoid moves after which the next player to move can win at
    once; else random.

    Avoiding those moves blocks every single immediate threat of the next player (and, in
    Connect Four, also stops the agent from playing directly beneath one). With more than two
    players the threats of the players after the next are left to the next player to block.
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
    mover: int  # the player to move here
    result: tuple[float, ...] | None  # by seat, once the game is over
    untried: list[int]
    totals: list[float]  # summed rollout results by seat
    children: list[tuple[int, _Node[S]]] = field(default_factory=list)
    visits: int = 0


def _new_node(game: Game[S], state: S, players: int, rng: np.random.Generator) -> _Node[S]:
    result = final_outcome(game, state, players)
    untried = [] if result is not None else np.flatnonzero(game.legal_mask(state)).tolist()
    rng.shuffle(untried)
    return _Node(state, game.to_play(state), result, untried, [0.0] * players)


def _select(node: _Node[S], exploration: float) -> _Node[S]:
    """UCB1 on the results of the player to move at `node` (max^n: each seat maximises its own)."""
    log_visits = math.log(node.visits)
    seat = node.mover

    def ucb(child: _Node[S]) -> float:
        mean = child.totals[seat] / child.visits
        return mean + exploration * math.sqrt(log_visits / child.visits)

    return max((child for _, child in node.children), key=ucb)


def rollout_outcome(game: Game[S], state: S, rng: np.random.Generator) -> tuple[float, ...]:
    """Play uniformly random moves to the end; the result by seat."""
    players = num_players(game)
    result = final_outcome(game, state, players)
    while result is None:
        actions = np.flatnonzero(game.legal_mask(state))
        state = game.apply(state, int(actions[int(rng.random() * len(actions))]))
        result = final_outcome(game, state, players)
    return result


def rollout(game: Game[S], state: S, rng: np.random.Generator) -> float:
    """Play uniformly random moves to the end; the result for the player to move at `state`."""
    return rollout_outcome(game, state, rng)[game.to_play(state)]


def _simulate(
    game: Game[S], root: _Node[S], rng: np.random.Generator, exploration: float, players: int
) -> None:
    path, node = [root], root
    while not node.untried and node.children:
        node = _select(node, exploration)
        path.append(node)
    if node.untried:
        action = node.untried.pop()
        child = _new_node(game, game.apply(node.state, action), players, rng)
        node.children.append((action, child))
        node = child
        path.append(node)
    result = node.result if node.result is not None else rollout_outcome(game, node.state, rng)
    for visited in path:
        visited.visits += 1
        totals = visited.totals
        for seat, value in enumerate(result):
            totals[seat] += value


@dataclass(frozen=True)
class MctsAgent:
    """Plain UCT (Kocsis & Szepesvari 2006), uniformly random rollouts; plays the most visited.

    Rollouts return the result by seat and every node sums them; selection at a node maximises
    the entry of the player to move there (max^n: Luckhardt & Irani 1986; in UCT, Sturtevant
    2008). For two players that is the usual negamax UCT, random draw for random draw.
    """

    simulations: int
    exploration: float = math.sqrt(2.0)

    @property
    def name(self) -> str:
        return f"mcts:{self.simulations}"

    def choose(self, game: Game[S], state: S, rng: np.random.Generator) -> int:
        legal_actions(game, state)  # raises NoLegalMove in a finished position
        players = num_players(game)
        root = _new_node(game, state, players, rng)
        for _ in range(self.simulations):
            _simulate(game, root, rng, self.exploration, players)
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
