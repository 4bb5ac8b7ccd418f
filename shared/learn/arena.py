"""Matches of a candidate A against B: seat rotations from shared random openings.

With P seats, games kP..kP+P-1 share one random opening and put A in seat 0, 1, .., P-1 (for two
players: game 2k has A first, game 2k+1 has B first); B's network plays every other seat. So A
plays each seat equally often over a multiple of P games. A model searches the position of every
game where it is to move in one batched Gumbel search, so a simulation costs one evaluator call
however many games are in flight. Models play the search's own choice with no Gumbel noise, so
given the evaluators a match depends only on its generator.

Results are pairwise (docs/evaluation-nplayer.md): a game of P players gives A one result
against each of its P - 1 opponents, so `MatchOutcome` counts pairs, `pairs_per_game` of them a
game; with two players a pair is a game.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.learn.baselines import Agent
from shared.learn.evaltypes import Evaluator
from shared.learn.games.base import Game, num_players
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
    score_a: float  # +1 A won, 0 a draw, -1 B won (with more players: a copy of B won)
    a_seat: int = 0  # A's player index (to_play); 0 iff a_first


@dataclass(frozen=True)
class MatchOutcome:
    """Pairwise wins, draws and losses from A's view, and every game in order.

    Each game counts `pairs_per_game` (P - 1) pairs, so for two players the counts are games.
    """

    wins_a: int
    draws: int
    wins_b: int
    records: tuple[MatchGame, ...]
    pairs_per_game: int = 1

    @property
    def games(self) -> int:
        return len(self.records)


@dataclass(kw_only=True)
class _Table:
    """A game in progress, with an evaluation cache per side (the sides' networks differ; B's
    seats share B's cache, its evaluations being from the mover's view)."""

    index: int
    a_seat: int
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
    """Play `games` games of A against B, at most `concurrent` at once; raise MatchStopped.

    With P players A takes seat i % P in game i: `games` a multiple of P plays every seat equally.
    """
    _check(games, opening_plies, concurrent)
    seats = num_players(game)
    # Two players draw exactly what they always drew: ceil(games / 2) openings, then the spawns.
    openings = [random_opening(game, opening_plies, rng) for _ in range(-(-games // seats))]
    game_rngs = rng.spawn(games)
    search_rng = rng.spawn(1)[0]
    waiting = [
        _new_table(game, i, i % seats, openings[i // seats], game_rngs[i]) for i in range(games)
    ][::-1]
    tables: list[_Table] = []
    records: list[MatchGame] = []
    while waiting or tables:
        if stop is not None and stop():
            raise MatchStopped(f"stopped with {len(records)} of {games} games played")
        while waiting and len(tables) < concurrent:
            tables.append(waiting.pop())
        _move_all(game, (a, b), tables, search_rng)
        tables = _collect_finished(game, tables, records)
    return outcome_of(records, seats - 1)


def _check(games: int, opening_plies: int, concurrent: int) -> None:
    if games < 1:
        raise ValueError(f"games must be >= 1, got {games}")
    if opening_plies < 0:
        raise ValueError(f"opening_plies must be >= 0, got {opening_plies}")
    if concurrent < 1:
        raise ValueError(f"concurrent must be >= 1, got {concurrent}")


def _new_table(
    game: Game[Any], index: int, a_seat: int, opening: tuple[int, ...], rng: np.random.Generator
) -> _Table:
    state = game.initial()
    for action in opening:
        state = game.apply(state, action)
    return _Table(
        index=index,
        a_seat=a_seat,
        opening_plies=len(opening),
        state=state,
        rng=rng,
        moves=list(opening),
    )


def _side_to_move(game: Game[Any], table: _Table) -> int:
    """0 if A is to move at `table`, 1 if B (in any of its seats) is."""
    return 0 if game.to_play(table.state) == table.a_seat else 1


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
    score_a = _score_a(game, table)
    if score_a is None:
        return None
    return MatchGame(
        index=table.index,
        a_first=table.a_seat == 0,
        opening_plies=table.opening_plies,
        moves=tuple(table.moves),
        score_a=float(score_a),
        a_seat=table.a_seat,
    )


def _score_a(game: Game[Any], table: _Table) -> float | None:
    """A's result (+1, 0, -1) once the game is over, else None."""
    if num_players(game) > 2:
        outcome = game.outcome(table.state)
        return None if outcome is None else outcome[table.a_seat]
    # Two players keep the zero-sum view they always used (older games have no `outcome`).
    value = game.terminal_value(table.state)
    if value is None:
        return None
    first_view = value if game.to_play(table.state) == 0 else -value
    return first_view if table.a_seat == 0 else -first_view


def pair_results(score_a: float, opponents: int) -> tuple[int, int, int]:
    """A's (wins, draws, losses) against each of `opponents` in one game it scored `score_a`.

    A winner beats everyone; a loser loses to the winner and draws with the other losers; a
    draw is a draw with everyone.
    """
    if score_a > 0:
        return opponents, 0, 0
    if score_a < 0:
        return 0, opponents - 1, 1
    return 0, opponents, 0


def outcome_of(records: list[MatchGame], pairs_per_game: int = 1) -> MatchOutcome:
    """The pairwise tally of `records` (games of `pairs_per_game` + 1 players), in game order."""
    ordered = tuple(sorted(records, key=lambda r: r.index))
    wins = draws = losses = 0
    for record in ordered:
        w, d, lo = pair_results(record.score_a, pairs_per_game)
        wins, draws, losses = wins + w, draws + d, losses + lo
    return MatchOutcome(wins, draws, losses, ordered, pairs_per_game)
