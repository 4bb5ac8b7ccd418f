"""The replay window: records replayed under the rules, duplicates kept once, reuse capped."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from schemas.game import GameRecord, pack_policy
from shared.learn.games import get_game
from shared.learn.replay import RejectedRecord, ReplayWindow, augment, positions_of

GAME = get_game("tictactoe")


def uniform_legal(actions: list[int]) -> npt.NDArray[np.float32]:
    """Policy targets spread evenly over each ply's legal moves (while the game is on)."""
    policy = np.zeros((len(actions), 9), dtype=np.float32)
    state = GAME.initial()
    for ply, action in enumerate(actions):
        legal = GAME.legal_mask(state)
        policy[ply] = legal / legal.sum() if legal.any() else 1 / 9
        state = GAME.apply(state, action) if legal[action] else state
    return policy


def record(moves: str, outcome: float, game_id: str = "g1", **changes: object) -> GameRecord:
    actions = [int(c) - 1 for c in moves]
    policy = uniform_legal(actions)
    base = GameRecord(
        game="tictactoe",
        game_id=game_id,
        model_sha256="",
        generation=0,
        moves=actions,
        policy=pack_policy(policy),
        root_values=[0.0] * len(actions),
        outcome=outcome,
        plies=len(actions),
        num_actions=9,
        search="gumbel",
        sims_per_move=8,
    )
    return msgspec.structs.replace(base, **changes)


def test_a_won_game_gives_outcome_targets_from_each_movers_view() -> None:
    positions = positions_of(GAME, record("14253", 1.0))  # X completes 1-2-3
    assert positions.values.tolist() == [1.0, -1.0, 1.0, -1.0, 1.0]
    assert positions.encodings.shape == (5, *GAME.encoding_shape)


def test_root_values_are_blended_into_value_targets() -> None:
    rec = record("14253", 1.0, root_values=[0.0, 0.0, 0.0, 0.0, 0.5])
    assert positions_of(GAME, rec, root_value_weight=0.5).values[-1] == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("moves", "outcome", "changes", "reason"),
    [
        ("11", 0.0, {}, "illegal"),
        ("14253", -1.0, {}, "outcome"),
        ("142536", 1.0, {}, "after the game ended"),
        ("12", 0.0, {}, "do not end the game"),
    ],
)
def test_records_that_break_the_rules_are_rejected_with_a_reason(
    moves: str, outcome: float, changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(RejectedRecord, match=reason):
        positions_of(GAME, record(moves, outcome, **changes))


def test_a_policy_target_that_does_not_sum_to_one_is_rejected() -> None:
    bad = pack_policy(np.full((5, 9), 0.5, dtype=np.float32))
    with pytest.raises(RejectedRecord, match="sums to"):
        positions_of(GAME, record("14253", 1.0, policy=bad))


def test_the_window_keeps_a_game_once_and_drops_the_oldest() -> None:
    window = ReplayWindow(window_games=2, max_reuse=1)
    assert window.add(positions_of(GAME, record("14253", 1.0, "a"), seq=1))
    assert not window.add(positions_of(GAME, record("14253", 1.0, "a"), seq=2))
    window.add(positions_of(GAME, record("14253", 1.0, "b"), seq=3))
    window.add(positions_of(GAME, record("14253", 1.0, "c"), seq=4))
    assert list(window.games) == ["b", "c"] and window.duplicates == 1
    assert window.seq_range() == (3, 4)


def test_each_position_is_sampled_at_most_max_reuse_times() -> None:
    window = ReplayWindow(window_games=10, max_reuse=2)
    window.add(positions_of(GAME, record("14253", 1.0), seq=1))
    rng = np.random.default_rng(0)
    drawn = 0
    while (batch := window.sample(3, rng)) is not None:
        drawn += len(batch.values)
    assert drawn == 5 * 2


def test_augmentation_moves_policy_mass_with_the_board() -> None:
    window = ReplayWindow(window_games=10, max_reuse=100)
    one_hot = np.zeros((1, 9), dtype=np.float32)
    one_hot[0, 0] = 1.0  # a policy target on the corner cell 1
    rec = record("5", 1.0, policy=pack_policy(one_hot), resigned=True, resign_enabled=True)
    window.add(positions_of(GAME, rec, resign_threshold=-0.8))  # O resigned after X's move
    batch = window.sample(1, np.random.default_rng(0))
    assert batch is not None
    rng = np.random.default_rng(1)
    corners = {0, 2, 6, 8}
    for _ in range(20):
        out = augment(GAME, batch, rng)
        assert int(np.argmax(out.policies[0])) in corners and out.policies[0].sum() == 1.0
