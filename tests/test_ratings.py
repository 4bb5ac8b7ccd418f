import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.loop.ratings import (
    ELO_PER_NAT,
    MAX_GAMES,
    MAX_PLAYERS,
    PairResult,
    Rating,
    fit,
    pairing_uncertainty,
)

Z95 = 1.959963984540054


def _simulate(true_elo: dict[str, float], games: int, rng: np.random.Generator) -> list[PairResult]:
    """Every pair plays `games` games; draws take 40% of the weaker side's expected score."""
    names = sorted(true_elo)
    results = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            s = 1.0 / (1.0 + 10.0 ** ((true_elo[b] - true_elo[a]) / 400.0))
            draw = 0.4 * min(s, 1.0 - s)
            w, d, lo = rng.multinomial(games, [s - draw / 2, draw, 1.0 - s - draw / 2])
            results.append(PairResult(a=a, b=b, wins_a=int(w), draws=int(d), wins_b=int(lo)))
    return results


def test_two_players_by_hand() -> None:
    # 7 W, 2 D, 1 L plus one virtual draw: A scores 8.5 of 11, so theta = ln(8.5 / 2.5) and the
    # information is n p (1 - p) = 11 * (8.5/11) * (2.5/11).
    r = fit([PairResult(a="a", b="random", wins_a=7, draws=2, wins_b=1)])
    theta = math.log(8.5 / 2.5)
    sd = 1.0 / math.sqrt(11 * (8.5 / 11) * (2.5 / 11))
    assert r["a"].elo == pytest.approx(400 * math.log10(8.5 / 2.5))
    assert r["a"].elo == pytest.approx(theta * ELO_PER_NAT)
    assert r["a"].hi - r["a"].elo == pytest.approx(Z95 * sd * ELO_PER_NAT)
    assert r["a"].elo - r["a"].lo == pytest.approx(Z95 * sd * ELO_PER_NAT)
    assert r["a"].games == 10
    assert r["random"] == Rating(elo=0.0, lo=0.0, hi=0.0, games=10)


def test_recovers_known_strengths() -> None:
    true_elo = {"random": 0.0, "g1": 120.0, "g2": 260.0, "g3": 330.0, "g4": 480.0, "g5": 610.0}
    covered, total, errors = 0, 0, []
    for seed in range(6):
        ratings = fit(_simulate(true_elo, 60, np.random.default_rng(seed)))
        assert ratings["random"].elo == 0.0
        for name, elo in true_elo.items():
            if name == "random":
                continue
            r = ratings[name]
            covered += r.lo <= elo <= r.hi
            total += 1
            errors.append(abs(r.elo - elo))
    assert covered / total >= 0.85
    assert float(np.mean(errors)) < 40.0


def test_orientation_and_repeats_are_summed() -> None:
    split = fit(
        [
            PairResult(a="a", b="random", wins_a=3, draws=1, wins_b=1),
            PairResult(a="random", b="a", wins_a=1, draws=1, wins_b=3),
            PairResult(a="a", b="b", wins_a=2, draws=0, wins_b=2),
        ]
    )
    whole = fit(
        [
            PairResult(a="a", b="random", wins_a=6, draws=2, wins_b=2),
            PairResult(a="b", b="a", wins_a=2, draws=0, wins_b=2),
        ]
    )
    assert split == whole


def test_symmetric_results_give_equal_ratings() -> None:
    cycle = fit(
        [
            PairResult(a="a", b="b", wins_a=5, draws=2, wins_b=3),
            PairResult(a="b", b="c", wins_a=5, draws=2, wins_b=3),
            PairResult(a="c", b="a", wins_a=5, draws=2, wins_b=3),
            *(PairResult(a=x, b="random", wins_a=4, draws=2, wins_b=4) for x in "abc"),
        ]
    )
    for name in "abc":
        assert cycle[name].elo == pytest.approx(0.0, abs=1e-6)
    twins = fit(
        [
            PairResult(a="x", b="random", wins_a=8, draws=1, wins_b=3),
            PairResult(a="y", b="random", wins_a=8, draws=1, wins_b=3),
        ]
    )
    assert twins["x"] == twins["y"]


def test_intervals_shrink_with_more_games() -> None:
    few = fit(
        [
            PairResult(a="a", b="random", wins_a=6, draws=2, wins_b=2),
            PairResult(a="b", b="a", wins_a=5, draws=3, wins_b=2),
        ]
    )
    many = fit(
        [
            PairResult(a="a", b="random", wins_a=96, draws=32, wins_b=32),
            PairResult(a="b", b="a", wins_a=80, draws=48, wins_b=32),
        ]
    )
    for name in ("a", "b"):
        assert many[name].hi - many[name].lo < 0.5 * (few[name].hi - few[name].lo)
        assert math.isfinite(few[name].hi - few[name].lo)


def test_all_wins_and_all_losses_are_finite() -> None:
    r = fit(
        [
            PairResult(a="strong", b="random", wins_a=10, draws=0, wins_b=0),
            PairResult(a="weak", b="random", wins_a=0, draws=0, wins_b=10),
        ]
    )
    assert r["strong"].elo == pytest.approx(400 * math.log10(10.5 / 0.5))
    assert r["weak"].elo == pytest.approx(-r["strong"].elo)
    for name in ("strong", "weak"):
        assert math.isfinite(r[name].lo) and math.isfinite(r[name].hi)
        assert r[name].lo < r[name].elo < r[name].hi


def test_long_chain_is_not_pulled_to_the_anchor() -> None:
    # Ten generations, each 200 Elo above the last and rated only against its neighbour.
    chain = ["random", *(f"g{k}" for k in range(1, 11))]
    s = 1.0 / (1.0 + 10.0**-0.5)
    wins = round(400 * s)
    results = [
        PairResult(a=b, b=a, wins_a=wins, draws=0, wins_b=400 - wins)
        for a, b in itertools.pairwise(chain)
    ]
    r = fit(results)
    assert r["g10"].elo == pytest.approx(2000.0, abs=20.0)


def test_disconnected_players_are_flagged() -> None:
    r = fit(
        [
            PairResult(a="a", b="random", wins_a=3, draws=0, wins_b=1),
            PairResult(a="x", b="y", wins_a=6, draws=2, wins_b=2),
        ]
    )
    assert r["a"].connected
    for name in ("x", "y"):
        assert not r[name].connected
        assert (r[name].lo, r[name].hi) == (-math.inf, math.inf)
        assert math.isfinite(r[name].elo)
    assert r["x"].elo + r["y"].elo == pytest.approx(0.0, abs=1e-9)
    assert r["x"].elo - r["y"].elo == pytest.approx(400 * math.log10(7.5 / 3.5))


def test_missing_anchor_is_reported_at_zero() -> None:
    r = fit([PairResult(a="a", b="b", wins_a=1, draws=0, wins_b=0)], anchor="random")
    assert r["random"] == Rating(elo=0.0, lo=0.0, hi=0.0, games=0)
    assert not r["a"].connected and not r["b"].connected
    assert fit([]) == {"random": Rating(elo=0.0, lo=0.0, hi=0.0, games=0)}


def test_zero_game_results_do_not_connect() -> None:
    r = fit([PairResult(a="a", b="random", wins_a=0, draws=0, wins_b=0)])
    assert not r["a"].connected
    assert r["a"].games == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"a": "x", "b": "x"}, "PairResult.b"),
        ({"a": ""}, "PairResult.a"),
        ({"b": None}, "PairResult.b"),
        ({"wins_a": -1}, "PairResult.wins_a"),
        ({"draws": -2}, "PairResult.draws"),
        ({"wins_b": 1.5}, "PairResult.wins_b"),
        ({"wins_b": MAX_GAMES + 1}, "PairResult.wins_b"),
    ],
)
def test_an_unusable_result_names_its_field_and_is_dropped(
    kwargs: dict[str, object], field: str, caplog: pytest.LogCaptureFixture
) -> None:
    fields: dict[str, object] = {"a": "p", "b": "random", "wins_a": 1, "draws": 0, "wins_b": 0}
    bad = PairResult(**(fields | kwargs))  # type: ignore[arg-type]
    assert field in (bad.problem() or "")
    good = PairResult(a="q", b="random", wins_a=3, draws=1, wins_b=1)
    assert fit([bad, good]) == fit([good])
    assert field in caplog.text


def test_a_good_result_has_no_problem() -> None:
    assert PairResult(a="a", b="random", wins_a=0, draws=0, wins_b=MAX_GAMES).problem() is None


def test_the_pool_keeps_the_players_with_most_games() -> None:
    rows = [
        PairResult(a=f"p{i:04d}", b="random", wins_a=1 + (i < 3), draws=0, wins_b=0)
        for i in range(MAX_PLAYERS + 5)
    ]
    ratings = fit(rows)
    assert len(ratings) == MAX_PLAYERS
    assert {"random", "p0000", "p0001", "p0002"} <= ratings.keys()
    assert f"p{MAX_PLAYERS + 4:04d}" not in ratings


_any_name = st.sampled_from(["random", "a", "b", "c", ""]) | st.text(max_size=3)
_any_count = st.integers(min_value=-3, max_value=30) | st.integers(
    min_value=-(10**30), max_value=10**30
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            PairResult,
            a=_any_name,
            b=_any_name,
            wins_a=_any_count,
            draws=_any_count,
            wins_b=_any_count,
        ),
        max_size=10,
    )
)
def test_the_fit_never_raises_and_rates_only_usable_results(rows: list[PairResult]) -> None:
    ratings = fit(rows)
    usable = [r for r in rows if r.problem() is None]
    assert ratings.keys() == {"random"} | {name for r in usable for name in (r.a, r.b)}
    for r in ratings.values():
        assert math.isfinite(r.elo)
        assert r.lo <= r.elo <= r.hi


def test_pairing_prefers_unrated_then_uncertain_close_pairs() -> None:
    ratings = {
        "random": Rating(elo=0.0, lo=0.0, hi=0.0, games=100),
        "g1": Rating(elo=400.0, lo=380.0, hi=420.0, games=400),
        "g2": Rating(elo=420.0, lo=300.0, hi=540.0, games=20),
        "g3": Rating(elo=900.0, lo=800.0, hi=1000.0, games=30),
    }
    pairs = pairing_uncertainty(ratings, ["random", "g1", "g2", "g3", "new"], count=2)
    assert pairs == [("g3", "new"), ("g1", "g2")]
    assert pairing_uncertainty(ratings, ["g1", "g2", "g3"]) == [("g1", "g2")]
    assert pairing_uncertainty(ratings, ["g1"]) == []
    with pytest.raises(ValueError, match="count"):
        pairing_uncertainty(ratings, ["g1", "g2"], count=-1)


def test_pairing_uses_each_player_once() -> None:
    ratings = fit(
        [
            PairResult(a="a", b="random", wins_a=5, draws=2, wins_b=3),
            PairResult(a="b", b="a", wins_a=1, draws=1, wins_b=1),
        ]
    )
    pairs = pairing_uncertainty(ratings, ratings, count=10)
    used = [name for pair in pairs for name in pair]
    assert len(used) == len(set(used))
    assert len(pairs) == 1


_names = st.sampled_from(["random", "a", "b", "c", "d"])
_counts = st.integers(min_value=0, max_value=30)
_results = st.lists(
    st.tuples(_names, _names, _counts, _counts, _counts).filter(lambda t: t[0] != t[1]),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(_results)
def test_random_result_sets_give_finite_or_flagged_ratings(
    rows: list[tuple[str, str, int, int, int]],
) -> None:
    ratings = fit(PairResult(a=a, b=b, wins_a=w, draws=d, wins_b=lost) for a, b, w, d, lost in rows)
    assert ratings["random"] == Rating(elo=0.0, lo=0.0, hi=0.0, games=ratings["random"].games)
    for r in ratings.values():
        assert math.isfinite(r.elo)
        assert r.lo <= r.elo <= r.hi
        assert math.isfinite(r.lo) == math.isfinite(r.hi) == r.connected
    pairs = pairing_uncertainty(ratings, ratings)
    assert len(pairs) == len(ratings) // 2
