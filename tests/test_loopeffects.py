"""Job parameters derived from the loop's settings (pure)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import names
from schemas.codec import decode, encode
from schemas.jobs import ModelEvent, ModelMeta, TrainJob
from shared.bus.ports import Bus
from shared.loop.effects import Effects, EffectSettings, selfplay_sims
from shared.loop.policy import GameState, LoopConfig, LoopState, Reject, StartTraining
from shared.loop.presets import BadTuning, preset, tuned
from shared.loop.sprt import SprtConfig, sprt
from shared.work.jobs import JobSettings, Puller, ensure_consumer


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


async def test_selfplay_jobs_carry_the_calibrated_resign_threshold_when_enabled(bus: Bus) -> None:
    await bus.provision()
    meta = ModelMeta(
        sha256="ab" * 32,
        game="tictactoe",
        generation=3,
        parent_sha256="",
        size_bytes=10,
        window_first_seq=1,
        window_last_seq=9,
        positions=100,
        steps=50,
        policy_loss=1.0,
        value_loss=0.5,
        created_at=0.0,
        train_job="t3",
    )
    meta = msgspec.structs.replace(meta, resign_threshold=-0.93, resign_samples=400)
    await bus.write(names.REGISTRY_BUCKET, names.model_key("tictactoe", meta.sha256), encode(meta))
    loop = LoopConfig(games=("tictactoe",))
    on = Effects(bus, loop, EffectSettings(resign=True), term=1)
    off = Effects(bus, loop, EffectSettings(), term=1)
    assert await on.resign_value("tictactoe", meta.sha256) == -0.93
    assert await off.resign_value("tictactoe", meta.sha256) is None
    assert await on.resign_value("tictactoe", "cd" * 32) is None  # no metadata: play out


def test_tuning_changes_one_preset_setting_and_names_a_bad_one() -> None:
    base = preset("connect4")
    tuned_up = tuned(
        base,
        ["selfplay.full_search_fraction=0.25", "train.lr_schedule=cosine", "effects.resign=true"],
    )
    assert tuned_up.selfplay.full_search_fraction == 0.25
    assert tuned_up.train.lr_schedule == "cosine" and tuned_up.effects.resign
    assert (
        msgspec.structs.replace(
            tuned_up,
            selfplay=base.selfplay,
            train=base.train,
            effects=base.effects,
        )
        == base
    )
    for bad, why in (
        ("selfplay.nope=1", "no such setting"),
        ("selfplay.full_search_fraction=2", "full_search_fraction"),
        ("noequals", "section.name=value"),
    ):
        with pytest.raises(BadTuning, match=why):
            tuned(base, [bad])


async def test_a_decided_match_is_marked_for_the_evaluators(bus: Bus) -> None:
    await bus.provision()
    effects = Effects(bus, LoopConfig(games=("tictactoe",)), EffectSettings(), term=1)
    result = sprt(10, 0, 90, SprtConfig())
    await effects.carry_out(
        Reject(game="tictactoe", candidate="cd" * 32, generation=3, result=result), LoopState()
    )
    entry = await bus.last(names.REGISTRY_BUCKET, names.decided_key("tictactoe", "cd" * 32))
    assert entry.value is not None
    event = decode(entry.value, ModelEvent)
    assert (event.kind, event.generation, event.sha256) == ("rejected", 3, "cd" * 32)


async def test_training_after_a_rejected_candidate_starts_from_the_best(bus: Bus) -> None:
    await bus.provision()
    effects = Effects(bus, LoopConfig(games=("tictactoe",)), EffectSettings(), term=1)
    rejected = ModelMeta(
        sha256="cd" * 32,
        game="tictactoe",
        generation=3,
        parent_sha256="ab" * 32,
        size_bytes=10,
        window_first_seq=1,
        window_last_seq=9,
        positions=100,
        steps=50,
        policy_loss=1.0,
        value_loss=0.5,
        created_at=0.0,
        train_job="tictactoe-t2",
    )
    await bus.write(names.REGISTRY_BUCKET, names.trained_key("tictactoe-t2"), encode(rejected))
    state = LoopState({"tictactoe": GameState(generation=2, best="ab" * 32, trainings=2)})
    await ensure_consumer(bus, "train", JobSettings())
    await effects.carry_out(StartTraining("tictactoe", 3, 3, 600), state)
    puller = Puller(bus, "train", TrainJob)
    delivery = await puller.next(timeout_s=2.0)
    assert delivery is not None
    assert delivery.job.parent_sha256 == "ab" * 32
