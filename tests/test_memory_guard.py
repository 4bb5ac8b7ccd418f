"""The memory guard's arithmetic (estimate, fit, refusal, budget), the watch that shrinks a running
job, and self-play honouring a limit lowered mid-job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from schemas.game import GameRecord
from shared.learn.evaltypes import uniform_evaluator
from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.net import PolicyValueNet
from shared.learn.netconfig import NetConfig
from shared.learn.search import SearchStats
from shared.learn.selfplay import SelfPlayConfig, self_play
from shared.work.memory import (
    MB,
    RssWatch,
    budget_bytes,
    default_budget_bytes,
    estimate_selfplay_bytes,
    fit_concurrency,
    net_bytes,
    net_weights,
    refusal_reason,
)

GAMES = st.sampled_from([TICTACTOE, CONNECT4])
NETS = st.one_of(
    st.none(),
    st.builds(NetConfig, blocks=st.integers(0, 12), channels=st.integers(1, 256)),
)


@given(GAMES, NETS, st.integers(1, 512), st.integers(1, 800), st.integers(1, 64))
def test_the_estimate_grows_with_concurrency_and_simulations(
    game: Any, net: NetConfig | None, concurrency: int, sims: int, more: int
) -> None:
    base = estimate_selfplay_bytes(game, net, concurrency, sims)
    assert base > 0
    assert estimate_selfplay_bytes(game, net, concurrency + more, sims) > base
    assert estimate_selfplay_bytes(game, net, concurrency, sims + more) > base


@pytest.mark.parametrize(("concurrency", "measured_mb"), [(8, 21), (32, 34), (64, 66)])
def test_the_estimate_covers_what_was_measured_without_much_waste(
    concurrency: int, measured_mb: int
) -> None:
    # The module docstring's connect4 runs (64 sims, 4x64), the most each concurrency held;
    # the measured RSS already held the weights.
    net = NetConfig()
    above_setup = estimate_selfplay_bytes(CONNECT4, net, concurrency, 64)
    above_setup -= net_bytes(CONNECT4, net, 0)
    assert measured_mb * MB <= above_setup <= 1.6 * measured_mb * MB


@pytest.mark.parametrize("game", [TICTACTOE, CONNECT4])
def test_the_weights_counted_are_the_networks(game: Any) -> None:
    config = NetConfig(blocks=2, channels=16, value_hidden=8)
    net = PolicyValueNet(config, game.encoding_shape, game.num_actions)
    weights = sum(
        p.numel()
        for m in net.modules()
        if not isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters(recurse=False)
    )
    assert net_weights(game, config) == weights


def linear(base: int, per_game: int, g: int) -> int:
    return base + per_game * g


@given(
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(0, 500),
    st.integers(1, 100),
    st.integers(1, 300),
)
def test_fit_is_the_most_games_that_fit(
    budget: int, in_use: int, base: int, per_game: int, wanted: int
) -> None:
    estimate = partial(linear, base, per_game)
    fit = fit_concurrency(budget, in_use, estimate, wanted)
    if fit is None:
        assert in_use + estimate(1) > budget
    else:
        assert 1 <= fit <= wanted
        assert in_use + estimate(fit) <= budget
        assert fit == wanted or in_use + estimate(fit + 1) > budget


def test_fit_examples() -> None:
    def estimate(g: int) -> int:
        return linear(10 * MB, MB, g)

    assert fit_concurrency(100 * MB, 50 * MB, estimate, 64) == 40
    assert fit_concurrency(100 * MB, 50 * MB, estimate, 16) == 16
    assert fit_concurrency(100 * MB, 90 * MB, estimate, 16) is None
    with pytest.raises(ValueError):
        fit_concurrency(100 * MB, 0, estimate, 0)


def test_a_budget_smaller_than_the_estimate_refuses_with_both_in_mb() -> None:
    estimate = partial(estimate_selfplay_bytes, CONNECT4, NetConfig(), sims=64)
    budget, in_use = 250 * MB, 240 * MB
    assert fit_concurrency(budget, in_use, estimate, 32) is None
    reason = refusal_reason(budget, in_use, estimate(1))
    assert f"~{round(estimate(1) / MB)} MB" in reason
    assert "budget is 250 MB with 240 MB in use (10 MB free)" in reason


def test_budget_is_as_configured_else_a_share_of_the_node() -> None:
    node = 16_000 * MB
    assert default_budget_bytes(node, 4) == int(node * 0.8) // 4
    assert default_budget_bytes(node, 0) == int(node * 0.8)
    assert budget_bytes(None, node, 4) == default_budget_bytes(node, 4)
    assert budget_bytes(512.5, node, 4) == int(512.5 * MB)


class Readings:
    """A scripted RSS reader and clock, to drive the watch by hand."""

    def __init__(self, rss: int) -> None:
        self.rss = rss
        self.now = 0.0
        self.reads = 0

    def read(self) -> int:
        self.reads += 1
        return self.rss

    def clock(self) -> float:
        return self.now


def watch(readings: Readings, start: int = 32) -> RssWatch:
    return RssWatch(100 * MB, start, read=readings.read, clock=readings.clock, settle_s=5.0)


def test_the_watch_halves_above_the_high_water_mark_and_never_raises() -> None:
    r = Readings(50 * MB)
    w = watch(r)
    assert w.limit() == 32
    r.rss = 95 * MB
    assert w.limit() == 16
    assert w.limit() == 16  # settling: the games that finish have not shown as freed yet
    r.now = 5.0
    assert w.limit() == 8
    r.rss = 10 * MB
    r.now = 100.0
    assert w.limit() == 8  # memory came back: still no more games within the job
    assert w.shrinks == [(95 * MB, 16), (95 * MB, 8)]


def test_the_watch_stops_at_one_and_then_stops_reading() -> None:
    r = Readings(99 * MB)
    w = watch(r, start=3)
    limits = []
    for step in range(4):
        r.now = step * 10.0
        limits.append(w.limit())
    assert limits == [1, 1, 1, 1]
    assert r.reads == 1


class Limit:
    """A job's concurrency limit that drops to `low` after `after` reads."""

    def __init__(self, high: int, low: int, after: int) -> None:
        self.high, self.low, self.after = high, low, after
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.high if self.reads <= self.after else self.low


def play(limit: Callable[[], int] | None, seen: list[int]) -> Iterator[GameRecord]:
    config = SelfPlayConfig(concurrent_games=8, num_simulations=4, sample_plies=2)

    def searched(stats: SearchStats) -> None:
        seen.append(len(stats.per_game.nn_evals))  # the games in flight at this step

    return self_play(
        TICTACTOE,
        uniform_evaluator,
        np.random.default_rng(3),
        config,
        num_games=40,
        clock=lambda: 0.0,
        on_search=searched,
        limit=limit,
    )


def test_a_limit_lowered_mid_job_still_plays_every_game() -> None:
    in_flight: list[int] = []
    limit = Limit(high=8, low=2, after=10)
    records = list(play(limit, in_flight))
    assert len(records) == 40
    assert len({r.game_id for r in records}) == 40
    assert in_flight[0] == 8
    # Games in flight finish and are not replaced until under the limit; it never grows back.
    assert in_flight == sorted(in_flight, reverse=True)
    assert in_flight.count(2) > 10


def test_no_limit_and_a_limit_never_reached_play_the_same_games() -> None:
    unlimited = list(play(None, []))
    generous = list(play(lambda: 100, []))
    assert unlimited == generous


def test_a_limit_of_zero_still_plays_one_game_at_a_time() -> None:
    in_flight: list[int] = []
    records = list(play(lambda: 0, in_flight))
    assert len(records) == 40
    assert set(in_flight) == {1}
