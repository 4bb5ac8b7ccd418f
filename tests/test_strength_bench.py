import json
from pathlib import Path

import pytest

from bench.strength import QUIET, STAGES, cached_positions, is_quiet, main, report
from shared.learn.baselines import make_agent
from shared.learn.games.connect4 import GAME
from shared.learn.solver.connect4 import move_values


def test_labelled_positions_are_cached_and_split_by_stage(tmp_path: Path) -> None:
    positions, cached = cached_positions(seed=3, count=13, cache=tmp_path)
    assert not cached
    assert [p.stage for p in positions] == ["<=14"] * 5 + ["15-28"] * 4 + [">28"] * 4
    assert len({p.moves for p in positions}) == 13
    for position in positions[::4]:
        assert position.values == move_values(GAME.parse(position.moves))
    assert all(len(set(p.values.values())) > 1 for p in positions)
    assert cached_positions(seed=3, count=13, cache=tmp_path) == (positions, True)


def test_report_shape_and_onestep_no_worse_than_random(tmp_path: Path) -> None:
    positions, _ = cached_positions(seed=5, count=30, cache=tmp_path)
    out = report(positions, [make_agent("random"), make_agent("onestep")], seed=5)
    assert out["counts"] == {"<=14": 10, "15-28": 10, ">28": 10}
    assert set(out["agents"]) == {"random", "onestep"}
    for stages in out["agents"].values():
        assert list(stages) == [name for name, _, _ in STAGES] + [QUIET, "overall"]
        assert stages["overall"]["positions"] == 30
        assert 0 < stages[QUIET]["positions"] < 30
        for figures in stages.values():
            assert figures["rate"] == round(figures["mistakes"] / figures["positions"], 4)
    rates = {name: stages["overall"]["rate"] for name, stages in out["agents"].items()}
    assert rates["onestep"] <= rates["random"]


def test_quiet_positions_have_no_win_and_nothing_to_block() -> None:
    assert is_quiet(GAME.parse("44"))
    assert not is_quiet(GAME.parse("141414"))  # the mover wins in column 1
    assert not is_quiet(GAME.parse("14141"))  # the opponent threatens column 1: block it


def test_main_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--json", "--positions", "6", "--baselines", "onestep", "--cache", str(tmp_path)]
    main(argv)
    out = json.loads(capsys.readouterr().out)
    assert out["positions"] == 6 and out["seed"] == 0 and out["checkpoint"] is None
    assert out["agents"]["onestep"]["overall"]["positions"] == 6
    assert not out["cached"]
