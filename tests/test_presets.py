"""Presets: a registered game without a preset of its own gets a generic one."""

from __future__ import annotations

import pytest

from shared.loop import presets
from shared.loop.presets import PRESETS, TICTACTOE, preset


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
    with pytest.raises(ValueError, match="no preset 'nope'; known: tictactoe, connect4"):
        preset("nope")
