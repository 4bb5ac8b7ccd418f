"""Job parameters derived from the loop's settings (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.loopeffects import EffectSettings, selfplay_sims


def test_a_fixed_budget_by_default() -> None:
    assert [selfplay_sims(EffectSettings(selfplay_sims=64), g) for g in (0, 5, 50)] == [64] * 3


def test_a_progressive_budget_ramps_from_start_to_full() -> None:
    settings = EffectSettings(selfplay_sims=64, selfplay_sims_start=16, sims_ramp_generations=8)
    assert [selfplay_sims(settings, g) for g in (0, 4, 8, 20)] == [16, 40, 64, 64]


@given(st.integers(1, 400), st.integers(1, 400), st.integers(0, 30), st.integers(-1, 100))
def test_the_budget_stays_between_start_and_full(
    start: int, full: int, ramp: int, gen: int
) -> None:
    settings = EffectSettings(
        selfplay_sims=full, selfplay_sims_start=start, sims_ramp_generations=ramp
    )
    sims = selfplay_sims(settings, gen)
    assert min(start, full) <= sims <= max(start, full)
