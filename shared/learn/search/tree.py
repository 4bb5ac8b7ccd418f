"""A batch of search trees in preallocated numpy arrays, and the walks over them.

Shapes: B games, M = num_simulations + 1 nodes per game (node 0 is the root, each simulation
adds at most one node), A actions, P players (2..4, seats 0..P-1).

Values are max^n vectors: `values[b, n]` (P,) holds, by seat, the running mean of node n's own
(network or exact terminal) value and of every leaf value backed up through it; each node
maximises its own mover's entry. The selection code reads only the mover's view, kept in step:
`node_values[b, n] = values[b, n, movers[b, n]]` and `child_q[b, n, a] = values[b, child,
movers[b, n]]` (the child's value to the player choosing at n). With two players alternating,
this is negamax to the bit: the vectors are [v, -v], and a mean of negated values is the negated
mean. Functions update the arrays in place (numpy); nothing else is shared.
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
    child_q: FloatArray  # (B, M, A) Q(n, a) to the player to move at n
    logits: FloatArray  # (B, M, A) log prior, -inf where illegal
    priors: FloatArray  # (B, M, A) prior probabilities, 0 where illegal
    legal: BoolArray  # (B, M, A)
    node_visits: FloatArray  # (B, M) 1 + simulations through the node
    node_values: FloatArray  # (B, M) values[..., mover]: the mover's view of the mean
    raw_values: FloatArray  # (B, M) raw[..., mover]
    values: FloatArray  # (B, M, P) running mean of the raw vector and backed-up vectors, by seat
    raw: FloatArray  # (B, M, P) network (or exact terminal) value vector, by seat
    movers: Index  # (B, M) the seat to move at the node
    terminal: BoolArray  # (B, M)
    parents: Index  # (B, M)
    parent_actions: Index  # (B, M)
    num_nodes: Index  # (B,)
    states: list[list[Any]]

    @property
    def batch(self) -> int:
        return len(self.num_nodes)

    @property
    def num_players(self) -> int:
        return int(self.values.shape[2])


def new_tree(roots: list[Any], num_nodes: int, num_actions: int, num_players: int = 2) -> Tree:
    """An empty batch of trees whose node 0 holds `roots` (not yet evaluated)."""
    b, m, a, p = len(roots), num_nodes, num_actions, num_players
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
        values=np.zeros((b, m, p), dtype=np.float32),
        raw=np.zeros((b, m, p), dtype=np.float32),
        movers=np.zeros((b, m), dtype=np.intp),
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


def seat_values(values: FloatArray, movers: Index, num_players: int) -> FloatArray:
    """Network values as (n, P) vectors by seat, given the seats to move `movers` (n,).

    `values` is either (n,) from the mover's view (the mover gets v, every other seat
    -v / (P - 1): [v, -v] for two players) or (n, P) in turn order from the mover (entry j is the
    value to the player j seats after the mover).
    """
    values = np.asarray(values, dtype=np.float32)
    n = len(movers)
    if values.ndim == 1:
        others = -values / np.float32(num_players - 1)
        out = np.repeat(others[:, None], num_players, axis=1)
        out[np.arange(n), movers] = values
        return out
    seats = (movers[:, None] + np.arange(num_players)) % num_players
    turned = np.empty_like(values)
    turned[np.arange(n)[:, None], seats] = values
    return turned


def _store(tree: Tree, rows: Index, nodes: Index, values: FloatArray, movers: Index) -> None:
    own = values[np.arange(len(movers)), movers]
    tree.movers[rows, nodes] = movers
    tree.raw[rows, nodes] = values
    tree.values[rows, nodes] = values
    tree.raw_values[rows, nodes] = own
    tree.node_values[rows, nodes] = own


def set_evaluated(
    tree: Tree,
    rows: Index,
    nodes: Index,
    priors: FloatArray,
    legal: BoolArray,
    values: FloatArray,
    movers: Index,
) -> None:
    """Store network outputs for fresh nodes: priors (n, A), legal (n, A), value vectors (n, P)
    by seat (see `seat_values`), and the seats to move (n,)."""
    with np.errstate(divide="ignore"):
        tree.logits[rows, nodes] = np.where(legal, np.log(np.maximum(priors, 1e-30)), -np.inf)
    tree.priors[rows, nodes] = priors
    tree.legal[rows, nodes] = legal
    _store(tree, rows, nodes, values, movers)


def set_terminal(tree: Tree, rows: Index, nodes: Index, values: FloatArray, movers: Index) -> None:
    """Mark fresh nodes as terminal with exact outcome vectors (n, P) by seat (`game.outcome`);
    `movers` (n,) is the seat that would move there."""
    tree.terminal[rows, nodes] = True
    _store(tree, rows, nodes, values, movers)


def backup(tree: Tree, rows: Index, leaf: Index) -> None:
    """Count one visit at each leaf and add its value vector to every ancestor's running mean.

    A leaf's own vector is already set (network, exact terminal outcome, or an earlier mean that
    a terminal revisit leaves unchanged); parents get running means as in mctx's `backward`, with
    no negation: each node's Q is read from its own mover's entry (max^n).
    """
    tree.node_visits[rows, leaf] += 1
    value = tree.values[rows, leaf]
    node = leaf
    path: list[tuple[Index, Index, Index, Index]] = []  # (rows, parent, action, child) per ply
    while rows.size:
        up = node != ROOT
        rows, node, value = rows[up], node[up], value[up]
        parent = tree.parents[rows, node]
        action = tree.parent_actions[rows, node]
        count = tree.node_visits[rows, parent]
        weight = count[:, None]
        tree.values[rows, parent] = (tree.values[rows, parent] * weight + value) / (weight + 1)
        tree.node_visits[rows, parent] = count + 1
        tree.child_visits[rows, parent, action] += 1
        path.append((rows, parent, action, node))
        node = parent
    if path:
        _refresh_views(tree, *(np.concatenate(column) for column in zip(*path, strict=True)))


def _refresh_views(tree: Tree, rows: Index, parent: Index, action: Index, child: Index) -> None:
    """The movers' views of the means just updated, each node reading its own mover's entry."""
    mover = tree.movers[rows, parent]
    tree.node_values[rows, parent] = tree.values[rows, parent, mover]
    tree.child_q[rows, parent, action] = tree.values[rows, child, mover]
