"""Wheels of this checkout for the tests that install one: built offline from a copy of the
sources (the checkout is left alone), optionally with another version or edited sources."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "services", "shared", "schemas")
BUILT = ("*.so", "*.pyc", "__pycache__", "build", "*.egg-info")  # products, not sources
PROJECT_VERSION = re.compile(r'^version = "[^"]*"$', re.MULTILINE)


def build_wheel(
    tmp: Path, version: str | None = None, edit: Callable[[Path], None] | None = None
) -> Path:
    """`pip wheel` of a copy of the sources in `tmp/src`, into `tmp/dist`: as `version` if given
    (pyproject.toml's [project] version), after `edit(src)` if given."""
    src = tmp / "src"
    src.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns(*BUILT))
        else:
            shutil.copy2(path, src / name)
    if version is not None:
        set_version(src / "pyproject.toml", version)
    if edit is not None:
        edit(src)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "-q", "-w", str(tmp / "dist"), str(src)], check=True, timeout=240)
    [wheel] = (tmp / "dist").glob("conclave-*.whl")
    return wheel


def set_version(pyproject: Path, version: str) -> None:
    text, found = PROJECT_VERSION.subn(f'version = "{version}"', pyproject.read_text(), count=1)
    assert found == 1, f"no [project] version line in {pyproject}"
    pyproject.write_text(text)
