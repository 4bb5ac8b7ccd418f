"""Background evaluation planning (pure): the CPU meter, the budget, job sizes, early stopping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.loop.evalplan import (
    CpuMeter,
    CpuReading,
    EvalBudget,
    background_jobs,
    evaluation_share,
    games_for,
    gauntlet_settled,
    score_interval,
)

BUDGET = EvalBudget()


def reading(process: str, service: str, cpu: float) -> CpuReading:
    return CpuReading(process, service, cpu)


def test_the_first_reading_is_only_a_baseline() -> None:
    meter = CpuMeter(window_s=600)
    meter.update([reading("n/selfplay/1", "selfplay", 500.0)], now=0.0)
    assert meter.used() == {"selfplay": 0.0}
    meter.update([reading("n/selfplay/1", "selfplay", 530.0)], now=10.0)
    assert meter.used() == {"selfplay": 30.0}


def test_a_process_started_later_counts_all_its_cpu_and_a_restart_is_a_new_process() -> None:
    meter = CpuMeter(window_s=600)
    meter.update([reading("n/evaluator/1", "evaluator", 100.0)], now=0.0)
    meter.update([reading("n/evaluator/2", "evaluator", 4.0)], now=10.0)
    meter.update([reading("n/evaluator/2", "evaluator", 6.0)], now=20.0)
    assert meter.used() == {"evaluator": 6.0}


def test_readings_older_than_the_window_drop_out() -> None:
    meter = CpuMeter(window_s=60)
    meter.update([reading("p", "selfplay", 0.0)], now=0.0)
    meter.update([reading("p", "selfplay", 50.0)], now=30.0)
    meter.update([reading("p", "selfplay", 60.0)], now=100.0)
    assert meter.used() == {"selfplay": 10.0}


@given(st.lists(st.floats(min_value=0, max_value=1e4), min_size=2, max_size=30))
def test_used_cpu_is_never_negative_whatever_the_readings(cpus: list[float]) -> None:
    meter = CpuMeter(window_s=1e9)
    for t, cpu in enumerate(cpus):
        meter.update([reading("p", "evaluator", cpu)], now=float(t))
    assert meter.used()["evaluator"] >= 0.0


def test_evaluation_share_is_over_the_workers_only() -> None:
    used = {"selfplay": 70.0, "trainer": 10.0, "evaluator": 20.0, "scheduler": 500.0}
    assert evaluation_share(used) == pytest.approx(0.2)
    assert evaluation_share({"heartbeat": 3.0}) is None


def test_no_background_work_while_a_match_is_queued_or_over_budget() -> None:
    assert background_jobs(2, queued_matches=1, queued_background=0, share=0.0, budget=BUDGET) == 0
    assert background_jobs(2, 0, 0, share=0.15, budget=BUDGET) == 0
    assert background_jobs(0, 0, 0, share=None, budget=BUDGET) == 0


def test_background_work_fills_idle_evaluators_only() -> None:
    assert background_jobs(2, 0, 0, share=None, budget=BUDGET) == 2
    assert background_jobs(2, 0, 1, share=0.05, budget=BUDGET) == 1
    assert background_jobs(2, 0, 5, share=0.05, budget=BUDGET) == 0


@given(
    st.integers(0, 50),
    st.integers(0, 5),
    st.integers(0, 200),
    st.one_of(st.none(), st.floats(0, 1)),
)
def test_background_work_is_bounded_by_the_evaluators(
    workers: int, matches: int, queued: int, share: float | None
) -> None:
    jobs = background_jobs(workers, matches, queued, share, BUDGET)
    assert 0 <= jobs <= workers * BUDGET.background_per_evaluator
    assert queued + jobs <= max(queued, workers * BUDGET.background_per_evaluator)


def test_bad_counts_name_the_field() -> None:
    with pytest.raises(ValueError, match="queued_background"):
        background_jobs(1, 0, -1, None, BUDGET)
    with pytest.raises(ValueError, match="budget"):
        EvalBudget(budget=0.0)


def test_jobs_are_sized_to_the_measured_pace() -> None:
    assert games_for(1.5, most=40, budget=BUDGET) == 20  # 30 s of 1.5 s games
    assert games_for(0.01, most=40, budget=BUDGET) == 40
    assert games_for(100.0, most=40, budget=BUDGET) == 2
    assert games_for(None, most=40, budget=BUDGET) == 20  # unmeasured: half


@given(st.one_of(st.none(), st.floats(0, 1e6)), st.integers(2, 500))
def test_job_sizes_are_even_and_within_bounds(pace: float | None, most: int) -> None:
    games = games_for(pace, most, BUDGET)
    assert 2 <= games <= max(2, most)
    assert games % 2 == 0 or games == most


def test_a_one_sided_or_well_measured_gauntlet_stops_early() -> None:
    assert not gauntlet_settled(0, 0, 0, BUDGET)
    assert not gauntlet_settled(6, 0, 0, BUDGET)  # 6-0: the interval is still wide
    assert gauntlet_settled(20, 0, 0, BUDGET)  # 20-0 against random: enough
    assert gauntlet_settled(0, 0, 40, BUDGET)
    assert not gauntlet_settled(12, 0, 8, BUDGET)  # 60% +- 21%
    assert not gauntlet_settled(30, 0, 20, BUDGET)
    assert gauntlet_settled(60, 0, 40, BUDGET)  # 60% +- 9.5%


@given(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300))
def test_the_score_interval_contains_the_score(wins: int, draws: int, losses: int) -> None:
    score, lo, hi = score_interval(wins, draws, losses)
    assert 0.0 <= lo <= score <= hi <= 1.0


@given(st.one_of(st.none(), st.floats(0, 1e6)), st.integers(3, 500), st.integers(3, 4))
def test_jobs_of_more_players_are_whole_seat_rotations(
    pace: float | None, most: int, seats: int
) -> None:
    games = games_for(pace, most, BUDGET, seats)
    assert games % seats == 0 and seats <= games <= max(seats, most)


def test_pairs_of_one_game_count_as_one_games_evidence() -> None:
    # 60 pairs from 30 three-player games: as settled as 30 games, not as 60.
    assert gauntlet_settled(60, 0, 40, BUDGET)
    assert not gauntlet_settled(60, 0, 40, BUDGET, pairs_per_game=2)
    assert gauntlet_settled(120, 0, 80, BUDGET, pairs_per_game=2)
