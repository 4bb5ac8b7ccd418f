"""Self-play allocation by priority (shared.loop.allocation): the pure policy, its Elo chain as
the scheduler records it from promotions and rejections, and the policy's use of the shares."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import decode
from services.scheduler import LoopRecord, allocation_shown, learned
from shared.learn.games import game_names
from shared.loop.allocation import (
    FLOOR,
    HISTORY_POINTS,
    MAX_TICK_S,
    STALE_HORIZON_S,
    STALE_MAX,
    Progress,
    accrued,
    allocate,
    busy_workers,
    fair_picks,
    job_seconds,
    promoted,
    rejected,
    selfplay_game_of,
    slope,
    spent_since,
)
from shared.loop.effects import selfplay_job_id
from shared.loop.policy import (
    EnqueueSelfplay,
    GameState,
    LoopConfig,
    LoopState,
    Promote,
    Reject,
    Snapshot,
    next_actions,
)
from shared.loop.sprt import SprtConfig, sprt

NAMES = ("a", "b", "c", "d")
weights_st = st.dictionaries(
    st.sampled_from(NAMES), st.just(0.0) | st.floats(1e-3, 100.0), min_size=1
)
chain_st = st.lists(
    st.tuples(st.integers(0, 5000), st.floats(-200.0, 400.0, allow_nan=False)), max_size=8
)


def _chain(steps: list[tuple[int, float]]) -> Progress:
    """An Elo chain as the scheduler records one: the initial net, then one decision a step
    (`games` more games each, Elo > 0 promoted by that much, else rejected)."""
    progress, games = promoted(Progress(), 0, None, 0.0), 0
    for more, elo in steps:
        games += more
        progress = promoted(progress, games, elo, 0.0) if elo > 0 else rejected(progress, games)
    return progress


@st.composite
def situations(draw: st.DrawFn) -> tuple[dict[str, float], dict[str, Progress], float]:
    weights = draw(weights_st)
    progress = {
        name: Progress(
            points=_chain(draw(chain_st)).points,
            promoted_at=draw(st.none() | st.floats(0.0, 10_000.0)),
        )
        for name in weights
    }
    return weights, progress, draw(st.floats(0.0, 20_000.0))


@given(situations())
def test_shares_sum_to_one_whenever_a_weight_is_positive(
    situation: tuple[dict[str, float], dict[str, Progress], float],
) -> None:
    weights, progress, now = situation
    targets = [a.target for a in allocate(weights, progress, now).values()]
    assert all(t >= 0 for t in targets)
    if any(w > 0 for w in weights.values()):
        assert math.isclose(math.fsum(targets), 1.0)
    else:
        assert targets == [0.0] * len(weights)


@given(situations())
def test_every_config_of_positive_weight_keeps_the_floors_part_of_its_base_share(
    situation: tuple[dict[str, float], dict[str, Progress], float],
) -> None:
    weights, progress, now = situation
    total = math.fsum(weights.values())
    for name, a in allocate(weights, progress, now).items():
        base = weights[name] / total if total > 0 else 0.0
        assert a.target >= FLOOR / STALE_MAX * base - 1e-12
        assert (a.target > 0) == (weights[name] > 0 and total > 0)


@given(situations(), st.sampled_from(NAMES), st.floats(1.01, 10.0))
def test_more_weight_never_means_a_smaller_share(
    situation: tuple[dict[str, float], dict[str, Progress], float], name: str, factor: float
) -> None:
    weights, progress, now = situation
    if name not in weights or weights[name] == 0:
        weights = {**weights, name: 1.0}
    heavier = {**weights, name: weights[name] * factor}
    before = allocate(weights, progress, now)[name].target
    after = allocate(heavier, progress, now)[name].target
    assert after >= before - 1e-12


@given(weights_st, st.floats(0.0, 1e6), st.none() | st.floats(0.0, 1e6))
def test_without_a_learning_signal_and_equal_staleness_shares_are_the_base_weights(
    weights: dict[str, float], now: float, promoted_at: float | None
) -> None:
    few = Progress(points=[(0, 0.0), (100, 50.0)], promoted_at=promoted_at)  # too few points
    allocation = allocate(weights, dict.fromkeys(weights, few), now)
    total = math.fsum(weights.values())
    for name, a in allocation.items():
        assert a.learning == 1.0
        assert a.target == pytest.approx(weights[name] / total if total else 0.0)


def test_base_weights_one_two_one_are_shares_of_a_quarter_a_half_and_a_quarter() -> None:
    weights = {"tictactoe": 1.0, "tictacmo": 2.0, "connect3-6x7-3p": 1.0}
    targets = {n: a.target for n, a in allocate(weights, {}, 0.0).items()}
    assert targets == {"tictactoe": 0.25, "tictacmo": 0.5, "connect3-6x7-3p": 0.25}


# Recorded histories: the Elo chains two configs leave behind, decision by decision.
RISING = [(1000, 60.0), (1000, 45.0), (1000, 50.0), (1000, 40.0), (1000, 55.0)]
PLATEAUED = [(1000, 80.0), (1000, 30.0), (1000, -1.0), (1000, 4.0), (1000, -1.0), (1000, -1.0)]


def test_a_config_whose_elo_stops_rising_loses_share_to_one_still_rising() -> None:
    weights = {"rising": 1.0, "plateaued": 1.0}
    early = {"rising": _chain(RISING[:2]), "plateaued": _chain(PLATEAUED[:2])}
    late = {"rising": _chain(RISING), "plateaued": _chain(PLATEAUED)}
    before, after = allocate(weights, early, 0.0), allocate(weights, late, 0.0)
    assert after["plateaued"].target < before["plateaued"].target
    assert after["rising"].target > before["rising"].target
    assert after["plateaued"].learning < after["rising"].learning
    assert after["rising"].target > 0.5 > after["plateaued"].target


def test_staleness_grows_with_time_since_the_last_promotion_and_is_bounded() -> None:
    weights = {"fresh": 1.0, "stale": 1.0}
    factors = []
    for age in (0.0, STALE_HORIZON_S / 2, STALE_HORIZON_S, 10 * STALE_HORIZON_S):
        progress = {"fresh": Progress(promoted_at=age), "stale": Progress(promoted_at=0.0)}
        factors.append(allocate(weights, progress, age)["stale"].staleness)
    assert factors == sorted(factors)
    assert factors[0] == 1.0
    assert factors[-1] == factors[-2] == STALE_MAX


def test_the_elo_chain_starts_at_the_first_net_and_stays_flat_through_rejections() -> None:
    first = promoted(Progress(), 10, None, 5.0)
    chain = rejected(promoted(first, 300, 42.5, 9.0), 600)
    assert chain.points == [(10, 0.0), (300, 42.5), (600, 42.5)]
    assert chain.promoted_at == 9.0
    assert promoted(chain, 900, None, 12.0).points == chain.points  # ungated: no Elo to add
    # The least-squares line through (10, 0), (300, 42.5), (600, 42.5):
    games, elo = (10, 300, 600), (0.0, 42.5, 42.5)
    mean_g, mean_e = sum(games) / 3, sum(elo) / 3
    line = sum((g - mean_g) * (e - mean_e) for g, e in zip(games, elo, strict=True)) / sum(
        (g - mean_g) ** 2 for g in games
    )
    assert slope(chain.points) == pytest.approx(1000 * line)


@given(st.lists(st.tuples(st.integers(0, 100), st.floats(-50.0, 50.0)), max_size=40))
def test_the_chain_keeps_a_bounded_history(steps: list[tuple[int, float]]) -> None:
    assert len(_chain(steps).points) <= HISTORY_POINTS


def test_the_scheduler_records_promotions_with_their_sprt_elo_and_rejections_flat() -> None:
    result = sprt(30, 10, 10, SprtConfig())
    before = GameState(generation=3, best="b3", trainings=4, games_at_last_train=2000)
    progress = learned({}, Promote("g", "c4", 4, result), before, 100.0)
    progress = learned(progress, Reject(game="g", candidate="c5", generation=5), before, 200.0)
    assert progress["g"].points == [(2000, round(result.elo, 2)), (2000, round(result.elo, 2))]
    assert progress["g"].promoted_at == 100.0
    enqueue = EnqueueSelfplay("g", 1, 4, "b3")
    assert learned(progress, enqueue, before, 300.0) == progress


def test_status_shows_targets_among_the_games_that_play_and_the_actual_share() -> None:
    planned = allocate({"a": 1.0, "b": 2.0, "c": 1.0}, {}, 0.0)
    state = LoopState({"a": GameState(best="x"), "b": GameState(best="y")})  # c: no net yet
    spent = {"a": 30.0, "b": 90.0, "c": 0.0}  # worker-seconds over the window
    shown = allocation_shown(planned, state, spent)
    assert {n: a.target for n, a in shown.items()} == pytest.approx(  # rounded to 4 places
        {"a": 1 / 3, "b": 2 / 3, "c": 0}, abs=1e-4
    )
    assert {n: a.actual for n, a in shown.items()} == {"a": 0.25, "b": 0.75, "c": 0.0}


def test_spent_time_counts_only_the_recent_window() -> None:
    assert spent_since([(0.0, 0.0), (100.0, 1000.0), (200.0, 1010.0)], 100.0) == 10.0
    assert spent_since([(0.0, 0.0), (200.0, 30.0)], 100.0) == 30.0  # no sample before: all
    assert spent_since([], 10.0) == 0.0


@pytest.mark.parametrize(
    ("weights", "field"),
    [({"x": 1.0}, r"weights\['x'\] names no game"), ({"a": -1.0}, r"weights\['a'\] must be")],
)
def test_loop_config_weights_are_validated_by_name(weights: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LoopConfig(games=("a", "b"), weights=weights)
    with pytest.raises(ValueError, match=r"weights\['a'\] must be finite"):
        LoopConfig(games=("a",), weights={"a": math.inf})


def test_the_policy_splits_the_queue_target_by_the_shares() -> None:
    cfg = LoopConfig(games=("a", "b", "c"), games_per_generation=10**6, selfplay_games_per_job=4)
    state = LoopState({n: GameState(generation=0, best=f"{n}0", trainings=1) for n in cfg.games})
    shares = {n: a.target for n, a in allocate({"a": 1.0, "b": 2.0, "c": 1.0}, {}, 0.0).items()}
    actions = next_actions(state, Snapshot(4, 0, selfplay_shares=shares), cfg)
    assert {a.game: a.jobs for a in actions if isinstance(a, EnqueueSelfplay)} == {
        "a": 2,
        "b": 4,
        "c": 2,
    }
    weighted = msgspec.structs.replace(cfg, weights={"b": 3.0, "c": 0.0})
    actions = next_actions(state, Snapshot(4, 0), weighted)  # no shares: the base weights
    assert {a.game: a.jobs for a in actions if isinstance(a, EnqueueSelfplay)} == {"a": 2, "b": 6}


def test_a_loop_record_written_before_allocation_still_decodes() -> None:
    older = {"type": "conclave.loop.v1", "term": 2, "state": {"games": {}}, "updated_at": 1.0}
    record = decode(msgspec.json.encode(older), LoopRecord)
    assert (record.progress, record.allocation) == ({}, {})


# -- worker time ------------------------------------------------------------------------------


@given(st.sampled_from(game_names()), st.sampled_from(["", "0123456789ab" * 6]), st.integers(0, 99))
def test_a_pulse_names_the_game_of_the_selfplay_job_it_is_doing(
    game: str, model: str, n: int
) -> None:
    assert selfplay_game_of(f"selfplay {selfplay_job_id(game, model, n)}") == game
    assert selfplay_game_of(f"eval {game}-m1-{n}") is None
    assert selfplay_game_of("") is None and selfplay_game_of("no jobs: self-test failed") is None


def test_busy_workers_accrue_worker_seconds_and_a_gap_is_not_credited() -> None:
    doing = [
        f"selfplay {selfplay_job_id('tictacmo', 'ab' * 32, 3)}",
        f"selfplay {selfplay_job_id('tictacmo', '', 4)}",
        f"selfplay {selfplay_job_id('tictactoe', 'cd' * 32, 0)}",
        "",
    ]
    busy = busy_workers(doing)
    assert busy == {"tictacmo": 2, "tictactoe": 1}
    assert accrued({"tictactoe": 10.0}, busy, 1.5) == {"tictactoe": 11.5, "tictacmo": 3.0}
    assert accrued({}, busy, 3600.0) == {"tictacmo": 2 * MAX_TICK_S, "tictactoe": MAX_TICK_S}
    assert accrued({"a": 1.0}, busy, -5.0)["a"] == 1.0


def test_a_jobs_cost_is_measured_seconds_per_game_times_its_games() -> None:
    cost = job_seconds({"a": 100.0, "b": 300.0}, {"a": 50, "b": 10}, {"a": 10, "b": 2, "c": 5})
    assert cost == {"a": 20.0, "b": 60.0, "c": 40.0}  # c not measured yet: the mean
    assert job_seconds({}, {}, {"a": 3}) == {"a": 1.0}


def _served(
    shares: dict[str, float], cost: dict[str, float], workers: int, per_worker: int, steps: int
) -> dict[str, float]:
    """Worker time per game when `workers` take jobs first come, first served from a queue
    kept at `workers * per_worker` jobs by `fair_picks`, each job taking its `cost`."""
    queue: list[str] = []
    busy: list[tuple[str, float]] = []  # (game, time left)
    spent = dict.fromkeys(shares, 0.0)
    for _ in range(steps):
        stored = [*queue, *(g for g, _ in busy)]
        queued = {g: stored.count(g) for g in shares}
        room = dict.fromkeys(shares, 100)
        picks = fair_picks(workers * per_worker - len(stored), shares, spent, queued, cost, room)
        queue += [g for g in sorted(shares) for _ in range(picks[g])]
        while len(busy) < workers and queue:
            game = queue.pop(0)
            busy.append((game, cost[game]))
        for game, _ in busy:
            spent[game] += 0.1  # each step: a tenth of a second of every busy worker
        busy = [(g, left - 0.1) for g, left in busy if left - 0.1 > 1e-9]
    return spent


@given(
    st.lists(st.floats(0.5, 4.0), min_size=2, max_size=4),
    st.lists(st.floats(0.5, 6.0), min_size=4, max_size=4),
    st.integers(1, 4),
    st.integers(1, 3),
)
def test_fair_picks_give_each_game_its_share_of_worker_time_whatever_its_jobs_cost(
    weights: list[float], costs: list[float], workers: int, per_worker: int
) -> None:
    names = NAMES[: len(weights)]
    shares = dict(zip(names, (w / sum(weights) for w in weights), strict=True))
    cost = dict(zip(names, costs, strict=False))
    spent = _served(shares, cost, workers, per_worker, steps=6000)
    total = sum(spent.values())
    for name, share in shares.items():
        assert abs(spent[name] / total - share) <= 0.05, (name, spent, shares)


def test_fair_picks_respect_room_and_skip_games_without_a_share() -> None:
    shares = {"a": 0.5, "b": 0.5, "c": 0.0}
    cost = dict.fromkeys(shares, 1.0)
    picks = fair_picks(6, shares, {}, {}, cost, {"a": 1, "b": 10, "c": 10})
    assert picks == {"a": 1, "b": 5, "c": 0}
    assert fair_picks(-3, shares, {}, {}, cost, dict.fromkeys(shares, 9)) == dict.fromkeys(
        shares, 0
    )
