"""`conclave self-test`: this installation really works. Every service module and every module
of `shared` and `schemas` imports, all from the one installation whose version is reported, and
a tiny search plays a game of tictactoe. A node runs it in a freshly installed venv before it
switches to it (`shared.node.upgrade`), so it imports torch only when it runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import pkgutil
import sys
from pathlib import Path
from typing import TextIO

SERVICES = ("heartbeat", "leader", "scheduler", "selfplay", "trainer", "evaluator", "syncer")
PACKAGES = ("shared", "schemas")
OURS = ("services", *PACKAGES)
GAME = "tictactoe"
SIMS = 4  # enough to run the search; the game's quality is not the point


class SelfTestFailed(Exception):
    """One line naming the check that failed."""


def import_all() -> list[str]:
    """Import the service modules and every module of PACKAGES; the names imported."""
    imported = [_import(f"services.{name}") for name in SERVICES]
    for package in PACKAGES:
        root = _import(package)
        found = pkgutil.walk_packages(
            sys.modules[root].__path__, f"{package}.", onerror=_walk_failed
        )
        # A `__main__` module runs its program when imported.
        imported += [_import(m.name) for m in found if not m.name.endswith(".__main__")]
    return imported


def _import(name: str) -> str:
    try:
        importlib.import_module(name)
    except (Exception, SystemExit) as e:
        raise SelfTestFailed(f"import {name}: {type(e).__name__}: {e}") from e
    return name


def _walk_failed(name: str) -> None:
    # Called inside the `except` of the package's failed import.
    error = sys.exc_info()[1]
    raise SelfTestFailed(f"import {name}: {type(error).__name__}: {error}") from error


def package_dir() -> Path:
    """Where `shared` was imported from, once every module of ours comes from beside it and from
    the installed `conclave` distribution (not, say, a checkout in the working directory)."""
    import shared

    here = Path(shared.__file__).resolve().parent
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        ours = name.split(".")[0] in OURS and origin
        if ours and not Path(origin).resolve().is_relative_to(here.parent):
            raise SelfTestFailed(f"{name} was imported from {origin}, not beside {here}")
    _check_installed(here)
    return here


def _check_installed(here: Path) -> None:
    try:
        dist = importlib.metadata.distribution("conclave")
    except importlib.metadata.PackageNotFoundError:
        raise SelfTestFailed(f"conclave is not installed for {sys.executable}") from None
    recorded = [f for f in dist.files or () if f.as_posix() == "shared/__init__.py"]
    # An editable install records no package files: its finder points at the checkout.
    if recorded and Path(str(dist.locate_file(recorded[0]))).resolve().parent != here:
        raise SelfTestFailed(
            f"imported shared from {here}, not from conclave {dist.version}'s installation "
            f"at {dist.locate_file(recorded[0])}"
        )


def play_one_game() -> int:
    """A tiny search against random moves, one game of GAME; the number of moves played."""
    import numpy as np

    from shared.learn.arena import AgentPlayer, ModelPlayer, play_match
    from shared.learn.baselines import RandomAgent
    from shared.learn.games import get_game
    from shared.learn.inference import NetEvaluator
    from shared.learn.selftest import fixed_net

    search = ModelPlayer(NetEvaluator(fixed_net(), threads=1), sims=SIMS)
    rng = np.random.default_rng(0)
    outcome = play_match(get_game(GAME), search, AgentPlayer(RandomAgent()), 1, rng)
    if outcome.games != 1 or not outcome.records[0].moves:
        raise SelfTestFailed(f"a game of {GAME} with a {SIMS}-simulation search was not played")
    return len(outcome.records[0].moves)


def run() -> dict[str, object]:
    """Every check; the report. SelfTestFailed naming the first that fails."""
    import_all()
    where = package_dir()
    try:
        play_one_game()
    except SelfTestFailed:
        raise
    except Exception as e:
        raise SelfTestFailed(f"a game of {GAME}: {type(e).__name__}: {e}") from e
    from schemas.control import PROTOCOL
    from shared.runtime.service import VERSION

    return {
        "version": VERSION,
        "protocol": PROTOCOL,
        "python": sys.executable,
        "package_dir": str(where),
        "ok": True,
    }


def self_test_main(as_json: bool, out: TextIO, err: TextIO) -> int:
    """Run every check: 0 and the report on `out`, else 1 and one line on `err`."""
    try:
        report = run()
    except SelfTestFailed as e:
        print(f"conclave self-test: {e}", file=err)
        return 1
    if as_json:
        print(json.dumps(report), file=out)
    else:
        print(
            f"conclave {report['version']} (protocol {report['protocol']}) works: "
            f"{report['python']}, packages in {report['package_dir']}",
            file=out,
        )
    return 0
