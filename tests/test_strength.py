"""Effective strength: the first ladder rung where the model no longer beats its fair share."""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bench.effective_strength import main as bench_main
from bench.fair_share import main as fair_share_main
from shared.learn.strength import FAIR_SHARE, Rung, ShareTest, effective_strength, merged

SIMS = st.sampled_from([1, 2, 5, 25, 50, 100, 200, 400, 800])


@st.composite
def rungs(draw: st.DrawFn, sims: st.SearchStrategy[int] = SIMS) -> Rung:
    wins, draws, losses = (draw(st.integers(0, 40)) for _ in range(3))
    if wins + draws + losses == 0:
        draws = 1
    return Rung(draw(sims), wins, draws, losses)


LADDERS = st.lists(rungs(), min_size=1, max_size=8)


def exact_score(rung: Rung) -> Fraction:
    return Fraction(2 * rung.wins + rung.draws, 2 * rung.pairs)


@given(LADDERS)
def test_the_answer_is_the_first_rung_not_beaten(ladder: list[Rung]) -> None:
    strength = effective_strength(ladder)
    by_sims = merged(ladder)
    beaten = [exact_score(r) > Fraction(1, 2) for r in by_sims]
    if strength is None:
        assert all(beaten)
        return
    index = [r.sims for r in by_sims].index(strength)
    assert not beaten[index]
    assert all(beaten[:index])


@given(LADDERS, st.data())
def test_the_order_of_the_ladder_does_not_matter(ladder: list[Rung], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(ladder))
    assert effective_strength(shuffled) == effective_strength(ladder)


@given(LADDERS, st.data())
def test_a_rung_played_in_two_batches_counts_as_one(
    ladder: list[Rung], data: st.DataObject
) -> None:
    rung = data.draw(st.sampled_from(ladder))
    wins, draws, losses = (data.draw(st.integers(0, n)) for n in rung.counts)
    first = (wins, draws, losses)
    second = (rung.wins - wins, rung.draws - draws, rung.losses - losses)
    assume(sum(first) > 0 and sum(second) > 0)  # a batch of no games is not a rung
    split = [r for r in ladder if r is not rung] + [
        Rung(rung.sims, *first),
        Rung(rung.sims, *second),
    ]
    assert effective_strength(split) == effective_strength(ladder)


def _rank(strength: int | None) -> float:
    return float("inf") if strength is None else strength


@given(LADDERS, st.data())
def test_turning_a_loss_into_a_win_never_lowers_the_strength(
    ladder: list[Rung], data: st.DataObject
) -> None:
    losing = [i for i, rung in enumerate(ladder) if rung.losses]
    assume(losing)
    index = data.draw(st.sampled_from(losing))
    rung = ladder[index]
    better = [*ladder]
    better[index] = Rung(rung.sims, rung.wins + 1, rung.draws, rung.losses - 1)
    assert _rank(effective_strength(better)) >= _rank(effective_strength(ladder))


@given(rungs())
def test_score_and_fair_share_agree(rung: Rung) -> None:
    assert rung.score == pytest.approx(float(exact_score(rung)))
    assert rung.beats_fair_share == (exact_score(rung) > Fraction(1, 2))


def test_exactly_half_is_not_beating_the_fair_share() -> None:
    even = Rung(100, wins=3, draws=2, losses=3)
    assert even.score == FAIR_SHARE
    assert effective_strength([Rung(50, 4, 0, 3), even, Rung(200, 0, 0, 9)]) == 100


def test_a_model_beating_every_rung_has_no_effective_strength() -> None:
    assert effective_strength([Rung(25, 9, 1, 2), Rung(400, 5, 4, 3)]) is None


def test_the_first_failure_counts_even_if_a_later_rung_is_beaten() -> None:
    # Noise can make a stronger opponent look weaker; the smallest failing rung still decides.
    assert effective_strength([Rung(25, 8, 0, 0), Rung(50, 1, 0, 7), Rung(100, 8, 0, 0)]) == 50


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1, 0, 0), "sims must be >= 1"),
        ((10, -1, 2, 0), "counts must be >= 0"),
        ((10, 0, 0, 0), "has no results"),
    ],
)
def test_bad_rungs_are_refused(args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rung(*args)


def test_an_empty_ladder_measures_nothing() -> None:
    with pytest.raises(ValueError, match="no rungs"):
        effective_strength([])


def test_the_bench_reports_every_rung_and_their_effective_strength(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--game", "tictacmo", "--ladder", "4,1", "--games", "3", "--sims", "4", "--json"]
    assert bench_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["players"] == 3
    assert [r["sims"] for r in report["rungs"]] == [1, 4]
    ladder = [Rung(r["sims"], r["wins"], r["draws"], r["losses"]) for r in report["rungs"]]
    assert report["effective_strength"] == effective_strength(ladder)
    for row, rung in zip(report["rungs"], ladder, strict=True):
        assert row["games"] == 3
        assert rung.pairs == 3 * (report["players"] - 1)
        assert row["score"] == round(rung.score, 4)
        assert row["beats_fair_share"] == rung.beats_fair_share


# -- the fair-share SPRT ----------------------------------------------------------------------


@given(st.integers(2, 4), st.integers(0, 300), st.data())
def test_winning_more_games_never_lowers_the_evidence_for_above_fair_share(
    players: int, games: int, data: st.DataObject
) -> None:
    test = ShareTest(players)
    won = data.draw(st.integers(0, games))
    if won < games:
        assert test.llr(won + 1, games) > test.llr(won, games)
    assert test.llr(0, 0) == 0.0 and test.decision(0, 0) == "continue"


def test_a_third_of_three_player_games_is_no_more_than_a_fair_share() -> None:
    test = ShareTest(3)
    assert test.decision(50, 150) == "not above"  # exactly 1/3
    assert test.decision(75, 150) == "above"  # 1/2
    assert test.decision(4, 6) == "continue"  # too few games to say
    assert ShareTest(2).p0 == 0.5 and ShareTest(4, margin=0.1).p1 == pytest.approx(0.35)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"players": 5}, "players"),
        ({"players": 2, "margin": 0.6}, "margin"),
        ({"players": 3, "alpha": 0.0}, "alpha"),
    ],
)
def test_a_bad_share_test_is_refused_by_name(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ShareTest(**kwargs)


def test_won_out_of_games_is_checked() -> None:
    with pytest.raises(ValueError, match="won must be in"):
        ShareTest(3).llr(5, 4)


def test_the_fair_share_bench_plays_batches_until_the_test_decides(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = "--game tictacmo --opponent mcts:8 --sims 4 --batch 6 --max-games 12 --json"
    fair_share_main(args.split())
    out = json.loads(capsys.readouterr().out)
    assert out["players"] == 3 and out["games"] in (6, 12) and out["pairs"] == 2 * out["games"]
    test = ShareTest(3)
    assert out["llr"] == round(test.llr(out["games_won"], out["games"]), 3)
    assert out["decision"] == test.decision(out["games_won"], out["games"])
