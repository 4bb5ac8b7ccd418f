"""Games from entry points: discovered next to the built-ins, clashes and broken packages
warned about by name and never fatal, and `conclave games` listing each with its source.

The packages are real distributions on disk (`*.dist-info` with `entry_points.txt`) in a
directory put on `sys.path`, where `importlib.metadata` finds them as it finds installed ones.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.cli.games import GameInfo, board_of, table
from shared.learn.games import (
    BUILT_IN,
    Game,
    UnknownGame,
    game_names,
    game_source,
    get_game,
    players_of,
    rescan,
)
from shared.learn.games.entrypoints import Found, merge, problems
from shared.learn.games.mnk import MnkGame
from tests.conftest import ROOT

MODULE = """
from shared.learn.games.mnk import MnkGame

GAME = MnkGame("tinygame", 3, 4, 3, gravity=False)
CLASH = MnkGame("tictactoe", 4, 4, 3, gravity=False)
OTHER = MnkGame("tinygame", 4, 4, 3, gravity=False)
FIVE = MnkGame("fiveplayer", 3, 3, 3, gravity=False)
FIVE.num_players = 5
NOT_A_GAME = "a string"


class Factory(MnkGame):
    def __init__(self) -> None:
        super().__init__("fromclass", 4, 4, 3, gravity=False)


def make() -> MnkGame:
    return MnkGame("fromfunction", 3, 5, 3, gravity=True, players=3)


def explode() -> MnkGame:
    raise RuntimeError("no board today")
"""

PACKAGES = {
    "fakegames": {
        "tinygame": "fakegames_mod:GAME",
        "tictactoe": "fakegames_mod:CLASH",
        "fiveplayer": "fakegames_mod:FIVE",
        "notagame": "fakegames_mod:NOT_A_GAME",
        "fromclass": "fakegames_mod:Factory",
        "fromfunction": "fakegames_mod:make",
        "explodes": "fakegames_mod:explode",
        "missing": "fakegames_nowhere:GAME",
    },
    "othergames": {"tinygame": "fakegames_mod:OTHER"},
}


def fake_site(where: Path) -> Path:
    """A directory of two distributions and the module their entry points load."""
    where.mkdir()
    (where / "fakegames_mod.py").write_text(MODULE)
    for distribution, entries in PACKAGES.items():
        info = where / f"{distribution}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n"
        )
        lines = [f"{name} = {target}" for name, target in entries.items()]
        (info / "entry_points.txt").write_text("[conclave.games]\n" + "\n".join(lines) + "\n")
    return where


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = fake_site(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    rescan()
    try:
        yield site
    finally:
        sys.modules.pop("fakegames_mod", None)
        rescan()  # the next use reads the entry points again, without these


def test_the_built_ins_come_first_and_the_packages_games_join_them(packages: Path) -> None:
    builtin = get_game("tictactoe")
    assert builtin.encoding_shape[1:] == (3, 3), "the package's 4x4 clash must not win"
    assert game_source("tictactoe") == BUILT_IN
    assert {"tinygame", "fromclass", "fromfunction"} <= set(game_names())
    assert game_source("tinygame") == "fakegames"  # before othergames, by name
    assert board_of(get_game("tinygame")) == (3, 4)
    assert game_source("fromclass") == "fakegames"
    assert players_of("fromfunction") == 3


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("fiveplayer", "num_players is 5"),
        ("notagame", "missing methods"),
        ("explodes", "calling it raised RuntimeError: no board today"),
        ("missing", "cannot import it: ModuleNotFoundError"),
    ],
)
def test_a_refused_entry_point_says_why_when_asked_for(packages: Path, name: str, why: str) -> None:
    assert name not in game_names()
    with pytest.raises(UnknownGame, match=why) as refused:
        get_game(name)
    assert "fakegames" in str(refused.value)
    assert isinstance(refused.value, ValueError), "workers refuse such jobs as bad input"


def test_each_clash_and_refusal_is_one_warning_naming_the_entry_point(
    packages: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.learn.games"):
        game_names()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = [("fakegames", n, t) for n, t in PACKAGES["fakegames"].items()]
    expected += [("othergames", "tinygame", PACKAGES["othergames"]["tinygame"])]
    used = {("fakegames", n) for n in ("tinygame", "fromclass", "fromfunction")}
    for distribution, name, target in expected:
        mention = f"entry point {name!r} ({target}) of package {distribution!r}"
        found = [w for w in warnings if mention in w]
        assert len(found) == (0 if (distribution, name) in used else 1), (mention, warnings)
    assert any("clashes with the built-in game" in w for w in warnings)
    assert any("clashes with package 'fakegames'" in w for w in warnings)


def test_conclave_games_lists_every_game_with_its_source(packages: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(packages)}
    argv = [sys.executable, "-m", "shared.cli.main", "games", "--json"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = {game["name"]: game for game in json.loads(done.stdout)}
    assert listed["tinygame"] == {
        "name": "tinygame",
        "players": 2,
        "board": [3, 4],
        "source": "fakegames",
    }
    assert listed["tictactoe"]["source"] == BUILT_IN
    assert listed["fromfunction"]["players"] == 3
    assert not {"fiveplayer", "notagame", "explodes", "missing"} & set(listed)
    assert "'missing' (fakegames_nowhere:GAME) of package 'fakegames'" in done.stderr


def test_the_table_has_a_row_per_game_under_its_header() -> None:
    infos = [GameInfo("a-long-name", 2, (3, 3), BUILT_IN), GameInfo("b", 4, (10, 12), "pkg")]
    head, *rows = table(infos).splitlines()
    assert head.split() == ["name", "players", "board", "source"]
    assert [row.split() for row in rows] == [
        ["a-long-name", "2", "3x3", BUILT_IN],
        ["b", "4", "10x12", "pkg"],
    ]
    starts = {
        line.index(cell) for line, cell in zip([head, *rows], ["players", "2", "4"], strict=True)
    }
    assert len(starts) == 1, "columns line up"


@given(st.integers(-3, 8))
def test_only_two_to_four_players_make_a_game(players: int) -> None:
    game = MnkGame("candidate", 3, 3, 3, gravity=False)
    game.num_players = players
    faults = problems(game, "candidate")
    assert bool(faults) == (not 2 <= players <= 4)
    assert all("num_players" in fault for fault in faults)


@pytest.mark.parametrize(
    ("name", "why"),
    [("other", "not the entry point's 'other'"), ("bad.name", "must be 1-64 characters")],
)
def test_a_game_must_carry_its_entry_points_name_and_fit_a_subject(name: str, why: str) -> None:
    game = MnkGame("bad.name" if "." in name else "candidate", 3, 3, 3, gravity=False)
    assert any(why in fault for fault in problems(game, name))


GAMES = {name: MnkGame(name, 3, 3, 3, gravity=False) for name in ("g1", "g2", "g3")}
BUILTINS: dict[str, Game[Any]] = {"g1": MnkGame("g1", 4, 4, 3, gravity=False)}
entries = st.builds(
    lambda name, dist, ok: Found(
        name, f"{dist}_mod:X", dist, game=GAMES[name] if ok else None, problem="" if ok else "bad"
    ),
    st.sampled_from(sorted(GAMES)),
    st.sampled_from(["pkg-a", "pkg-b", "pkg-c"]),
    st.booleans(),
)


@given(st.lists(entries, max_size=8, unique_by=lambda f: (f.name, f.distribution)), st.randoms())
def test_merging_is_the_same_in_any_discovery_order(found: list[Found], rng: Any) -> None:
    """Every node picks the same game for a name, whatever order its entry points come in."""
    shuffled = list(found)
    rng.shuffle(shuffled)
    one, other = merge(BUILTINS, found), merge(BUILTINS, shuffled)
    assert one.sources == other.sources and one.refused == other.refused
    assert one.games == other.games
    assert one.games["g1"] is BUILTINS["g1"] and one.sources["g1"] == BUILT_IN
    for name, source in one.sources.items():
        usable = sorted(f.distribution for f in found if f.name == name and f.game is not None)
        assert source == (BUILT_IN if name in BUILTINS else usable[0])
    assert not set(one.refused) & set(one.games)
    assert len(one.warnings) == len(found) - (len(one.games) - len(BUILTINS))
