"""Self-play: G games in lockstep, one batched network call per search simulation.

Every move step searches the current position of all G games together (split in two halves
that overlap Python tree walks with inference when `pipeline` is on), plays a move in each,
and yields a `GameRecord` for each game that ends; a finished game's slot starts a new game.

Games of 2 to 4 players: a record of more than two also carries the outcome by seat
(`game.outcome`) and each ply's root value by seat (`SearchOutput.root_vector`). Two-player
records are exactly as before (seat fields left at their defaults). Resigning is two-player
only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import msgspec
import numpy as np

from schemas.game import GameRecord, pack_policy
from shared.learn.evaltypes import Evaluator
from shared.learn.games.base import FloatArray, Game, num_players
from shared.learn.search import (
    Cache,
    GameCounts,
    SearchOutput,
    SearchStats,
    Steps,
    drive,
    drive_pipelined,
)
from shared.learn.search.gumbel import gumbel_steps
from shared.learn.search.puct import puct_steps


class SelfPlayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How self-play searches and picks moves.

    For the first `sample_plies` plies a move is sampled from the search's policy target; after
    that it is the search's own choice. A game resigns when the chosen move's Q (mover's view)
    is at most `resign_value`, except in a `resign_disabled_fraction` of games, which play on
    and record who would have resigned (to measure false resigns). Two-player games only:
    `self_play` refuses a `resign_value` for a game of more players.
    """

    concurrent_games: int = 64
    num_simulations: int = 64
    search: Literal["gumbel", "puct"] = "gumbel"
    max_considered: int = 16
    gumbel_scale: float = 1.0
    c_visit: float = 50.0
    c_scale: float = 1.0
    dirichlet_alpha: float = 0.3
    noise_fraction: float = 0.25
    sample_plies: int = 8
    resign_value: float | None = None
    resign_disabled_fraction: float = 0.1
    pipeline: bool = False
    # Playout cap randomisation (KataGo): each move is a full search with this probability,
    # else a cheap one of `cheap_simulations` whose position is played but not trained on.
    full_search_fraction: float = 1.0
    cheap_simulations: int = 16
    # Forced playouts and policy target pruning (KataGo, k = 2 there) for the PUCT root; the
    # Gumbel root needs neither (docs/search.md). 0 is off.
    forced_playouts: float = 0.0
    # Diversity (KataGo's randomised openings): this fraction of games opens with 1 to
    # `random_opening_plies` uniformly random moves. Their positions are still searched and
    # trained on (the targets are the search's), so the net also learns the lopsided positions
    # its own play never reaches. 0 is off.
    random_opening_fraction: float = 0.0
    random_opening_plies: int = 0

    def __post_init__(self) -> None:
        for name in ("concurrent_games", "num_simulations", "max_considered", "cheap_simulations"):
            if getattr(self, name) < 1:
                raise ValueError(f"SelfPlayConfig.{name} must be >= 1")
        if not 0.0 < self.full_search_fraction <= 1.0:
            raise ValueError("SelfPlayConfig.full_search_fraction must be in (0, 1]")
        if self.sample_plies < 0:
            raise ValueError("SelfPlayConfig.sample_plies must be >= 0")
        if not 0.0 <= self.resign_disabled_fraction <= 1.0:
            raise ValueError("SelfPlayConfig.resign_disabled_fraction must be in [0, 1]")
        if not 0.0 <= self.random_opening_fraction <= 1.0:
            raise ValueError("SelfPlayConfig.random_opening_fraction must be in [0, 1]")
        if self.random_opening_plies < 0:
            raise ValueError("SelfPlayConfig.random_opening_plies must be >= 0")


@dataclass
class _Searched:
    """One game's search counters over all its moves (see `GameCounts`)."""

    nn_evals: int = 0
    cache_hits: int = 0
    terminal_visits: int = 0
    max_depth: int = 0

    def add(self, counts: GameCounts, i: int) -> None:
        """Add game `i`'s counts from one search."""
        self.nn_evals += int(counts.nn_evals[i])
        self.cache_hits += int(counts.cache_hits[i])
        self.terminal_visits += int(counts.terminal_visits[i])
        self.max_depth = max(self.max_depth, int(counts.max_depth[i]))


@dataclass
class _Slot:
    """A game in progress: its position, history, and its own evaluation cache."""

    game_id: str
    state: Any
    resign_enabled: bool
    started_at: float
    cache: Cache = field(default_factory=dict)
    moves: list[int] = field(default_factory=list)
    policies: list[FloatArray] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    vectors: list[FloatArray] = field(default_factory=list)  # per ply: root value by seat
    full: list[bool] = field(default_factory=list)  # per ply: searched in full
    full_now: bool = True  # the search of the current move is a full one
    would_resign: int | None = None
    random_plies: int = 0  # this game's first moves are uniformly random
    searched: _Searched = field(default_factory=_Searched)


@dataclass(frozen=True, kw_only=True)
class _Context:
    game: Game[Any]
    config: SelfPlayConfig
    model_sha256: str
    generation: int
    clock: Callable[[], float]
    job_id: str = ""

    @property
    def players(self) -> int:
        return num_players(self.game)


def self_play(
    game: Game[Any],
    evaluator: Evaluator,
    rng: np.random.Generator,
    config: SelfPlayConfig,
    *,
    num_games: int | None = None,
    model_sha256: str = "",
    generation: int = 0,
    job_id: str = "",
    clock: Callable[[], float] = time.time,
    on_search: Callable[[SearchStats], None] = lambda stats: None,
    stop: Callable[[], bool] | None = None,
    limit: Callable[[], int] | None = None,
) -> Iterator[GameRecord]:
    """Yield finished games until `num_games` have finished (or forever), or `stop()` is true.

    `stop` is checked before every move step; unfinished games are then dropped. `limit()`, read
    before each new game starts, caps the games in flight below `concurrent_games` (the memory
    guard lowers it while a job runs): games in flight finish, and no new one starts while
    there are `limit()` or more (never fewer than one in flight).

    Raises ValueError if `config.resign_value` is set for a game of more than two players.
    """
    _check_resign(game, config)
    ctx = _Context(
        game=game,
        config=config,
        model_sha256=model_sha256,
        generation=generation,
        clock=clock,
        job_id=job_id,
    )
    budget = (
        config.concurrent_games if num_games is None else min(num_games, config.concurrent_games)
    )
    slots = [_new_slot(ctx, rng) for _ in range(min(budget, _cap(config, limit)))]
    started = len(slots)
    with ExitStack() as stack:
        executor = stack.enter_context(ThreadPoolExecutor(1)) if config.pipeline else None
        while slots and not (stop is not None and stop()):
            slots, outputs = _search_capped(ctx, slots, evaluator, rng, executor)
            for out in outputs:
                on_search(out.stats)
            slots, finished = _play_all(ctx, slots, outputs, rng)
            for record in finished:
                yield record
                more = num_games is None or started < num_games
                if more and len(slots) < _cap(config, limit):
                    slots.append(_new_slot(ctx, rng))
                    started += 1


def _check_resign(game: Game[Any], config: SelfPlayConfig) -> None:
    """Refuse resigning with more than two players rather than ignore it: a resigner's loss
    does not say who won, so neither its record nor the record check could settle the outcome."""
    players = num_players(game)
    if players > 2 and config.resign_value is not None:
        raise ValueError(
            f"SelfPlayConfig.resign_value must be None for {game.name} ({players} players): "
            "resigning is two-player only"
        )


def _cap(config: SelfPlayConfig, limit: Callable[[], int] | None) -> int:
    """How many games may be in flight now: at least one, so a job always progresses."""
    if limit is None:
        return config.concurrent_games
    return max(1, min(config.concurrent_games, limit()))


def _play_all(
    ctx: _Context, slots: list[_Slot], outputs: list[SearchOutput], rng: np.random.Generator
) -> tuple[list[_Slot], list[GameRecord]]:
    """Play each slot's searched move; return the games still going and the finished records."""
    rows = [(out, i) for out in outputs for i in range(len(out.action))]
    going: list[_Slot] = []
    finished: list[GameRecord] = []
    for slot, (out, i) in zip(slots, rows, strict=True):
        record = _play(ctx, slot, out, i, rng)
        if record is None:
            going.append(slot)
        else:
            finished.append(record)
    return going, finished


def _new_slot(ctx: _Context, rng: np.random.Generator) -> _Slot:
    enabled = ctx.config.resign_value is not None and (
        rng.random() >= ctx.config.resign_disabled_fraction
    )
    slot = _Slot(rng.bytes(8).hex(), ctx.game.initial(), enabled, ctx.clock())
    slot.random_plies = _random_plies(ctx.config, rng)
    return slot


def _random_plies(config: SelfPlayConfig, rng: np.random.Generator) -> int:
    """How many random moves a new game opens with (no draw at all when it is off, so seeded
    runs without it are unchanged)."""
    if config.random_opening_fraction <= 0.0 or config.random_opening_plies <= 0:
        return 0
    if rng.random() >= config.random_opening_fraction:
        return 0
    return int(rng.integers(1, config.random_opening_plies + 1))


def _search_capped(
    ctx: _Context,
    slots: list[_Slot],
    evaluator: Evaluator,
    rng: np.random.Generator,
    executor: Executor | None,
) -> tuple[list[_Slot], list[SearchOutput]]:
    """Search every slot, the full-search ones with the full budget and the rest cheaply;
    returns the slots reordered to match the outputs' rows."""
    fraction = ctx.config.full_search_fraction
    for slot in slots:
        slot.full_now = fraction >= 1.0 or bool(rng.random() < fraction)
    full = [s for s in slots if s.full_now]
    cheap = [s for s in slots if not s.full_now]
    outputs = _search(ctx, full, evaluator, rng, executor) if full else []
    if cheap:
        cheap_ctx = replace(
            ctx,
            config=msgspec.structs.replace(ctx.config, num_simulations=_cheap_sims(ctx)),
        )
        outputs += _search(cheap_ctx, cheap, evaluator, rng, executor)
    return full + cheap, outputs


def _search(
    ctx: _Context,
    slots: Sequence[_Slot],
    evaluator: Evaluator,
    rng: np.random.Generator,
    executor: Executor | None,
) -> list[SearchOutput]:
    """Search every slot's position; two pipelined halves when an executor is given."""
    if executor is None or len(slots) < 2:
        return [drive(_steps(ctx, slots, rng), evaluator)]
    half = (len(slots) + 1) // 2
    halves = [_steps(ctx, slots[:half], rng), _steps(ctx, slots[half:], rng)]
    return drive_pipelined(halves, evaluator, executor)


def _steps(ctx: _Context, slots: Sequence[_Slot], rng: np.random.Generator) -> Steps[SearchOutput]:
    c = ctx.config
    roots = [s.state for s in slots]
    caches = [s.cache for s in slots]
    if c.search == "puct":
        return puct_steps(
            ctx.game,
            roots,
            caches,
            rng,
            num_simulations=c.num_simulations,
            dirichlet_alpha=c.dirichlet_alpha,
            noise_fraction=c.noise_fraction,
            forced_k=c.forced_playouts,
        )
    return gumbel_steps(
        ctx.game,
        roots,
        caches,
        rng,
        num_simulations=c.num_simulations,
        max_considered=c.max_considered,
        gumbel_scale=c.gumbel_scale,
        c_visit=c.c_visit,
        c_scale=c.c_scale,
    )


def _play(
    ctx: _Context, slot: _Slot, out: SearchOutput, i: int, rng: np.random.Generator
) -> GameRecord | None:
    """Play one searched move in `slot`; return the record if the game ended."""
    game, policy = ctx.game, out.policy[i]
    slot.searched.add(out.stats.per_game, i)
    mover = game.to_play(slot.state)
    action = _choose(ctx, slot, out, i, rng)
    resign = ctx.config.resign_value
    if resign is not None and float(out.q[i, action]) <= resign:
        if slot.resign_enabled:
            return _record(ctx, slot, outcome=-1.0 if mover == 0 else 1.0, resigned=True)
        if slot.would_resign is None:
            slot.would_resign = mover
    slot.moves.append(action)
    slot.policies.append(policy)
    slot.values.append(float(out.root_value[i]))
    if ctx.players > 2:
        slot.vectors.append(out.root_vector[i])
    slot.full.append(slot.full_now)
    slot.state = game.apply(slot.state, action)
    return _ended(ctx, slot)


def _ended(ctx: _Context, slot: _Slot) -> GameRecord | None:
    """The record if `slot`'s game is over, else None."""
    game = ctx.game
    value = game.terminal_value(slot.state)
    if value is None:
        return None
    if ctx.players == 2:
        first_view = value if game.to_play(slot.state) == 0 else -value
        return _record(ctx, slot, outcome=first_view, resigned=False)
    outcomes = game.outcome(slot.state)
    if outcomes is None:  # the game's two end tests disagree: a bug in the game, not the record
        raise ValueError(f"{game.name}: terminal_value but no outcome at the end of a game")
    return _record(ctx, slot, outcome=outcomes[0], resigned=False, outcomes=outcomes)


def _choose(ctx: _Context, slot: _Slot, out: SearchOutput, i: int, rng: np.random.Generator) -> int:
    if len(slot.moves) < slot.random_plies:
        return int(rng.choice(np.flatnonzero(ctx.game.legal_mask(slot.state))))
    if len(slot.moves) < ctx.config.sample_plies:
        p = out.policy[i].astype(np.float64)
        return int(rng.choice(len(p), p=p / p.sum()))
    return int(out.action[i])


def _record(
    ctx: _Context,
    slot: _Slot,
    *,
    outcome: float,
    resigned: bool,
    outcomes: Sequence[float] = (),
) -> GameRecord:
    """The finished game's record; `outcomes` (by seat) and the root vectors only for more than
    two players."""
    plies = len(slot.moves)
    policy = np.zeros((plies, ctx.game.num_actions), np.float32)
    if plies:
        policy[:] = slot.policies
    return GameRecord(
        game=ctx.game.name,
        game_id=slot.game_id,
        job_id=ctx.job_id,
        model_sha256=ctx.model_sha256,
        generation=ctx.generation,
        moves=slot.moves,
        policy=pack_policy(policy),
        root_values=slot.values,
        outcome=float(outcome),
        plies=plies,
        num_actions=ctx.game.num_actions,
        search=ctx.config.search,
        sims_per_move=ctx.config.num_simulations,
        resigned=resigned,
        resign_enabled=slot.resign_enabled,
        would_resign=slot.would_resign,
        started_at=slot.started_at,
        seconds=ctx.clock() - slot.started_at,
        nn_evals=slot.searched.nn_evals,
        cache_hits=slot.searched.cache_hits,
        terminal_visits=slot.searched.terminal_visits,
        max_depth=slot.searched.max_depth,
        full_search=[] if all(slot.full) else slot.full,
        cheap_sims=0 if all(slot.full) else _cheap_sims(ctx),
        # Two players leave both lists empty (the schema's defaults), so their records encode
        # exactly as before.
        players=ctx.players,
        outcomes=[float(v) for v in outcomes],
        root_vectors=[float(v) for vector in slot.vectors for v in vector],
    )


def _cheap_sims(ctx: _Context) -> int:
    return min(ctx.config.cheap_simulations, ctx.config.num_simulations)
