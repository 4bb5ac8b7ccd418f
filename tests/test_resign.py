"""Resignation calibrated on played-out games, and the false-resign check (pure)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.learn.games import get_game
from shared.learn.inference import uniform_evaluator
from shared.learn.replay import ReplayWindow, positions_of
from shared.learn.resign import ResignSettings, lowest_values, report, threshold
from shared.learn.selfplay import SelfPlayConfig, self_play

SETTINGS = ResignSettings(target=0.05, min_samples=20, highest=-0.8)


def test_only_players_who_did_not_lose_give_samples() -> None:
    values = [0.1, -0.2, -0.95, 0.3, -0.5]
    movers = [0, 1, 0, 1, 0]
    assert lowest_values(values, movers, outcomes=[1.0, -1.0]) == [-0.95]
    assert lowest_values(values, movers, outcomes=[0.0, 0.0]) == [-0.95, -0.2]


def test_no_threshold_before_enough_samples() -> None:
    assert threshold([-0.99] * 19, SETTINGS) is None


def test_the_threshold_lets_at_most_the_target_share_resign() -> None:
    samples = [-0.5] * 95 + [-0.97, -0.98, -0.99, -0.995, -0.999]
    t = threshold(samples, SETTINGS)
    assert t is not None
    assert sum(v <= t for v in samples) <= 0.05 * len(samples)
    assert t == pytest.approx(-0.5 - 1e-6) or t <= -0.8


def test_the_threshold_is_never_above_the_cap_and_none_when_every_game_dips_to_minus_one() -> None:
    assert threshold([0.0] * 50, SETTINGS) == -0.8
    assert threshold([-1.0] * 50, SETTINGS) is None


@given(st.lists(st.floats(-1, 1), min_size=20, max_size=300))
def test_at_most_the_target_share_would_have_resigned(samples: list[float]) -> None:
    t = threshold(samples, SETTINGS)
    if t is not None:
        assert sum(v <= t for v in samples) <= SETTINGS.target * len(samples)
        assert t <= SETTINGS.highest


def test_the_false_resign_rate_is_counted() -> None:
    r = report([-0.5] * 30, [True, False, False, False], SETTINGS)
    assert (r.samples, r.checked, r.false, r.false_rate) == (30, 4, 1, 0.25)
    assert report([], [], SETTINGS).false_rate is None


def test_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match="target"):
        ResignSettings(target=0.0)


def test_played_out_games_feed_the_window_and_would_resign_games_are_checked() -> None:
    game = get_game("tictactoe")
    window = ReplayWindow(100, max_reuse=8)
    rng = np.random.default_rng(0)
    played_out = SelfPlayConfig(concurrent_games=4, num_simulations=4)
    for record in self_play(game, uniform_evaluator, rng, played_out, num_games=10):
        window.add(positions_of(game, record, resign_threshold=1.0))
    checked = SelfPlayConfig(
        concurrent_games=4, num_simulations=4, resign_value=1.0, resign_disabled_fraction=1.0
    )
    records = list(self_play(game, uniform_evaluator, rng, checked, num_games=6))
    for record in records:
        window.add(positions_of(game, record, resign_threshold=1.0))
    r = window.resign_report(ResignSettings(min_samples=1))
    assert r.samples >= 10  # at least one non-losing player per played-out game
    assert r.checked == 6  # at threshold 1.0 the first mover always "would resign"
    first_movers_not_losing = sum(rec.outcome >= 0 for rec in records)
    assert r.false == first_movers_not_losing
