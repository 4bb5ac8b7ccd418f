"""`--config FILE.toml`: several configurations with their own settings, bad files named."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.scheduler import SchedulerConfig
from services.selfplay import SelfplayWorkerConfig
from services.trainer import TrainerConfig
from shared.loop.configfile import BadConfigFile, load, parse
from shared.loop.policy import GameSnapshot, GameState, LoopState, Snapshot, next_actions
from shared.loop.presets import PRESETS
from shared.node.launcher import NodeOptions, loop_service_config, node_presets

THREE = """
[tictactoe]
weight = 1
[tictactoe.effects]
selfplay_sims = 16

[tictacmo]
weight = 2
window_games = 3000
[tictacmo.loop]
games_per_generation = 123

["connect3-6x7-3p"]
[ "connect3-6x7-3p".net ]
blocks = 1
"""


def test_each_configuration_starts_from_its_preset_and_takes_the_files_settings() -> None:
    configs = parse(THREE, "three.toml")
    assert list(configs.presets) == ["tictactoe", "tictacmo", "connect3-6x7-3p"]
    assert configs.weights == {"tictactoe": 1.0, "tictacmo": 2.0, "connect3-6x7-3p": 1.0}
    ttt, mo, c3 = configs.presets.values()
    assert ttt.effects.selfplay_sims == 16
    assert ttt.net == PRESETS["tictactoe"].net
    assert mo.window_games == 3000 and mo.loop.games_per_generation == 123
    assert mo.loop.sprt == PRESETS["tictacmo"].loop.sprt
    assert c3.net.blocks == 1 and c3.net.channels == PRESETS["connect3-6x7-3p"].net.channels
    assert [p.loop.games for p in configs.presets.values()] == [
        ("tictactoe",),
        ("tictacmo",),
        ("connect3-6x7-3p",),
    ]


def test_a_configuration_may_start_from_another_preset_and_tune_applies_to_all() -> None:
    text = '[tictactoe]\npreset = "soak"\n[tictacmo]\n'
    configs = parse(text, "f.toml", ["effects.train_steps=7"])
    ttt = configs.presets["tictactoe"]
    assert ttt.net == PRESETS["soak"].net and ttt.loop.games == ("tictactoe",)
    assert {p.effects.train_steps for p in configs.presets.values()} == {7}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[tictactoe]\neffects.selfplay_simz = 3",
            r"f.toml: \[tictactoe\] effects.selfplay_simz: no such setting",
        ),
        (
            '[tictactoe]\neffects.selfplay_sims = "a"',
            r"\[tictactoe\] effects.selfplay_sims: Expected `int`",
        ),
        (
            "[tictactoe]\nweight = -1",
            r"\[tictactoe\] weight: expected a finite number >= 0, got -1",
        ),
        ("[tictactoe]\nweight = true", r"\[tictactoe\] weight: expected a finite number"),
        ("[nope]", r"\[nope\]: no game 'nope' is installed; known: "),
        ("[tictactoe]\nloop.games_per_generation = 0", r"games_per_generation must be >= 1"),
        ("[tictactoe]\nloop.games = ['x']", r"\[tictactoe\] loop.games: a configuration trains"),
        ('[tictactoe]\npreset = "nope"', r"\[tictactoe\] preset: no preset 'nope'"),
        ("tictactoe = 1", r"\[tictactoe\]: expected a table of settings, got 1"),
        ("[tictactoe", r"f.toml: not TOML"),
        ("", r"f.toml: no configuration"),
    ],
)
def test_a_bad_file_fails_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(BadConfigFile, match=message):
        parse(text, "f.toml")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BadConfigFile, match=r"nothing\.toml"):
        load(tmp_path / "nothing.toml")


@given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=0, max_value=1e6))
def test_weights_are_read_as_given(a: float, b: float) -> None:
    configs = parse(f"[tictactoe]\nweight = {a!r}\n[tictacmo]\nweight = {b!r}\n", "w.toml")
    assert configs.weights == {"tictactoe": a, "tictacmo": b}


def _node(**changes: object) -> NodeOptions:
    base = NodeOptions(node_id="n1", roles=["coordinator", "selfplay", "trainer"], nats_urls=[])
    return msgspec.structs.replace(base, **changes)


def test_the_launcher_gives_each_service_every_configurations_own_settings() -> None:
    configs = parse(THREE, "three.toml")
    opts = _node(configs=configs.presets, weights=configs.weights)
    presets = node_presets(opts)
    scheduler = loop_service_config("scheduler", opts, presets)
    assert isinstance(scheduler, SchedulerConfig)
    assert scheduler.loop.games == ("tictactoe", "tictacmo", "connect3-6x7-3p")
    assert scheduler.loop.for_game("tictacmo").games_per_generation == 123
    assert scheduler.loop.for_game("tictactoe").games_per_generation == 400
    assert scheduler.effects_by_game["tictactoe"].selfplay_sims == 16
    assert scheduler.loop.weights == {"tictactoe": 1.0, "tictacmo": 2.0, "connect3-6x7-3p": 1.0}
    selfplay = loop_service_config("selfplay", opts, presets)
    assert isinstance(selfplay, SelfplayWorkerConfig)
    assert selfplay.for_game("tictacmo").engine == configs.presets["tictacmo"].selfplay
    trainer = loop_service_config("trainer", opts, presets)
    assert isinstance(trainer, TrainerConfig)
    assert trainer.for_game("connect3-6x7-3p").net.blocks == 1
    assert trainer.for_game("tictacmo").window_games == 3000
    assert trainer.widest_window() == max(p.window_games for p in configs.presets.values())


def test_one_game_without_a_file_configures_the_services_as_before() -> None:
    opts = _node(game="tictactoe")
    scheduler = loop_service_config("scheduler", opts, node_presets(opts))
    assert isinstance(scheduler, SchedulerConfig)
    assert scheduler.loop == PRESETS["tictactoe"].loop and not scheduler.effects_by_game
    trainer = loop_service_config("trainer", opts, node_presets(opts))
    assert isinstance(trainer, TrainerConfig) and not trainer.per_game


def test_the_policy_trains_each_configuration_on_its_own_games_per_generation() -> None:
    loop = loop_service_config(
        "scheduler", _node(configs=parse(THREE, "t.toml").presets), parse(THREE, "t.toml").presets
    )
    assert isinstance(loop, SchedulerConfig)
    ready = GameState(generation=0, best="b" * 64)
    state = LoopState({name: ready for name in loop.loop.games})
    snapshot = Snapshot(1, 1, {name: GameSnapshot(games_total=200) for name in loop.loop.games})
    trained = {
        a.game
        for a in next_actions(state, snapshot, loop.loop)
        if type(a).__name__ == "StartTraining"
    }
    assert trained == {"tictacmo"}  # 200 new games: past its 123, short of the others' 400/500
