"""Matches between two players: colour-swapped pairs from shared random openings.

Game 2k has player A first and game 2k+1 has B first, both from the same random opening. A model
searches the position of every game where it is to move in one batched Gumbel search, so a
simulation costs one evaluator call however many games are in flight. Models play the search's
own choice with no Gumbel noise, so given the evaluators a match depends only on its generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.learn.baselines import Agent
from shared.learn.evaltypes import Evaluator
from shared.learn.games.base import Game
from shared.learn.search import Cache, drive, gumbel_steps


class MatchStopped(Exception):
    """`stop()` became true before the match ended; the games in flight were dropped."""


@dataclass(frozen=True)
class AgentPlayer:
    """A baseline agent, drawing from its game's own generator."""

    agent: Agent


@dataclass(frozen=True)
class ModelPlayer:
    """A network searched with `sims` simulations per move."""

    evaluator: Evaluator
    sims: int
    max_considered: int = 16

    def __post_init__(self) -> None:
        if self.sims < 1:
            raise ValueError(f"ModelPlayer.sims must be >= 1, got {self.sims}")
        if self.max_considered < 1:
            raise ValueError(f"ModelPlayer.max_considered must be >= 1, got {self.max_considered}")


Player = AgentPlayer | ModelPlayer


@dataclass(frozen=True, kw_only=True)
class MatchGame:
    """One finished game; `moves` starts with the `opening_plies` random opening moves."""

    index: int
    a_first: bool  # A was the first player (to_play 0)
    opening_plies: int
    moves: tuple[int, ...]
    score_a: float  # +1 A won, 0 a draw, -1 B won


@dataclass(frozen=True)
class MatchOutcome:
    """Wins, draws and losses from A's view, and every game in order."""

    wins_a: int
    draws: int
    wins_b: int
    records: tuple[MatchGame, ...]


@dataclass(kw_only=True)
class _Table:
    """A game in progress, with an evaluation cache per side (the sides' networks differ)."""

    index: int
    a_first: bool
    opening_plies: int
    state: Any
    rng: np.random.Generator
    moves: list[int]
    caches: tuple[Cache, Cache] = field(default_factory=lambda: ({}, {}))


def random_opening(game: Game[Any], plies: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Up to `plies` uniformly random moves, never one that ends the game."""
    state, moves = game.initial(), []
    for _ in range(plies):
        legal = np.flatnonzero(game.legal_mask(state)).tolist()
        quiet = [a for a in legal if game.terminal_value(game.apply(state, a)) is None]
        if not quiet:
            break
        action = quiet[int(rng.integers(len(quiet)))]
        state = game.apply(state, action)
        moves.append(action)
    return tuple(moves)


def play_match(
    game: Game[Any],
    a: Player,
    b: Player,
    games: int,
    rng: np.random.Generator,
    *,
    opening_plies: int = 2,
    concurrent: int = 32,
    stop: Callable[[], bool] | None = None,
) -> MatchOutcome:
    """Play `games` games of A against B, at most `concurrent` at once; raise MatchStopped."""
    _check(games, opening_plies, concurrent)
    openings = [random_opening(game, opening_plies, rng) for _ in range((games + 1) // 2)]
    game_rngs = rng.spawn(games)
    search_rng = rng.spawn(1)[0]
    waiting = [_new_table(game, i, openings[i // 2], game_rngs[i]) for i in range(games)][::-1]
    tables: list[_Table] = []
    records: list[MatchGame] = []
    while waiting or tables:
        if stop is not None and stop():
            raise MatchStopped(f"stopped with {len(records)} of {games} games played")
        while waiting and len(tables) < concurrent:
            tables.append(waiting.pop())
        _move_all(game, (a, b), tables, search_rng)
        tables = _collect_finished(game, tables, records)
    return _outcome(records)


def _check(games: int, opening_plies: int, concurrent: int) -> None:
    if games < 1:
        raise ValueError(f"games must be >= 1, got {games}")
    if opening_plies < 0:
        raise ValueError(f"opening_plies must be >= 0, got {opening_plies}")
    if concurrent < 1:
        raise ValueError(f"concurrent must be >= 1, got {concurrent}")


def _new_table(
    game: Game[Any], index: int, opening: tuple[int, ...], rng: np.random.Generator
) -> _Table:
    state = game.initial()
    for action in opening:
        state = game.apply(state, action)
    return _Table(
        index=index,
        a_first=index % 2 == 0,
        opening_plies=len(opening),
        state=state,
        rng=rng,
        moves=list(opening),
    )


def _side_to_move(game: Game[Any], table: _Table) -> int:
    """0 if A is to move at `table`, 1 if B is."""
    first_to_move = game.to_play(table.state) == 0
    return 0 if first_to_move == table.a_first else 1


def _move_all(
    game: Game[Any], players: tuple[Player, Player], tables: list[_Table], rng: np.random.Generator
) -> None:
    """One move in every table: each side chooses for all the tables where it is to move."""
    by_side: tuple[list[_Table], list[_Table]] = ([], [])
    for table in tables:
        by_side[_side_to_move(game, table)].append(table)
    for side, movers in enumerate(by_side):
        if not movers:
            continue
        actions = _choose(game, players[side], side, movers, rng)
        for table, action in zip(movers, actions, strict=True):
            table.state = game.apply(table.state, action)
            table.moves.append(action)


def _choose(
    game: Game[Any], player: Player, side: int, tables: Sequence[_Table], rng: np.random.Generator
) -> list[int]:
    if isinstance(player, AgentPlayer):
        return [player.agent.choose(game, t.state, t.rng) for t in tables]
    steps = gumbel_steps(
        game,
        [t.state for t in tables],
        [t.caches[side] for t in tables],
        rng,
        num_simulations=player.sims,
        max_considered=player.max_considered,
        gumbel_scale=0.0,
    )
    actions: list[int] = drive(steps, player.evaluator).action.tolist()
    return actions


def _collect_finished(
    game: Game[Any], tables: list[_Table], records: list[MatchGame]
) -> list[_Table]:
    """Append the finished games to `records`; return the tables still in play."""
    going = []
    for table in tables:
        record = _result(game, table)
        if record is None:
            going.append(table)
        else:
            records.append(record)
    return going


def _result(game: Game[Any], table: _Table) -> MatchGame | None:
    value = game.terminal_value(table.state)
    if value is None:
        return None
    first_view = value if game.to_play(table.state) == 0 else -value
    score_a = first_view if table.a_first else -first_view
    return MatchGame(
        index=table.index,
        a_first=table.a_first,
        opening_plies=table.opening_plies,
        moves=tuple(table.moves),
        score_a=float(score_a),
    )


def _outcome(records: list[MatchGame]) -> MatchOutcome:
    ordered = tuple(sorted(records, key=lambda r: r.index))
    wins_a = sum(1 for r in ordered if r.score_a > 0)
    wins_b = sum(1 for r in ordered if r.score_a < 0)
    return MatchOutcome(wins_a, len(ordered) - wins_a - wins_b, wins_b, ordered)
