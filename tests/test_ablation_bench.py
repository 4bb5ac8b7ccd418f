"""bench/ablation.py: every arm is a real preset change, and the table reads the runs' JSON."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from ablation import ARMS, table

from shared.presets import CONNECT4, tuned


def test_each_arm_changes_the_preset_and_only_the_baseline_keeps_it() -> None:
    changed = {name: tuned(CONNECT4, list(tune)) != CONNECT4 for name, tune in ARMS.items()}
    assert changed == {name: name != "baseline" for name in ARMS}


def test_the_table_has_a_row_per_measured_arm_with_its_rates() -> None:
    rates = {g: {"rate": r} for g, r in [("overall", 0.2), ("quiet", 0.25), ("<=14", 0.3)]}
    rates |= {"15-28": {"rate": 0.15}, ">28": {"rate": 0.1}}
    run = {"games": 2400, "promoted": 3, "rejected": 1}
    result = {"tune": [], "load_average_1m": [1.0, 2.5], "run": run}
    results = {
        "baseline": result | {"strength": {"agents": {"gen3": rates, "onestep": {}}}},
        "resign": result | {"tune": ["effects.resign=true"], "strength": None},
    }
    rows = table(results).splitlines()[2:]
    assert rows[0] == (
        "| baseline | preset | 2400 | 3 (1) | 0.200 | 0.250 | 0.300 / 0.150 / 0.100 | 1.0 to 2.5 |"
    )
    assert rows[1].startswith("| resign | `effects.resign=true` | 2400 | 3 (1) | — | — |")
