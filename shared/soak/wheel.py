"""Wheels of this checkout, built offline from a copy of its sources (the checkout is left
alone): the soak's rolling upgrade installs one with a bumped version, and the tests that
install a wheel build theirs here too."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "services", "shared", "schemas")
BUILT = ("*.so", "*.pyc", "__pycache__", "build", "*.egg-info")  # products, not sources
PROJECT_VERSION = re.compile(r'^version = "([^"]*)"$', re.MULTILINE)
BUILD_TIMEOUT_S = 240


def build_wheel(
    tmp: Path, version: str | None = None, edit: Callable[[Path], None] | None = None
) -> Path:
    """`pip wheel` of a copy of the sources in `tmp/src`, into `tmp/dist`: as `version` if given
    (pyproject.toml's [project] version), after `edit(src)` if given."""
    if not (ROOT / "pyproject.toml").is_file():
        raise ValueError(f"no checkout at {ROOT} to build a wheel from: pass a wheel instead")
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
    dist = tmp / "dist"
    subprocess.run([*pip, "-q", "-w", str(dist), str(src)], check=True, timeout=BUILD_TIMEOUT_S)
    [wheel] = dist.glob("conclave-*.whl")
    return wheel


def project_version(pyproject: Path) -> str:
    found = PROJECT_VERSION.search(pyproject.read_text())
    if found is None:
        raise ValueError(f"no [project] version line in {pyproject}")
    return found.group(1)


def set_version(pyproject: Path, version: str) -> None:
    text, found = PROJECT_VERSION.subn(f'version = "{version}"', pyproject.read_text(), count=1)
    if found != 1:
        raise ValueError(f"no [project] version line in {pyproject}")
    pyproject.write_text(text)


def bumped(version: str) -> str:
    """The next patch version of a plain X.Y.Z (anything else gets a patch of its own)."""
    parts = version.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return f"{parts[0]}.{parts[1]}.{int(parts[2]) + 1}"
    return "0.0.1"


def upgrade_wheel(tmp: Path) -> Path:
    """A wheel of this checkout one patch version up, for a rolling upgrade."""
    return build_wheel(tmp, version=bumped(project_version(ROOT / "pyproject.toml")))
