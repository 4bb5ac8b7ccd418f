"""bench/ablation.py: every arm is a real preset change, and the table reads the rounds' JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from ablation import ARMS, BASELINE, table

from shared.loop.presets import CONNECT4, tuned


def test_each_arm_changes_the_preset_and_only_the_baseline_keeps_it() -> None:
    changed = {name: tuned(CONNECT4, list(tune)) != CONNECT4 for name, tune in ARMS.items()}
    assert changed == {name: name != BASELINE for name in ARMS}


def _strength(overall: float) -> dict[str, Any]:
    groups = {"overall": overall, "quiet": overall + 0.05, "<=14": 0.3, "15-28": 0.15, ">28": 0.1}
    return {"agents": {"gen3": {g: {"rate": r} for g, r in groups.items()}, "onestep": {}}}


def test_the_table_has_a_row_per_round_with_both_sides() -> None:
    def run(games: int, promoted: int) -> dict[str, Any]:
        return {"games": games, "promoted": promoted, "rejected": 0}

    results = {
        "resign": {
            "tune": ["effects.resign=true"],
            "load_average_1m": [1.0, 2.5],
            "runs": {BASELINE: run(1200, 2), "resign": run(1500, 3)},
            "strength": {BASELINE: _strength(0.25), "resign": _strength(0.2)},
        }
    }
    [row] = table(results).splitlines()[2:]
    assert row == (
        "| resign | `effects.resign=true` | 1200 / 1500 | 2 / 3 | 0.250 / 0.200 | 0.300 / 0.250"
        " | 0.300 / 0.150 / 0.100 | 1.0 to 2.5 |"
    )
