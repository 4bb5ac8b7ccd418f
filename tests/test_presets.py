"""Presets: a registered game without a preset of its own gets a generic one."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.loop import presets
from shared.loop.presets import PRESET_DIR, PRESETS, TICTACTOE, BadPreset, preset, read_preset


def test_a_named_preset_is_returned_as_is() -> None:
    assert preset("tictactoe") is PRESETS["tictactoe"]


def test_a_game_without_a_preset_gets_tictactoes_settings_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    others = {k: v for k, v in PRESETS.items() if k not in ("tictacmo", "connect4")}
    monkeypatch.setattr(presets, "PRESETS", others)
    three = preset("tictacmo")
    assert three.loop.games == ("tictacmo",)
    assert three.loop.eval_games_per_job % 3 == 0  # each seat played equally by the candidate
    two = preset("connect4")
    assert two.loop.games == ("connect4",)
    assert two.effects == TICTACTOE.effects and two.net == TICTACTOE.net


def test_an_unknown_name_is_refused_listing_what_is_known() -> None:
    with pytest.raises(ValueError, match=r"no preset 'nope'; known: connect3-6x7-3p, .*tictactoe"):
        preset("nope")


def test_every_preset_file_gives_a_whole_preset_for_its_game() -> None:
    for name, found in PRESETS.items():
        assert found.loop.games in {(name,), ("tictactoe",)}  # soak plays tic-tac-toe
        assert read_preset(PRESET_DIR / f"{name}.toml") == found


def test_a_preset_file_with_a_key_that_names_no_setting_is_refused(tmp_path: Path) -> None:
    text = (PRESET_DIR / "tictactoe.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("train_steps = 300", "train_stepz = 300"))
    with pytest.raises(BadPreset, match=r"bad\.toml: \[tictactoe\] effects.train_stepz: no such"):
        read_preset(bad)
    bad.write_text(text + "\n[connect4]\n")
    with pytest.raises(BadPreset, match="expected one table"):
        read_preset(bad)
