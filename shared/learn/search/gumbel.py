"""Gumbel AlphaZero search (Danihelka et al. 2022, "Policy improvement by planning with Gumbel").

Follows mctx's `gumbel_muzero_policy`: Gumbel-top-k root sampling and sequential halving through
`considered_visit_sequence`, completed Q with the mixed value approximation, the monotone
transform sigma(q) = (c_visit + max_b N(b)) * c_scale * q_hat, the improved policy
softmax(logits + sigma(completedQ)) as the training target, and deterministic interior selection
argmax(pi' - N / (1 + sum N)). See docs/search.md for the step-by-step comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from shared.learn.evaltypes import Evaluator
from shared.learn.games.base import BoolArray, FloatArray, Game, num_players
from shared.learn.search import tree as T
from shared.learn.search.engine import (
    Cache,
    SearchOutput,
    SearchStats,
    Steps,
    check_roots,
    drive,
    simulate,
)

_LOW_LOGIT = -1e9
_EPSILON = 1e-8
_TINY = np.finfo(np.float32).tiny


def considered_visit_sequence(max_considered: int, num_simulations: int) -> tuple[int, ...]:
    """The visit count sequential halving considers at each simulation (mctx's schedule)."""
    if max_considered <= 1:
        return tuple(range(num_simulations))
    log2max = math.ceil(math.log2(max_considered))
    sequence: list[int] = []
    visits = [0] * max_considered
    considered = max_considered
    while len(sequence) < num_simulations:
        extra = max(1, num_simulations // (log2max * considered))
        for _ in range(extra):
            sequence.extend(visits[:considered])
            for i in range(considered):
                visits[i] += 1
        considered = max(2, considered // 2)
    return tuple(sequence[:num_simulations])


def considered_visit_table(max_considered: int, num_simulations: int) -> T.Index:
    """(max_considered + 1, num_simulations): row m is the sequence for m considered actions."""
    rows = [considered_visit_sequence(m, num_simulations) for m in range(max_considered + 1)]
    return np.array(rows, dtype=np.intp).reshape(max_considered + 1, num_simulations)


def completed_q(
    q: FloatArray, visits: FloatArray, priors: FloatArray, raw_value: FloatArray
) -> FloatArray:
    """Q (n, A) with unvisited actions set to the mixed value v_mix (n,) of the paper's eq. 33."""
    visited = visits > 0
    sum_visits = visits.sum(axis=1)
    probs = np.where(visited, np.maximum(priors, _TINY), 0.0)
    weighted_q = (probs * q).sum(axis=1) / np.maximum(probs.sum(axis=1), _TINY)
    mixed = (raw_value + sum_visits * weighted_q) / (sum_visits + 1)
    out: FloatArray = np.where(visited, q, mixed[:, None])
    return out


def sigma(
    completed: FloatArray, visits: FloatArray, legal: BoolArray, c_visit: float, c_scale: float
) -> FloatArray:
    """(c_visit + max_b N(b)) * c_scale * q_hat, with q_hat min-max rescaled over legal actions."""
    low = np.where(legal, completed, np.inf).min(axis=1, keepdims=True)
    high = np.where(legal, completed, -np.inf).max(axis=1, keepdims=True)
    q_hat = (completed - low) / np.maximum(high - low, _EPSILON)
    scale = (c_visit + visits.max(axis=1, keepdims=True)) * c_scale
    out: FloatArray = scale * q_hat
    return out


def _softmax(logits: FloatArray) -> FloatArray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def _sigma_completed(
    tree: T.Tree, rows: T.Index, nodes: T.Index, c_visit: float, c_scale: float
) -> tuple[FloatArray, FloatArray]:
    visits = tree.child_visits[rows, nodes]
    legal = tree.legal[rows, nodes]
    done = completed_q(
        tree.child_q[rows, nodes], visits, tree.priors[rows, nodes], tree.raw_values[rows, nodes]
    )
    return sigma(done, visits, legal, c_visit, c_scale), visits


def interior_action(
    tree: T.Tree, rows: T.Index, nodes: T.Index, *, c_visit: float, c_scale: float
) -> T.Index:
    """argmax_a pi'(a) - N(a) / (1 + sum_b N(b)) over legal actions (no noise)."""
    s, visits = _sigma_completed(tree, rows, nodes, c_visit, c_scale)
    improved = _softmax(tree.logits[rows, nodes] + s)
    score = improved - visits / (1 + visits.sum(axis=1, keepdims=True))
    score[~tree.legal[rows, nodes]] = -np.inf
    chosen: T.Index = np.argmax(score, axis=1)
    return chosen


def _root_scores(
    tree: T.Tree, gumbel: FloatArray, considered: FloatArray, c_visit: float, c_scale: float
) -> FloatArray:
    """g + logits + sigma(completedQ), -inf off the actions with `considered` (B, 1) visits."""
    rows, roots = np.arange(tree.batch), np.zeros(tree.batch, dtype=np.intp)
    s, visits = _sigma_completed(tree, rows, roots, c_visit, c_scale)
    logits = tree.logits[:, T.ROOT]
    logits = logits - logits.max(axis=1, keepdims=True)
    score: FloatArray = np.maximum(_LOW_LOGIT, gumbel + logits + s)
    score[(visits != considered) | ~tree.legal[:, T.ROOT]] = -np.inf
    return score


def root_action(
    tree: T.Tree,
    sim: int,
    *,
    gumbel: FloatArray,
    table: T.Index,
    c_visit: float,
    c_scale: float,
) -> T.Index:
    """Sequential halving: the best of the actions whose visit count the schedule considers."""
    num_legal = tree.legal[:, T.ROOT].sum(axis=1)
    considered = table[np.minimum(len(table) - 1, num_legal), sim].astype(np.float32)
    score = _root_scores(tree, gumbel, considered[:, None], c_visit, c_scale)
    chosen: T.Index = np.argmax(score, axis=1)
    return chosen


def gumbel_steps(
    game: Game[Any],
    roots: Sequence[Any],
    caches: Sequence[Cache],
    rng: np.random.Generator,
    *,
    num_simulations: int = 64,
    max_considered: int = 16,
    gumbel_scale: float = 1.0,
    c_visit: float = 50.0,
    c_scale: float = 1.0,
) -> Steps[SearchOutput]:
    """A batched Gumbel search over `roots` as a generator of network batches (see engine)."""
    check_roots(game, roots, num_simulations)
    tree = T.new_tree(list(roots), num_simulations + 1, game.num_actions, num_players(game))
    gumbel = (gumbel_scale * rng.gumbel(size=(len(roots), game.num_actions))).astype(np.float32)
    table = considered_visit_table(max_considered, num_simulations)
    select_root = partial(root_action, gumbel=gumbel, table=table, c_visit=c_visit, c_scale=c_scale)
    interior = partial(interior_action, c_visit=c_visit, c_scale=c_scale)
    stats = yield from simulate(game, tree, caches, num_simulations, select_root, interior)
    return _summarise(tree, gumbel, c_visit, c_scale, stats)


def _summarise(
    tree: T.Tree, gumbel: FloatArray, c_visit: float, c_scale: float, stats: SearchStats
) -> SearchOutput:
    """Play the best most-visited action; the target is softmax(logits + sigma(completedQ))."""
    rows, roots = np.arange(tree.batch), np.zeros(tree.batch, dtype=np.intp)
    visits = tree.child_visits[:, T.ROOT]
    most = visits.max(axis=1, keepdims=True)
    action = np.argmax(_root_scores(tree, gumbel, most, c_visit, c_scale), axis=1)
    q = completed_q(
        tree.child_q[:, T.ROOT], visits, tree.priors[:, T.ROOT], tree.raw_values[:, T.ROOT]
    )
    s = sigma(q, visits, tree.legal[:, T.ROOT], c_visit, c_scale)
    policy = np.where(tree.legal[:, T.ROOT], _softmax(tree.logits[rows, roots] + s), 0.0)
    return SearchOutput(
        action=action,
        policy=policy.astype(np.float32),
        root_value=tree.node_values[:, T.ROOT].copy(),
        visits=visits.copy(),
        q=q,
        stats=stats,
    )


def gumbel_search(
    game: Game[Any],
    roots: Sequence[Any],
    evaluator: Evaluator,
    rng: np.random.Generator,
    *,
    caches: Sequence[Cache] | None = None,
    num_simulations: int = 64,
    max_considered: int = 16,
    gumbel_scale: float = 1.0,
    c_visit: float = 50.0,
    c_scale: float = 1.0,
) -> SearchOutput:
    """Search all `roots` in lockstep, one `evaluator` call per simulation (see gumbel_steps)."""
    steps = gumbel_steps(
        game,
        roots,
        [{} for _ in roots] if caches is None else caches,
        rng,
        num_simulations=num_simulations,
        max_considered=max_considered,
        gumbel_scale=gumbel_scale,
        c_visit=c_visit,
        c_scale=c_scale,
    )
    return drive(steps, evaluator)
