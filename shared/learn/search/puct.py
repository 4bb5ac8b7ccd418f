"""AlphaZero PUCT search (Silver et al. 2018) with Dirichlet noise at the root, for comparison.

score(a) = Q(a) + c(s) * P(a) * sqrt(N(s)) / (1 + N(a)), c(s) = c_init + log((N(s) + c_base + 1)
/ c_base), unvisited Q = 0, N(s) = 1 + simulations through s (mctx's `muzero_action_selection`).
The target is the root visit distribution; the action is the most visited one.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from shared.learn.evaltypes import Evaluator
from shared.learn.games.base import FloatArray, Game, num_players
from shared.learn.search import tree as T
from shared.learn.search.engine import (
    Cache,
    SearchOutput,
    Steps,
    check_roots,
    drive,
    simulate,
)


def puct_scores(
    q: FloatArray,
    visits: FloatArray,
    priors: FloatArray,
    node_visits: FloatArray,
    *,
    c_init: float,
    c_base: float,
) -> FloatArray:
    """(n, A) PUCT scores from Q, N and P (n, A) and the parents' visit counts (n,)."""
    parent = node_visits[:, None]
    explore = c_init + np.log((parent + c_base + 1) / c_base)
    out: FloatArray = q + explore * priors * np.sqrt(parent) / (1 + visits)
    return out


def interior_action(
    tree: T.Tree, rows: T.Index, nodes: T.Index, *, c_init: float, c_base: float
) -> T.Index:
    """argmax of the PUCT score over legal actions."""
    score = puct_scores(
        tree.child_q[rows, nodes],
        tree.child_visits[rows, nodes],
        tree.priors[rows, nodes],
        tree.node_visits[rows, nodes],
        c_init=c_init,
        c_base=c_base,
    )
    score[~tree.legal[rows, nodes]] = -np.inf
    chosen: T.Index = np.argmax(score, axis=1)
    return chosen


def root_priors(tree: T.Tree, noise: FloatArray, epsilon: float) -> FloatArray:
    """The root's priors with Dirichlet noise mixed in: (1 - epsilon) * P + epsilon * noise."""
    out: FloatArray = (1 - epsilon) * tree.priors[:, T.ROOT] + epsilon * noise
    return out


def forced_playouts(priors: FloatArray, visits: FloatArray, k: float) -> FloatArray:
    """KataGo's n_forced(c) = sqrt(k * P(c) * sum of the root's child visits), (B, A)."""
    out: FloatArray = np.sqrt(k * priors * visits.sum(axis=1, keepdims=True))
    return out


def root_action(
    tree: T.Tree,
    sim: int,
    *,
    noise: FloatArray,
    epsilon: float,
    c_init: float,
    c_base: float,
    forced_k: float = 0.0,
) -> T.Index:
    """PUCT at the root with noisy priors; with `forced_k` > 0, a child that has been visited
    but fewer than n_forced times is taken first (forced playouts)."""
    del sim
    priors = root_priors(tree, noise, epsilon)
    visits = tree.child_visits[:, T.ROOT]
    score = puct_scores(
        tree.child_q[:, T.ROOT],
        visits,
        priors,
        tree.node_visits[:, T.ROOT],
        c_init=c_init,
        c_base=c_base,
    )
    if forced_k > 0:
        owed = (visits > 0) & (visits < forced_playouts(priors, visits, forced_k))
        score = np.where(owed, np.inf, score)
    score[~tree.legal[:, T.ROOT]] = -np.inf
    chosen: T.Index = np.argmax(score, axis=1)
    return chosen


def pruned_target(
    q: FloatArray,
    visits: FloatArray,
    priors: FloatArray,
    node_visits: FloatArray,
    *,
    forced_k: float,
    c_init: float,
    c_base: float,
) -> FloatArray:
    """Visits with forced playouts taken back (policy target pruning, KataGo): every child but
    the most visited loses up to n_forced visits, as long as its PUCT score stays below the
    best child's; a child left with a single visit is dropped. (B, A), rows summing to 1."""
    best = np.argmax(visits, axis=1)
    rows = np.arange(len(visits))
    scores = puct_scores(q, visits, priors, node_visits, c_init=c_init, c_base=c_base)
    best_score = scores[rows, best][:, None]
    parent = node_visits[:, None]
    explore = (c_init + np.log((parent + c_base + 1) / c_base)) * priors * np.sqrt(parent)
    gap = np.maximum(best_score - q, 1e-9)
    keep_at_least = np.ceil(explore / gap - 1.0)  # fewer visits would outscore the best child
    forced = forced_playouts(priors, visits, forced_k)
    pruned = np.clip(np.maximum(visits - forced, keep_at_least), 0.0, visits)
    pruned = np.where(pruned <= 1.0, 0.0, pruned)
    pruned[rows, best] = visits[rows, best]
    out: FloatArray = pruned / pruned.sum(axis=1, keepdims=True)
    return out


def dirichlet_noise(
    game: Game[Any], roots: Sequence[Any], rng: np.random.Generator, alpha: float
) -> FloatArray:
    """(B, A) Dirichlet(alpha) noise over each root's legal actions, 0 elsewhere."""
    noise = np.zeros((len(roots), game.num_actions), dtype=np.float32)
    for i, root in enumerate(roots):
        legal = np.flatnonzero(game.legal_mask(root))
        noise[i, legal] = rng.dirichlet(np.full(legal.size, alpha))
    return noise


def puct_steps(
    game: Game[Any],
    roots: Sequence[Any],
    caches: Sequence[Cache],
    rng: np.random.Generator,
    *,
    num_simulations: int = 64,
    dirichlet_alpha: float = 0.3,
    noise_fraction: float = 0.25,
    c_init: float = 1.25,
    c_base: float = 19652.0,
    forced_k: float = 0.0,
) -> Steps[SearchOutput]:
    """A batched PUCT search over `roots` as a generator of network batches (see engine);
    `forced_k` > 0 turns on forced playouts at the root and prunes them from the target."""
    check_roots(game, roots, num_simulations)
    noise = dirichlet_noise(game, roots, rng, dirichlet_alpha)
    tree = T.new_tree(list(roots), num_simulations + 1, game.num_actions, num_players(game))
    select_root = partial(
        root_action,
        noise=noise,
        epsilon=noise_fraction,
        c_init=c_init,
        c_base=c_base,
        forced_k=forced_k,
    )
    interior = partial(interior_action, c_init=c_init, c_base=c_base)
    stats = yield from simulate(game, tree, caches, num_simulations, select_root, interior)
    visits = tree.child_visits[:, T.ROOT].copy()
    policy = visits / visits.sum(axis=1, keepdims=True)
    if forced_k > 0:
        policy = pruned_target(
            tree.child_q[:, T.ROOT],
            visits,
            root_priors(tree, noise, noise_fraction),
            tree.node_visits[:, T.ROOT],
            forced_k=forced_k,
            c_init=c_init,
            c_base=c_base,
        )
    return SearchOutput(
        action=np.argmax(visits + tree.priors[:, T.ROOT] * 1e-3, axis=1),
        policy=policy.astype(visits.dtype),
        root_value=tree.node_values[:, T.ROOT].copy(),
        visits=visits,
        q=tree.child_q[:, T.ROOT].copy(),
        stats=stats,
    )


def puct_search(
    game: Game[Any],
    roots: Sequence[Any],
    evaluator: Evaluator,
    rng: np.random.Generator,
    *,
    caches: Sequence[Cache] | None = None,
    num_simulations: int = 64,
    dirichlet_alpha: float = 0.3,
    noise_fraction: float = 0.25,
    c_init: float = 1.25,
    c_base: float = 19652.0,
    forced_k: float = 0.0,
) -> SearchOutput:
    """Search all `roots` in lockstep with PUCT, one `evaluator` call per simulation."""
    steps = puct_steps(
        game,
        roots,
        [{} for _ in roots] if caches is None else caches,
        rng,
        num_simulations=num_simulations,
        dirichlet_alpha=dirichlet_alpha,
        noise_fraction=noise_fraction,
        c_init=c_init,
        c_base=c_base,
        forced_k=forced_k,
    )
    return drive(steps, evaluator)
