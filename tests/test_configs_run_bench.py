"""bench/configs_run.py's allocation measure: shares of the worker-seconds added in a window."""

from __future__ import annotations

from typing import Any

from bench.configs_run import measured_shares


def sample(minutes: float, seconds: dict[str, float], targets: dict[str, float]) -> dict[str, Any]:
    games = {
        g: {"selfplay_seconds": s, "selfplay": {"target": targets[g]}} for g, s in seconds.items()
    }
    return {"minutes": minutes, "games": games}


def test_shares_count_only_the_seconds_added_after_the_warm_up() -> None:
    targets = {"a": 0.25, "b": 0.5, "c": 0.25}
    rows = [
        sample(1.0, {"a": 100.0, "b": 0.0, "c": 0.0}, targets),  # a burst before the window
        sample(2.0, {"a": 100.0, "b": 10.0, "c": 10.0}, {"a": 0.2, "b": 0.6, "c": 0.2}),
        sample(3.0, {"a": 130.0, "b": 70.0, "c": 40.0}, targets),
    ]
    shares = measured_shares(rows, after_minutes=2.0)
    assert shares["from_minute"] == 2.0 and shares["minutes"] == 1.0
    assert shares["configs"]["a"] == {"worker_seconds": 30.0, "actual": 0.25, "mean_target": 0.225}
    assert shares["configs"]["b"]["actual"] == 0.5 and shares["configs"]["b"]["mean_target"] == 0.55
    assert shares["configs"]["c"]["actual"] == 0.25


def test_a_config_that_appears_late_counts_from_zero() -> None:
    rows = [
        sample(2.0, {"a": 10.0}, {"a": 1.0}),
        sample(4.0, {"a": 40.0, "b": 10.0}, {"a": 0.5, "b": 0.5}),
    ]
    shares = measured_shares(rows, after_minutes=0.0)["configs"]
    assert shares["a"]["actual"] == 0.75 and shares["b"]["actual"] == 0.25


def test_fewer_than_two_samples_in_the_window_measure_nothing() -> None:
    assert measured_shares([sample(5.0, {"a": 1.0}, {"a": 1.0})], after_minutes=2.0) == {}
