"""Max^n search for 2-4 players: value vectors by seat, backed up without negation; the
two-player path reproduces the negamax search bit for bit (tests/data/search_golden.npz)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.learn.games.base import BoolArray, FloatArray
from shared.learn.games.mnk import FAMILY
from shared.learn.inference import uniform_evaluator
from shared.learn.search import Cache, gumbel_search, puct_search
from shared.learn.search import gumbel as G
from shared.learn.search import puct as P
from shared.learn.search import tree as T
from tests.search_golden import GOLDEN, golden_runs

TICTACMO = FAMILY["tictacmo"]  # 3 rows x 5 columns, 3 in a row, 3 players
CONNECT3_4P = FAMILY["connect3-7x8-4p"]


def f32(*values: float) -> FloatArray:
    return np.array(values, dtype=np.float32)


def idx(*values: int) -> T.Index:
    return np.array(values, dtype=np.intp)


def three_player_tree(root_value: FloatArray) -> T.Tree:
    """A root (seat 0 to move, 2 legal actions, equal priors) evaluated with `root_value`."""
    tree = T.new_tree([None], num_nodes=6, num_actions=2, num_players=3)
    tree.states[0].extend([None] * 5)
    evaluate(tree, 0, root_value, mover=0)
    tree.node_visits[:, T.ROOT] = 1  # as the engine does
    return tree


def evaluate(tree: T.Tree, node: int, value: FloatArray, mover: int) -> None:
    priors, legal = np.full((1, 2), 0.5, np.float32), np.ones((1, 2), np.bool_)
    T.set_evaluated(tree, idx(0), idx(node), priors, legal, value[None], idx(mover))


def expand(tree: T.Tree, parent: int, action: int, value: FloatArray, mover: int) -> int:
    """Add and evaluate the child at (parent, action), then back its value up."""
    node = int(T.add_children(tree, idx(0), idx(parent), idx(action))[0])
    evaluate(tree, node, value, mover)
    T.backup(tree, idx(0), idx(node))
    return node


def test_seat_values_from_the_movers_view_and_from_turn_order() -> None:
    movers = idx(0, 2, 1)
    scalar = T.seat_values(f32(0.6, 0.3, -0.9), movers, 3)
    assert np.allclose(scalar, [[0.6, -0.3, -0.3], [-0.15, -0.15, 0.3], [0.45, -0.9, 0.45]])
    turns = np.array([[1.0, 2.0, 3.0]] * 3, np.float32)  # entry j: the player j seats after
    assert T.seat_values(turns, movers, 3).tolist() == [[1, 2, 3], [2, 3, 1], [3, 1, 2]]
    two = T.seat_values(f32(0.25, -0.5), idx(1, 0), 2)
    assert two.tolist() == [[-0.25, 0.25], [-0.5, 0.5]]


def test_backup_keeps_running_means_of_vectors_and_each_nodes_own_view() -> None:
    r, x, y, z = f32(0.3, -0.6, 0.3), f32(0.5, 0.1, -0.6), f32(-0.2, -0.8, 1.0), f32(-1, 1, 0.5)
    tree = three_player_tree(r)
    a = expand(tree, T.ROOT, 0, x, mover=1)
    b = expand(tree, T.ROOT, 1, y, mover=1)
    c = expand(tree, a, 0, z, mover=2)
    assert np.allclose(tree.values[0, T.ROOT], (r + x + y + z) / 4)
    assert np.allclose(tree.values[0, a], (x + z) / 2)
    assert np.array_equal(tree.values[0, b], y) and np.array_equal(tree.values[0, c], z)
    assert tree.node_visits[0, :4].tolist() == [4, 2, 1, 1]
    assert tree.child_visits[0, T.ROOT].tolist() == [2, 1]
    # Every node reads values from its own mover's entry; Q is the child's value to the chooser.
    movers = tree.movers[0, :4]
    assert movers.tolist() == [0, 1, 1, 2]
    assert np.array_equal(tree.node_values[0, :4], tree.values[0, np.arange(4), movers])
    assert np.array_equal(tree.raw_values[0, :4], tree.raw[0, np.arange(4), movers])
    assert np.array_equal(tree.child_q[0, T.ROOT], [tree.values[0, a, 0], tree.values[0, b, 0]])
    assert tree.child_q[0, a, 0] == z[1]  # seat 1 chooses at a
    assert np.allclose(tree.child_q[0, T.ROOT], [(0.5 - 1) / 2, -0.2])


def test_a_terminal_revisit_backs_up_the_exact_outcome_again() -> None:
    tree = three_player_tree(f32(0, 0, 0))
    node = int(T.add_children(tree, idx(0), idx(0), idx(1))[0])
    T.set_terminal(tree, idx(0), idx(node), f32(-1, 1, -1)[None], idx(2))
    T.backup(tree, idx(0), idx(node))
    T.backup(tree, idx(0), idx(node))
    assert np.allclose(tree.values[0, T.ROOT], [-2 / 3, 2 / 3, -2 / 3])
    assert tree.child_q[0, T.ROOT, 1] == -1.0 and tree.node_values[0, node] == -1.0


def test_a_parent_picks_the_child_best_for_its_own_mover() -> None:
    # x is better for seat 0 (to move at the root); y is worse for seat 1, who moves next, so
    # negamax (-value of the next mover) would prefer y. Max^n prefers x.
    x, y = f32(0.5, 0.1, -0.6), f32(-0.2, -0.8, 1.0)
    tree = three_player_tree(f32(0, 0, 0))
    expand(tree, T.ROOT, 0, x, mover=1)
    expand(tree, T.ROOT, 1, y, mover=1)
    negamax_q = -tree.node_values[0, 1:3]
    assert np.argmax(negamax_q) == 1
    rows, nodes = idx(0), idx(T.ROOT)
    assert P.interior_action(tree, rows, nodes, c_init=1.25, c_base=19652.0).tolist() == [0]
    assert G.interior_action(tree, rows, nodes, c_visit=50.0, c_scale=1.0).tolist() == [0]


def know_nothing(encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
    return uniform_evaluator(encodings, masks)


# Seat 0 (1, 2) wins at 3; seat 1 (6, 7) threatens 8, seat 2 (11, 13) threatens 12.
WIN_IN_ONE = "1,6,11,2,7,13"


@pytest.mark.parametrize("seed", range(3))
def test_three_players_the_mover_takes_a_win_in_one(seed: int) -> None:
    root = TICTACMO.parse(WIN_IN_ONE)
    assert TICTACMO.to_play(root) == 0
    rng = np.random.default_rng(seed)
    gumbel = gumbel_search(TICTACMO, [root], know_nothing, rng, num_simulations=32)
    assert gumbel.action[0] == 2 and gumbel.q[0, 2] == 1.0
    puct = puct_search(TICTACMO, [root], know_nothing, rng, num_simulations=64)
    assert puct.action[0] == 2 and puct.q[0, 2] == 1.0
    # The same position with the seats shifted: seat 1 to move wins at 3.
    shifted = TICTACMO.parse("9,1,6,11,2,7,13")
    assert TICTACMO.to_play(shifted) == 1
    out = gumbel_search(TICTACMO, [shifted], know_nothing, rng, num_simulations=32)
    assert out.action[0] == 2 and out.q[0, 2] == 1.0


def turn_order_values(encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
    """Uniform priors; (n, 4) values in turn order: the mover 0.4, then 0.2, -0.3, -0.3."""
    priors, _ = uniform_evaluator(encodings, masks)
    return priors, np.tile(f32(0.4, 0.2, -0.3, -0.3), (len(masks), 1))


def test_four_players_smoke() -> None:
    game = CONNECT3_4P
    states: list[Any] = [game.initial(), game.parse("4"), game.parse("445"), game.parse("12")]
    caches: list[Cache] = [{} for _ in states]
    rng = np.random.default_rng(0)
    for ply in range(4):
        live = [i for i, s in enumerate(states) if game.terminal_value(s) is None]
        search = gumbel_search if ply % 2 == 0 else puct_search
        out = search(
            game,
            [states[i] for i in live],
            turn_order_values,
            rng,
            caches=[caches[i] for i in live],
            num_simulations=24,
        )
        assert np.array_equal(out.visits.sum(axis=1), np.full(len(live), 24))
        assert np.allclose(out.policy.sum(axis=1), 1.0, atol=1e-5)
        assert np.all(np.abs(out.root_value) <= 1)
        for row, i in enumerate(live):
            legal = game.legal_mask(states[i])
            assert legal[out.action[row]] and not out.policy[row][~legal].any()
            states[i] = game.apply(states[i], int(out.action[row]))
    entry = next(iter(caches[0].values()))
    assert entry[2].shape == (4,) and np.isclose(entry[2].sum(), 0.0)


def test_a_movers_view_value_is_the_turn_order_vector_it_stands_for() -> None:
    game = CONNECT3_4P
    roots = [game.parse("4"), game.parse("33")]

    def scalar(encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        priors, _ = uniform_evaluator(encodings, masks)
        return priors, np.linspace(-0.9, 0.9, len(masks)).astype(np.float32)

    def vector(encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        priors, v = scalar(encodings, masks)
        return priors, np.stack([v, -v / 3, -v / 3, -v / 3], axis=1)

    one, other = (
        gumbel_search(game, roots, evaluator, np.random.default_rng(5), num_simulations=20)
        for evaluator in (scalar, vector)
    )
    assert np.array_equal(one.visits, other.visits) and np.array_equal(one.action, other.action)
    assert np.allclose(one.q, other.q) and np.allclose(one.root_value, other.root_value)


def test_two_player_search_matches_the_negamax_golden_file_exactly() -> None:
    golden = np.load(GOLDEN)
    now = golden_runs()
    assert sorted(now) == sorted(golden.files)
    for key in golden.files:
        assert now[key].dtype == golden[key].dtype, key
        assert np.array_equal(now[key], golden[key]), key
