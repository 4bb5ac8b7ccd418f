"""The simulation loop shared by every search, written as a generator of evaluation requests.

A search is a `Steps` generator: it yields a batch (encodings (n, C, H, W), masks (n, A)) that
needs the network and is sent back (priors (n, A), values): values (n,) from the view of the
player to move, or (n, P) in turn order from the mover (see `tree.seat_values`). `drive`
answers with an evaluator in the caller's thread; `drive_pipelined` interleaves several
searches so that one's batch runs on a worker thread (torch releases the GIL) while Python walks
another's trees.

Transpositions: the tree stays a tree (no shared nodes, so visit counts and the Gumbel
schedule stay exact); each game has its own key-indexed cache of network outputs, so a position
reached again by another move order — in this search or a later one of the same game — reuses
its evaluation instead of spending a network call. Caches are never shared between games.

Values are vectors by seat (max^n, see `tree`); what a search returns (root value, Q, targets)
is from the view of the root's player, as before, and `SearchOutput.root_vector` is the root's
mean value by seat.
"""

from __future__ import annotations

from collections.abc import Generator, Hashable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from shared.learn.evaltypes import Evaluator
from shared.learn.games.base import BoolArray, FloatArray, Game
from shared.learn.search import tree as T

EvalRequest = tuple[FloatArray, BoolArray]
EvalReply = tuple[FloatArray, FloatArray]
R = TypeVar("R")
Steps = Generator[EvalRequest, EvalReply, R]
# key -> (priors (A,), legal (A,), value vector by seat (P,))
CacheEntry = tuple[FloatArray, BoolArray, FloatArray]
Cache = dict[Hashable, CacheEntry]
Counts = npt.NDArray[np.int64]


@dataclass(frozen=True)
class GameCounts:
    """Each game's counters over one batched search, (B,) each, updated in place."""

    nn_evals: Counts  # leaves sent to the network
    cache_hits: Counts  # leaves answered from the game's cache
    terminal_visits: Counts  # leaves at a finished game, new or revisited
    max_depth: Counts  # the deepest leaf, in plies from the root

    @classmethod
    def zeros(cls, batch: int) -> GameCounts:
        return cls(*(np.zeros(batch, dtype=np.int64) for _ in range(4)))


@dataclass(frozen=True)
class SearchStats:
    """Counts over one batched search; `per_game` splits them by game."""

    simulations: int
    nn_evals: int
    cache_hits: int
    terminal_visits: int
    max_depth: int
    per_game: GameCounts
    # (B, P) each root's mean value by seat after the last simulation. It rides here because
    # `simulate`, which owns the tree, returns the stats; read it as `SearchOutput.root_vector`.
    root_vector: FloatArray


def _stats(num_simulations: int, per_game: GameCounts, tree: T.Tree) -> SearchStats:
    return SearchStats(
        simulations=num_simulations * len(per_game.nn_evals),
        nn_evals=int(per_game.nn_evals.sum()),
        cache_hits=int(per_game.cache_hits.sum()),
        terminal_visits=int(per_game.terminal_visits.sum()),
        max_depth=int(per_game.max_depth.max()),
        per_game=per_game,
        root_vector=tree.values[:, T.ROOT].copy(),
    )


@dataclass(frozen=True)
class SearchOutput:
    """The result of a batched search over B roots."""

    action: T.Index  # (B,) the action to play
    policy: FloatArray  # (B, A) training target (improved policy), 0 on illegal actions
    root_value: FloatArray  # (B,) mean search value from the view of the root's player
    visits: FloatArray  # (B, A) root visit counts
    q: FloatArray  # (B, A) completed Q at the root (unscaled, in value units)
    stats: SearchStats

    @property
    def root_vector(self) -> FloatArray:
        """(B, P) the root's mean value by seat (`root_value` is its mover's entry)."""
        return self.stats.root_vector


def exact_values(
    game: Game[Any], state: Any, mover: int, value: float, players: int
) -> tuple[float, ...]:
    """The outcome by seat of a finished game whose `terminal_value` is `value`: with two
    players, [v, -v] from the `mover` (exact there, any reward rather than only +-1/0, and all
    that older two-player games define); with more, `game.outcome`."""
    if players == 2:
        return (value, -value) if mover == 0 else (-value, value)
    outcome = game.outcome(state)
    if outcome is None:
        raise ValueError(f"{game.name}: terminal_value but no outcome at {game.notation(state)!r}")
    return outcome


@dataclass(frozen=True)
class _Pending:
    rows: T.Index
    nodes: T.Index
    movers: T.Index
    keys: list[Hashable]
    encodings: FloatArray
    masks: BoolArray


def simulate(
    game: Game[Any],
    tree: T.Tree,
    caches: Sequence[Cache],
    num_simulations: int,
    root_select: T.RootSelect,
    interior: T.InteriorSelect,
) -> Steps[SearchStats]:
    """Evaluate the roots, then run `num_simulations` simulations in every game of `tree`."""
    all_rows = np.arange(tree.batch)
    counts = GameCounts.zeros(tree.batch)
    roots = np.zeros(tree.batch, dtype=np.intp)
    pending = _classify(game, tree, caches, all_rows, roots, counts)
    if pending.rows.size:
        _finish(tree, caches, pending, (yield pending.encodings, pending.masks))
    tree.node_visits[:, T.ROOT] = 1  # the root's own evaluation counts once, as in mctx
    for sim in range(num_simulations):
        leaves = T.descend(tree, sim, root_select, interior)
        np.maximum(counts.max_depth, leaves.depth, out=counts.max_depth)
        fresh = leaves.node == T.NO_CHILD
        counts.terminal_visits[~fresh] += 1  # revisits of terminal nodes
        fresh = np.flatnonzero(fresh)
        nodes = leaves.node.copy()
        nodes[fresh] = T.add_children(tree, fresh, leaves.parent[fresh], leaves.action[fresh])
        _apply_moves(game, tree, fresh, leaves.parent[fresh], leaves.action[fresh])
        pending = _classify(game, tree, caches, fresh, nodes[fresh], counts)
        if pending.rows.size:
            _finish(tree, caches, pending, (yield pending.encodings, pending.masks))
        T.backup(tree, all_rows, nodes)
    return _stats(num_simulations, counts, tree)


def _apply_moves(
    game: Game[Any], tree: T.Tree, rows: T.Index, parent: T.Index, action: T.Index
) -> None:
    for b, p, a in zip(rows.tolist(), parent.tolist(), action.tolist(), strict=True):
        states = tree.states[b]
        states.append(game.apply(states[p], a))


def _classify(
    game: Game[Any],
    tree: T.Tree,
    caches: Sequence[Cache],
    rows: T.Index,
    nodes: T.Index,
    counts: GameCounts,
) -> _Pending:
    """Settle fresh nodes that are terminal or cached; return the rest as a network batch."""
    players = tree.num_players
    term: list[tuple[int, int, int, tuple[float, ...]]] = []
    hit: list[tuple[int, int, int, CacheEntry]] = []
    miss: list[tuple[int, int, int, Hashable]] = []
    encodings = np.empty((rows.size, *game.encoding_shape), dtype=np.float32)
    masks = np.empty((rows.size, game.num_actions), dtype=np.bool_)
    for b, n in zip(rows.tolist(), nodes.tolist(), strict=True):
        state = tree.states[b][n]
        mover = game.to_play(state)
        value = game.terminal_value(state)
        if value is not None:
            term.append((b, n, mover, exact_values(game, state, mover, value, players)))
            continue
        key = game.key(state)
        entry = caches[b].get(key)
        if entry is not None:
            hit.append((b, n, mover, entry))
            continue
        encodings[len(miss)] = game.encode(state)
        masks[len(miss)] = game.legal_mask(state)
        miss.append((b, n, mover, key))
    _settle(tree, term, hit, counts)
    k = len(miss)
    pending = _Pending(
        rows=np.fromiter((m[0] for m in miss), dtype=np.intp, count=k),
        nodes=np.fromiter((m[1] for m in miss), dtype=np.intp, count=k),
        movers=np.fromiter((m[2] for m in miss), dtype=np.intp, count=k),
        keys=[m[3] for m in miss],
        encodings=encodings[:k],
        masks=masks[:k],
    )
    counts.nn_evals[pending.rows] += 1  # a game has at most one leaf per step: no repeated rows
    return pending


def _settle(
    tree: T.Tree,
    term: list[tuple[int, int, int, tuple[float, ...]]],
    hit: list[tuple[int, int, int, CacheEntry]],
    counts: GameCounts,
) -> None:
    if term:
        rows, nodes, movers, exact = zip(*term, strict=True)
        T.set_terminal(
            tree, np.array(rows), np.array(nodes), np.array(exact, np.float32), np.array(movers)
        )
        counts.terminal_visits[np.array(rows)] += 1
    if hit:
        rows, nodes, movers, entries = zip(*hit, strict=True)
        priors = np.stack([e[0] for e in entries])
        legal = np.stack([e[1] for e in entries])
        values = np.stack([e[2] for e in entries])
        T.set_evaluated(
            tree, np.array(rows), np.array(nodes), priors, legal, values, np.array(movers)
        )
        counts.cache_hits[np.array(rows)] += 1


def _finish(tree: T.Tree, caches: Sequence[Cache], pending: _Pending, reply: EvalReply) -> None:
    priors, values = reply
    vectors = T.seat_values(values, pending.movers, tree.num_players)
    T.set_evaluated(
        tree, pending.rows, pending.nodes, priors, pending.masks, vectors, pending.movers
    )
    for i, (b, key) in enumerate(zip(pending.rows.tolist(), pending.keys, strict=True)):
        caches[b][key] = (priors[i], pending.masks[i], vectors[i])


def check_roots(game: Game[Any], roots: Sequence[Any], num_simulations: int) -> None:
    if num_simulations < 1:
        raise ValueError(f"num_simulations must be >= 1, got {num_simulations}")
    if not roots:
        raise ValueError("roots is empty")
    for i, root in enumerate(roots):
        if game.terminal_value(root) is not None:
            raise ValueError(f"roots[{i}] is a finished game ({game.notation(root)!r})")


def drive(steps: Steps[R], evaluator: Evaluator) -> R:
    """Run one search to completion, answering its batches with `evaluator`."""
    try:
        request = next(steps)
        while True:
            request = steps.send(evaluator(*request))
    except StopIteration as done:
        result: R = done.value
        return result


def drive_pipelined(steps: Sequence[Steps[R]], evaluator: Evaluator, executor: Executor) -> list[R]:
    """Run several searches; while `executor` evaluates one's batch, advance the next one."""
    results: dict[int, R] = {}
    futures: dict[int, Future[EvalReply]] = {}
    for i, search in enumerate(steps):
        _advance(i, search, None, evaluator, executor, futures, results)
    while futures:
        for i in list(futures):
            reply = futures.pop(i).result()
            _advance(i, steps[i], reply, evaluator, executor, futures, results)
    return [results[i] for i in range(len(steps))]


def _advance(
    i: int,
    search: Steps[R],
    reply: EvalReply | None,
    evaluator: Evaluator,
    executor: Executor,
    futures: dict[int, Future[EvalReply]],
    results: dict[int, R],
) -> None:
    try:
        request = next(search) if reply is None else search.send(reply)
    except StopIteration as done:
        results[i] = done.value
        return
    futures[i] = executor.submit(evaluator, *request)
