import math

import numpy as np
import pytest

from shared.loop.sprt import SprtConfig, elo_from_score, elo_interval, llr, score_from_elo, sprt


def _logistic(elo: float) -> float:
    return 1.0 / (1.0 + math.pow(10.0, -elo / 400.0))


def _gsprt_by_hand(w: float, d: float, lo: float, elo0: float, elo1: float) -> float:
    n = w + d + lo
    mean = (w + 0.5 * d) / n
    # var = E[x^2] - E[x]^2 with x in {1, 1/2, 0}.
    var = (w * 1.0 + d * 0.25) / n - mean**2
    s0, s1 = _logistic(elo0), _logistic(elo1)
    return n * (s1 - s0) * (2 * mean - s0 - s1) / (2 * var)


def test_score_elo_round_trip_and_anchors() -> None:
    assert score_from_elo(0.0) == 0.5
    assert score_from_elo(400.0) == pytest.approx(10 / 11)
    assert elo_from_score(10 / 11) == pytest.approx(400.0)
    assert elo_from_score(0.0) == -math.inf
    assert elo_from_score(1.0) == math.inf
    for elo in (-900.0, -20.0, 0.0, 35.5, 1200.0):
        assert elo_from_score(score_from_elo(elo)) == pytest.approx(elo)
    assert score_from_elo(-1e6) == 0.0
    assert score_from_elo(1e6) == 1.0


@pytest.mark.parametrize("score", [-0.1, 1.5, math.nan])
def test_elo_from_score_rejects_out_of_range(score: float) -> None:
    with pytest.raises(ValueError, match="score"):
        elo_from_score(score)


def test_llr_matches_hand_computation() -> None:
    # 10 W, 5 D, 5 L: N = 20, s_bar = 12.5/20 = 0.625, var = 11.25/20 - 0.625^2 = 0.171875.
    s0, s1 = _logistic(-20.0), _logistic(0.0)
    expected = 20 * (s1 - s0) * (2 * 0.625 - s0 - s1) / (2 * 0.171875)
    assert llr(10, 5, 5, -20.0, 0.0) == pytest.approx(expected, rel=1e-12)
    assert llr(10, 5, 5, -20.0, 0.0) == pytest.approx(_gsprt_by_hand(10, 5, 5, -20.0, 0.0))
    assert llr(3, 1, 7, 0.0, 20.0) == pytest.approx(_gsprt_by_hand(3, 1, 7, 0.0, 20.0))


def test_llr_sign_follows_the_score() -> None:
    assert llr(30, 40, 30, -20.0, 0.0) > 0  # score 0.5 is nearer elo1 = 0
    assert llr(30, 40, 30, 0.0, 20.0) < 0  # and nearer elo0 = 0 than elo1 = 20
    assert llr(30, 40, 30, -10.0, 10.0) == pytest.approx(0.0, abs=1e-12)


def test_bounds_are_walds() -> None:
    r = sprt(0, 0, 0, SprtConfig())
    assert r.lower == pytest.approx(math.log(0.05 / 0.95))
    assert r.upper == pytest.approx(math.log(0.95 / 0.05))
    assert r.upper == pytest.approx(2.944, abs=1e-3)


def test_clearly_better_accepts_h1() -> None:
    r = sprt(60, 20, 20, SprtConfig())
    assert r.decision == "accept_h1"
    assert not r.truncated
    assert r.elo == pytest.approx(elo_from_score(0.7))
    assert r.elo_lo < r.elo < r.elo_hi


def test_clearly_worse_accepts_h0() -> None:
    r = sprt(20, 20, 60, SprtConfig())
    assert r.decision == "accept_h0"
    assert r.elo < -20.0


def test_strict_gate_rejects_an_equal_candidate() -> None:
    strict = SprtConfig(elo0=0.0, elo1=20.0)
    assert sprt(400, 400, 400, strict).decision == "accept_h0"
    assert sprt(400, 400, 400, SprtConfig(max_games=10_000)).decision == "accept_h1"


def test_few_games_continue() -> None:
    r = sprt(3, 2, 2, SprtConfig())
    assert r.decision == "continue"
    assert r.games == 7


@pytest.mark.parametrize(
    ("wins", "draws", "losses", "decision"),
    [(22, 30, 20, "accept_h1"), (19, 30, 23, "accept_h1"), (18, 30, 24, "accept_h0")],
)
def test_cap_promotes_unless_estimate_below_elo0(
    wins: int, draws: int, losses: int, decision: str
) -> None:
    cfg = SprtConfig(max_games=wins + draws + losses)
    r = sprt(wins, draws, losses, cfg)
    assert r.lower < r.llr < r.upper
    assert r.truncated
    assert r.decision == decision
    assert (r.elo >= cfg.elo0) == (decision == "accept_h1")


def test_cap_rule_is_lenient_below_the_wald_midpoint() -> None:
    # Estimate ~ -19 Elo: the likelihood favours H0 (LLR < 0) but the candidate is not shown worse.
    r = sprt(19, 30, 23, SprtConfig(max_games=72))
    assert r.llr < 0
    assert r.decision == "accept_h1"


def test_zero_games() -> None:
    r = sprt(0, 0, 0, SprtConfig())
    assert (r.llr, r.decision, r.games, r.elo) == (0.0, "continue", 0, 0.0)
    assert (r.elo_lo, r.elo_hi) == (-math.inf, math.inf)


def test_all_draws_is_evidence_for_equal_strength() -> None:
    # An unseen outcome counts as 1/2, so 2 draws do not decide but 100 do.
    few, many = sprt(0, 2, 0, SprtConfig()), sprt(0, 100, 0, SprtConfig())
    assert few.decision == "continue"
    assert few.llr == pytest.approx(_gsprt_by_hand(0.5, 2, 0.5, -20.0, 0.0))
    assert many.decision == "accept_h1"
    assert many.elo == 0.0
    assert math.isfinite(many.elo_lo) and math.isfinite(many.elo_hi)


@pytest.mark.parametrize(("wins", "losses"), [(50, 0), (0, 50), (1, 0), (0, 1)])
def test_one_sided_results_are_finite(wins: int, losses: int) -> None:
    r = sprt(wins, 0, losses, SprtConfig())
    assert math.isfinite(r.llr)
    assert math.isfinite(r.elo)
    if wins >= 50:
        assert r.decision == "accept_h1"
    if losses >= 50:
        assert r.decision == "accept_h0"


def test_elo_interval_matches_lc0_formula() -> None:
    w, d, lo = 30, 10, 20
    mu = (w + d / 2) / 60
    sd = math.sqrt(w * (1 - mu) ** 2 + d * (0.5 - mu) ** 2 + lo * mu**2) / 60
    elo, low, high = elo_interval(w, d, lo)
    assert elo == pytest.approx(elo_from_score(mu))
    assert low == pytest.approx(elo_from_score(mu - 1.959964 * sd))
    assert high == pytest.approx(elo_from_score(mu + 1.959964 * sd))


def test_counts_validated_by_name() -> None:
    with pytest.raises(ValueError, match="draws"):
        sprt(1, -1, 0, SprtConfig())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"elo0": 0.0, "elo1": 0.0}, "elo1"),
        ({"elo0": math.inf}, "elo0"),
        ({"alpha": 0.0}, "alpha"),
        ({"beta": 1.0}, "beta"),
        ({"alpha": 0.6, "beta": 0.5}, "beta"),
        ({"max_games": 0}, "max_games"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"SprtConfig.{field}"):
        SprtConfig(**kwargs)  # type: ignore[arg-type]


def _false_accept_rate(elo: float, draw_rate: float, runs: int, seed: int) -> float:
    """Fraction of uncapped SPRTs (checked every 16 games) that accept H1 at true `elo`."""
    cfg = SprtConfig(max_games=1_000_000)
    rng = np.random.default_rng(seed)
    s = _logistic(elo)
    p = np.array([s - draw_rate / 2, draw_rate, 1 - s - draw_rate / 2])
    step, checks = 16, 750
    blocks = rng.multinomial(step, p, size=(runs, checks))
    counts = np.cumsum(blocks, axis=1)
    accepted = 0
    for run in range(runs):
        for n in range(checks):
            w, d, lo = (int(c) for c in counts[run, n])
            decision = sprt(w, d, lo, cfg).decision
            if decision != "continue":
                accepted += decision == "accept_h1"
                break
    return accepted / runs


def test_false_positive_rate_at_elo0_is_about_alpha() -> None:
    # 300 runs: the binomial s.e. of a 5% rate is ~1.3%, so allow alpha + 3 s.e.
    assert _false_accept_rate(-20.0, draw_rate=0.3, runs=300, seed=7) <= 0.05 + 0.04


def test_power_at_elo1_is_about_one_minus_beta() -> None:
    assert _false_accept_rate(0.0, draw_rate=0.3, runs=100, seed=11) >= 0.95 - 0.07
