"""The learning-rate schedule of a training job (pure), and that training follows it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.learn.games import get_game
from shared.learn.inference import uniform_evaluator
from shared.learn.netconfig import NetConfig, TrainSettings, lr_factor
from shared.learn.replay import ReplayWindow, positions_of
from shared.learn.selfplay import SelfPlayConfig, self_play
from shared.learn.training import new_net, train

COSINE = TrainSettings(lr_schedule="cosine", lr_final_factor=0.1, warmup_steps=10)


def test_constant_is_the_default() -> None:
    assert {lr_factor(s, 100, TrainSettings()) for s in range(100)} == {1.0}


def test_cosine_warms_up_then_decays_to_the_final_factor() -> None:
    factors = [lr_factor(s, 100, COSINE) for s in range(100)]
    assert factors[0] == pytest.approx(0.1, abs=0.01)  # first warmup step
    assert max(factors) == pytest.approx(factors[9], rel=1e-6)
    assert factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))


@given(st.integers(0, 1000), st.integers(1, 1000), st.floats(0, 1), st.integers(0, 50))
def test_the_factor_stays_within_its_bounds(step: int, steps: int, final: float, warm: int) -> None:
    settings = TrainSettings(lr_schedule="cosine", lr_final_factor=final, warmup_steps=warm)
    assert 0.0 <= lr_factor(step, steps, settings) <= 1.0


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match="lr_final_factor"):
        TrainSettings(lr_final_factor=1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainSettings(warmup_steps=-1)


def test_training_follows_the_schedule() -> None:
    game = get_game("tictactoe")
    window = ReplayWindow(100, max_reuse=100)
    config = SelfPlayConfig(concurrent_games=4, num_simulations=4)
    rng = np.random.default_rng(0)
    for record in self_play(game, uniform_evaluator, rng, config, num_games=8):
        window.add(positions_of(game, record))
    net = new_net(game, NetConfig(blocks=1, channels=8, value_hidden=8))
    settings = TrainSettings(batch_size=8, learning_rate=0.01, lr_schedule="cosine")
    rates: list[float] = []
    report = train(
        net, game, window, 20, settings, rng, lambda done: rates.append(done.learning_rate)
    )
    assert report.steps == 20
    assert rates == pytest.approx([0.01 * lr_factor(s, 20, settings) for s in range(20)])
