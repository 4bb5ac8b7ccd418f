"""A batch of search trees in preallocated numpy arrays, and the walks over them.

Shapes: B games, M = num_simulations + 1 nodes per game (node 0 is the root, each simulation
adds at most one node), A actions. Values are negamax: `node_values[b, n]` is from the view of
the player to move at node n, and the Q of action a at n is `-node_values[b, child]`, which is
what `child_q` stores. Functions update the arrays in place (numpy); nothing else is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.learn.games.base import BoolArray, FloatArray

Index = npt.NDArray[np.intp]
NO_CHILD = -1
ROOT = 0  # every game's node 0

# (tree, simulation index) -> root actions (B,)
RootSelect = Callable[["Tree", int], Index]
# (tree, batch rows (n,), nodes (n,)) -> actions (n,)
InteriorSelect = Callable[["Tree", Index, Index], Index]


@dataclass
class Tree:
    """Search statistics of B games; `states[b][n]` is the game state at node n of game b."""

    children: Index  # (B, M, A) child node or NO_CHILD
    child_visits: FloatArray  # (B, M, A) N(n, a)
    child_q: FloatArray  # (B, M, A) Q(n, a) from the view of the player to move at n
    logits: FloatArray  # (B, M, A) log prior, -inf where illegal
    priors: FloatArray  # (B, M, A) prior probabilities, 0 where illegal
    legal: BoolArray  # (B, M, A)
    node_visits: FloatArray  # (B, M) 1 + simulations through the node
    node_values: FloatArray  # (B, M) running mean of the raw value and backed-up values
    raw_values: FloatArray  # (B, M) network (or exact terminal) value
    terminal: BoolArray  # (B, M)
    parents: Index  # (B, M)
    parent_actions: Index  # (B, M)
    num_nodes: Index  # (B,)
    states: list[list[Any]]

    @property
    def batch(self) -> int:
        return len(self.num_nodes)


def new_tree(roots: list[Any], num_nodes: int, num_actions: int) -> Tree:
    """An empty batch of trees whose node 0 holds `roots` (not yet evaluated)."""
    b, m, a = len(roots), num_nodes, num_actions
    return Tree(
        children=np.full((b, m, a), NO_CHILD, dtype=np.intp),
        child_visits=np.zeros((b, m, a), dtype=np.float32),
        child_q=np.zeros((b, m, a), dtype=np.float32),
        logits=np.full((b, m, a), -np.inf, dtype=np.float32),
        priors=np.zeros((b, m, a), dtype=np.float32),
        legal=np.zeros((b, m, a), dtype=np.bool_),
        node_visits=np.zeros((b, m), dtype=np.float32),
        node_values=np.zeros((b, m), dtype=np.float32),
        raw_values=np.zeros((b, m), dtype=np.float32),
        terminal=np.zeros((b, m), dtype=np.bool_),
        parents=np.full((b, m), NO_CHILD, dtype=np.intp),
        parent_actions=np.full((b, m), NO_CHILD, dtype=np.intp),
        num_nodes=np.ones(b, dtype=np.intp),
        states=[[root] for root in roots],
    )


@dataclass(frozen=True)
class Leaves:
    """Where one simulation of each game stopped: at `(parent, action)`, reaching `node`.

    `node` is NO_CHILD when the child must be created, else an existing terminal node.
    """

    parent: Index  # (B,)
    action: Index  # (B,)
    node: Index  # (B,)
    depth: Index  # (B,) plies from the root to `node` (or to the node to create)


def descend(tree: Tree, sim: int, root_select: RootSelect, interior: InteriorSelect) -> Leaves:
    """Walk every game from its root to an unexpanded action or a terminal node, all in step."""
    rows = np.arange(tree.batch)
    parent = np.zeros(tree.batch, dtype=np.intp)
    action = root_select(tree, sim)
    node = tree.children[rows, parent, action]
    active = np.flatnonzero(node != NO_CHILD)
    active = active[~tree.terminal[active, node[active]]]
    depth = np.ones(tree.batch, dtype=np.intp)
    while active.size:
        at = node[active]
        chosen = interior(tree, active, at)
        parent[active] = at
        action[active] = chosen
        nxt = tree.children[active, at, chosen]
        node[active] = nxt
        keep = nxt != NO_CHILD
        active, nxt = active[keep], nxt[keep]
        active = active[~tree.terminal[active, nxt]]
        depth[active] += 1
    return Leaves(parent, action, node, depth)


def add_children(tree: Tree, rows: Index, parent: Index, action: Index) -> Index:
    """Allocate a node for `(parent, action)` in each of `rows`; return the new node ids."""
    node = tree.num_nodes[rows].copy()
    tree.num_nodes[rows] += 1
    tree.children[rows, parent, action] = node
    tree.parents[rows, node] = parent
    tree.parent_actions[rows, node] = action
    return node


def set_evaluated(
    tree: Tree, rows: Index, nodes: Index, priors: FloatArray, legal: BoolArray, values: FloatArray
) -> None:
    """Store network outputs for fresh nodes: priors (n, A), legal (n, A), values (n,)."""
    with np.errstate(divide="ignore"):
        tree.logits[rows, nodes] = np.where(legal, np.log(np.maximum(priors, 1e-30)), -np.inf)
    tree.priors[rows, nodes] = priors
    tree.legal[rows, nodes] = legal
    tree.raw_values[rows, nodes] = values
    tree.node_values[rows, nodes] = values


def set_terminal(tree: Tree, rows: Index, nodes: Index, values: FloatArray) -> None:
    """Mark fresh nodes as terminal with exact values (n,) from the mover's view."""
    tree.terminal[rows, nodes] = True
    tree.raw_values[rows, nodes] = values
    tree.node_values[rows, nodes] = values


def backup(tree: Tree, rows: Index, leaf: Index) -> None:
    """Count one visit at each leaf and back its value up to the root, negating per ply.

    A leaf's own value is already set (network, exact terminal value, or an earlier mean that a
    terminal revisit leaves unchanged); parents get running means as in mctx's `backward`.
    """
    tree.node_visits[rows, leaf] += 1
    value = tree.node_values[rows, leaf]
    node = leaf
    while rows.size:
        up = node != ROOT
        rows, node, value = rows[up], node[up], -value[up]
        parent = tree.parents[rows, node]
        action = tree.parent_actions[rows, node]
        count = tree.node_visits[rows, parent]
        mean = (tree.node_values[rows, parent] * count + value) / (count + 1)
        tree.node_values[rows, parent] = mean
        tree.node_visits[rows, parent] = count + 1
        tree.child_q[rows, parent, action] = -tree.node_values[rows, node]
        tree.child_visits[rows, parent, action] += 1
        node = parent
