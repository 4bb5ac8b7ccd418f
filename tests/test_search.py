"""Gumbel search properties: schedules, formulas, budgets, bandits, caches (hand-derived)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.learn.games.base import BoolArray, FloatArray, Symmetry
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.inference import uniform_evaluator
from shared.learn.search import (
    Cache,
    SearchOutput,
    Steps,
    considered_visit_sequence,
    drive,
    drive_pipelined,
    gumbel_search,
    gumbel_steps,
    puct_search,
)
from shared.learn.search.gumbel import completed_q, interior_action, sigma
from shared.learn.search.tree import new_tree


class Pull(NamedTuple):
    arm: int  # -1 before the pull


class Bandit:
    """A one-move game: pulling arm a ends the game with reward `rewards[a]` for the puller."""

    name = "bandit"
    encoding_shape = (1, 1, 1)

    def __init__(self, rewards: list[float]) -> None:
        self.rewards = rewards
        self.num_actions = len(rewards)

    def initial(self) -> Pull:
        return Pull(-1)

    def legal_mask(self, state: Pull) -> BoolArray:
        return np.full(self.num_actions, state.arm < 0)

    def apply(self, state: Pull, action: int) -> Pull:
        return Pull(action)

    def terminal_value(self, state: Pull) -> float | None:
        # From the view of the player to move after the pull, i.e. the puller's opponent.
        return None if state.arm < 0 else -self.rewards[state.arm]

    def to_play(self, state: Pull) -> int:
        return 0 if state.arm < 0 else 1

    def ply(self, state: Pull) -> int:
        return 0 if state.arm < 0 else 1

    def key(self, state: Pull) -> int:
        return state.arm

    def encode(self, state: Pull) -> FloatArray:
        return np.zeros(self.encoding_shape, np.float32)

    def symmetries(self) -> tuple[Symmetry, ...]:
        return ()

    def notation(self, state: Pull) -> str:
        return str(state.arm)

    def parse(self, text: str) -> Pull:
        return Pull(int(text))

    def action_name(self, action: int) -> str:
        return str(action)


def fixed_priors(logits: list[float]):  # type: ignore[no-untyped-def]
    def evaluate(x: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        p = np.exp(np.array(logits, np.float32)) * masks
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32), np.zeros(len(x), np.float32)

    return evaluate


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (4, 8, (0, 0, 0, 0, 1, 1, 2, 2)),
        (2, 4, (0, 0, 1, 1)),
        (3, 6, (0, 0, 0, 1, 1, 2)),
        (1, 3, (0, 1, 2)),
        (16, 4, (0, 0, 0, 0)),
        (4, 16, (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5)),
    ],
)
def test_considered_visit_schedule_by_hand(k: int, n: int, expected: tuple[int, ...]) -> None:
    assert considered_visit_sequence(k, n) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9, 16, 33, 64])
def test_search_spends_exactly_the_budget(n: int) -> None:
    roots = [TICTACTOE.parse(t) for t in ("", "5", "1597", "12345")]
    out = gumbel_search(
        TICTACTOE, roots, uniform_evaluator, np.random.default_rng(n), num_simulations=n
    )
    assert np.array_equal(out.visits.sum(axis=1), np.full(4, n))
    assert out.stats.simulations == 4 * n
    assert np.allclose(out.policy.sum(axis=1), 1.0, atol=1e-6)


def test_sequential_halving_visits_in_a_bandit() -> None:
    # Top-4 by logits (no noise) are arms 0..3; the two best of them by Q get the later visits.
    game = Bandit([-1.0, 1.0, 0.0, 0.5, 1.0, 1.0])
    out = gumbel_search(
        game,
        [game.initial()],
        fixed_priors([3, 2, 1, 0, -1, -2]),
        np.random.default_rng(0),
        num_simulations=8,
        max_considered=4,
        gumbel_scale=0.0,
    )
    assert out.visits[0].tolist() == [1, 3, 1, 3, 0, 0]
    assert out.action[0] == 1
    assert out.q[0, :4].tolist() == [-1.0, 1.0, 0.0, 0.5]
    # The root's value averages its own raw value (0) with the 8 backed-up values (mctx).
    assert np.isclose(out.root_value[0], (0.0 - 1 + 3 * 1.0 + 0 + 3 * 0.5) / 9)


@pytest.mark.parametrize("seed", range(5))
def test_improved_policy_favours_the_best_arm(seed: int) -> None:
    game = Bandit([0.1, 0.9, -0.5, 0.3])
    out = gumbel_search(
        game, [game.initial()], uniform_evaluator, np.random.default_rng(seed), num_simulations=16
    )
    assert np.isclose(out.policy[0].sum(), 1.0)
    assert np.argmax(out.policy[0]) == 1 and out.action[0] == 1
    assert out.policy[0, 1] > 0.9


def test_completed_q_and_sigma_by_hand() -> None:
    q = np.array([[0.5, -0.5, 0.0]], np.float32)
    visits = np.array([[2.0, 1.0, 0.0]], np.float32)
    priors = np.array([[0.5, 0.25, 0.25]], np.float32)
    done = completed_q(q, visits, priors, np.array([0.2], np.float32))
    # v_mix = (0.2 + 3 * (0.5*0.5 + 0.25*(-0.5)) / 0.75) / 4 = (0.2 + 0.5) / 4
    assert np.allclose(done, [[0.5, -0.5, 0.175]])
    legal = np.array([[True, True, True]])
    # q_hat = [1, 0, 0.675]; scale = (50 + 2) * 1.0
    assert np.allclose(sigma(done, visits, legal, 50.0, 1.0), [[52.0, 0.0, 52.0 * 0.675]])
    assert np.allclose(sigma(done, visits, legal, 50.0, 0.1), [[5.2, 0.0, 5.2 * 0.675]])


def test_interior_selection_by_hand() -> None:
    tree = new_tree([None], 2, 3)
    tree.legal[0, 1] = [True, True, False]
    tree.logits[0, 1] = np.log([0.9, 0.1, 1e-30])
    tree.logits[0, 1, 2] = -np.inf
    tree.priors[0, 1] = [0.9, 0.1, 0.0]
    tree.child_visits[0, 1] = [3, 0, 0]
    tree.child_q[0, 1] = [-0.5, 0.0, 0.0]
    rows, nodes = np.array([0]), np.array([1])
    # completed Q = [-0.5, v_mix]; v_mix = (0 + 3 * -0.5) / 4 = -0.375 > -0.5, so q_hat = [0, 1];
    # pi' = softmax(log [0.9, 0.1] + 53 * [0, 1]) ~ [0, 1]; score = pi' - [3, 0] / 4 -> arm 1.
    assert interior_action(tree, rows, nodes, c_visit=50.0, c_scale=1.0).tolist() == [1]
    # Without the sigma transform pulling it up, the prior favours arm 0 once its visits are few.
    tree.child_visits[0, 1] = [1, 0, 0]
    tree.child_q[0, 1] = [0.0, 0.0, 0.0]
    assert interior_action(tree, rows, nodes, c_visit=50.0, c_scale=0.0).tolist() == [0]


def test_transposition_cache_is_per_game_and_reused() -> None:
    roots = [TICTACTOE.parse("1"), TICTACTOE.parse("1")]
    caches: list[Cache] = [{}, {}]
    rows = []

    def counting(x: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        rows.append(len(x))
        return uniform_evaluator(x, masks)

    rng = np.random.default_rng(3)
    first = gumbel_search(TICTACTOE, roots, counting, rng, caches=caches, num_simulations=32)
    assert first.stats.nn_evals == sum(rows)
    assert len(caches[0]) == len(caches[1]) == first.stats.nn_evals // 2  # no sharing
    # Searching on from the played child, positions evaluated last move come from the cache,
    # and the tree (not a graph) keeps visit counts exactly the budget.
    child = [TICTACTOE.apply(r, int(a)) for r, a in zip(roots, first.action, strict=True)]
    second = gumbel_search(TICTACTOE, child, counting, rng, caches=caches, num_simulations=32)
    assert second.stats.cache_hits > 0
    assert np.array_equal(second.visits.sum(axis=1), [32, 32])


def test_terminal_roots_rejected() -> None:
    with pytest.raises(ValueError, match=r"roots\[0\]"):
        gumbel_search(
            TICTACTOE, [TICTACTOE.parse("14253")], uniform_evaluator, np.random.default_rng()
        )


def test_puct_policy_is_visit_distribution() -> None:
    roots = [TICTACTOE.parse("1425"), TICTACTOE.initial()]
    out = puct_search(
        TICTACTOE, roots, uniform_evaluator, np.random.default_rng(0), num_simulations=64
    )
    assert np.allclose(out.policy, out.visits / 64)
    assert out.action[0] == 2  # completes 1-2-3


def skewed_evaluator(encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
    """Priors that put most mass on the first legal action, value 0."""
    weights = masks * np.where(np.cumsum(masks, axis=1) == 1, 50.0, 1.0)
    priors = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    return priors, np.zeros(len(masks), dtype=np.float32)


def test_forced_playouts_visit_every_explored_root_child_enough() -> None:
    roots = [TICTACTOE.initial(), TICTACTOE.parse("5")]
    kwargs = {"num_simulations": 200, "noise_fraction": 0.25}
    plain = puct_search(TICTACTOE, roots, skewed_evaluator, np.random.default_rng(1), **kwargs)
    forced = puct_search(
        TICTACTOE, roots, skewed_evaluator, np.random.default_rng(1), forced_k=2.0, **kwargs
    )
    explored = forced.visits > 0
    assert (forced.visits[explored] >= 3).all()  # sqrt(2 * P * 200) >= 3 for P >= 2.25%
    assert np.minimum(plain.visits, 3)[plain.visits > 0].min() < 3  # plain PUCT starves some
    assert np.allclose(forced.policy.sum(axis=1), 1.0)
    pruned = forced.policy < forced.visits / forced.visits.sum(axis=1, keepdims=True)
    assert pruned.any(), "the target gives back forced visits"
    best = forced.visits.argmax(axis=1)
    assert (forced.policy.argmax(axis=1) == best).all()


@settings(max_examples=40, deadline=None)
@given(
    moves=st.lists(st.integers(0, 8), max_size=6),
    sims=st.integers(1, 40),
    considered=st.integers(1, 16),
    gumbel_scale=st.sampled_from([0.0, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_search_output_invariants(
    moves: list[int], sims: int, considered: int, gumbel_scale: float, seed: int
) -> None:
    state = TICTACTOE.initial()
    for move in moves:
        if TICTACTOE.terminal_value(state) is None and TICTACTOE.legal_mask(state)[move]:
            state = TICTACTOE.apply(state, move)
    assume(TICTACTOE.terminal_value(state) is None)
    legal = TICTACTOE.legal_mask(state)
    out = gumbel_search(
        TICTACTOE,
        [state],
        fixed_priors([0.1 * a for a in range(9)]),
        np.random.default_rng(seed),
        num_simulations=sims,
        max_considered=considered,
        gumbel_scale=gumbel_scale,
    )
    assert out.visits[0].sum() == sims
    assert np.all(out.visits[0][~legal] == 0) and legal[out.action[0]]
    assert out.visits[0][out.action[0]] == out.visits[0].max()
    assert np.isclose(out.policy[0].sum(), 1.0, atol=1e-5) and np.all(out.policy[0][~legal] == 0)
    assert np.count_nonzero(out.visits[0]) <= min(considered, legal.sum())


def test_pipelined_driver_matches_separate_searches() -> None:
    roots = [TICTACTOE.parse(t) for t in ("", "5", "19", "1597")]

    def steps(part: Sequence[object], seed: int) -> Steps[SearchOutput]:
        caches: list[Cache] = [{} for _ in part]
        return gumbel_steps(
            TICTACTOE, part, caches, np.random.default_rng(seed), num_simulations=12
        )

    with ThreadPoolExecutor(1) as executor:
        both = drive_pipelined(
            [steps(roots[:2], 1), steps(roots[2:], 2)], fixed_priors([0.0] * 9), executor
        )
    alone = [
        drive(steps(roots[:2], 1), uniform_evaluator),
        drive(steps(roots[2:], 2), uniform_evaluator),
    ]
    for a, b in zip(both, alone, strict=True):
        assert np.array_equal(a.visits, b.visits) and np.array_equal(a.action, b.action)
        assert np.allclose(a.policy, b.policy)
