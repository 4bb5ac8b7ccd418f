"""The node's side of `conclave fleet upgrade`: a wheel uploaded into the `wheels` store, fetched
and verified by digest, installed into a fresh venv and proven by `conclave self-test` there; a
wheel that fails any step is refused and the node keeps the python it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from schemas import names
from schemas.control import PROTOCOL, WheelRef
from shared.bus.ports import Bus
from shared.cli import selftest
from shared.node.upgrade import (
    UpgradeRefused,
    current_python,
    prepare,
    record_switch,
    upload_wheel,
)
from shared.runtime.service import VERSION
from shared.work.models import CHUNK_BYTES, ModelStore, sha256_hex
from tests.conftest import pids_mentioning
from tests.wheels import ROOT, build_wheel

SELF_TEST = ["-m", "shared.cli.main", "self-test", "--json"]
F = TypeVar("F", bound=Callable[..., Any])


def heavy(test: F) -> F:
    """Builds or installs a wheel: minutes of CPU, so one at a time (like tests/test_wheel.py)."""
    for mark in (pytest.mark.slow, pytest.mark.xdist_group("heavy"), pytest.mark.timeout(240)):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def good_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("good"), version="9.9.9")


@pytest.fixture(scope="module")
def broken_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def break_trainer(src: Path) -> None:
        trainer = src / "services" / "trainer.py"
        trainer.write_text(trainer.read_text() + '\nraise RuntimeError("broken on purpose")\n')

    return build_wheel(tmp_path_factory.mktemp("broken"), version="9.9.8", edit=break_trainer)


def self_test(python: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [python, *SELF_TEST]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def reference(wheel: Path, version: str) -> WheelRef:
    data = wheel.read_bytes()
    return WheelRef(name=wheel.name, digest=sha256_hex(data), size=len(data), version=version)


def test_the_self_test_passes_in_this_checkout(tmp_path: Path) -> None:
    done = self_test(sys.executable, ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {
        "version": VERSION,
        "protocol": PROTOCOL,
        "python": sys.executable,
        "package_dir": str(ROOT / "shared"),
        "ok": True,
    }


def test_the_self_test_names_a_module_that_fails_to_import() -> None:
    with pytest.raises(selftest.SelfTestFailed, match=r"^import services\.nothing: "):
        selftest._import("services.nothing")


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        ("notes.txt", b"hello", "not a wheel of conclave"),
        ("other-1.0-py3-none-any.whl", b"PK", "not a wheel of conclave"),
        ("conclave-1.0-py3-none-any.whl", b"not a zip", "not a zip archive"),
        ("conclave-1.0-py3-none-any.whl", None, "METADATA"),
    ],
)
async def test_uploading_a_file_that_is_no_conclave_wheel_names_it(
    bus: Bus, tmp_path: Path, name: str, content: bytes | None, complaint: str
) -> None:
    path = tmp_path / name
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("shared/__init__.py", "")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=complaint) as refused:
        await upload_wheel(bus, path)
    assert str(path) in str(refused.value)


async def test_a_blob_that_does_not_match_the_order_is_refused_and_discarded(
    bus: Bus, tmp_path: Path
) -> None:
    root, name = tmp_path / "node", "conclave-9.9.9-py3-none-any.whl"
    promised = sha256_hex(b"the wheel the admin meant")
    await bus.put_object(names.WHEELS_STORE, promised, b"something else", CHUNK_BYTES)
    with pytest.raises(UpgradeRefused, match=r"^digest mismatch: "):
        await prepare(bus, WheelRef(name=name, digest=promised, size=25, version="9.9.9"), root)

    stored = await ModelStore(bus, tmp_path / "w", store=names.WHEELS_STORE).put(b"real bytes")
    wrong_size = WheelRef(name=name, digest=stored, size=11, version="9.9.9")
    with pytest.raises(UpgradeRefused, match=r"^size mismatch: "):
        await prepare(bus, wrong_size, root)

    missing = WheelRef(name=name, digest="0" * 64, size=1, version="9.9.9")
    with pytest.raises(UpgradeRefused, match="not in the object store"):
        await prepare(bus, missing, root)
    assert [p for p in (root / "wheels").iterdir()] == []
    assert not (root / "venvs").exists() and current_python(root) is None


def test_the_switch_is_recorded_and_forgotten_once_its_python_is_gone(tmp_path: Path) -> None:
    root = tmp_path / "node"
    assert current_python(root) is None
    record_switch(root, sys.executable)
    assert current_python(root) == sys.executable
    gone = tmp_path / "venvs" / "old" / "bin" / "python"
    record_switch(root, str(gone))
    assert current_python(root) is None
    assert sorted(p.name for p in root.iterdir()) == ["current"]


@heavy
async def test_an_uploaded_wheel_is_prepared_into_its_own_venv(
    bus: Bus, tmp_path: Path, good_wheel: Path
) -> None:
    ref = await upload_wheel(bus, good_wheel)
    assert ref == reference(good_wheel, "9.9.9")
    assert await upload_wheel(bus, good_wheel) == ref  # already there: a no-op

    root, empty = tmp_path / "node", tmp_path / "empty"
    empty.mkdir()
    python = await prepare(bus, ref, root)
    venv = root / "venvs" / f"9.9.9-{ref.digest[:12]}"
    assert python == str(venv / "bin" / "python")
    report = json.loads(self_test(python, empty).stdout)
    assert report["version"] == "9.9.9" and report["ok"] is True
    assert Path(report["package_dir"]).is_relative_to(venv)
    assert (venv / "bin" / "nats-server").exists()
    record_switch(root, python)
    assert current_python(root) == python
    assert await prepare(bus, ref, root) == python  # prepared already: self-tested again only

    # The upgraded node upgrades again: its venv's packages are its own, the rest the first's.
    again = await prepare(bus, ref, tmp_path / "next", base_python=python)
    assert json.loads(self_test(again, empty).stdout)["version"] == "9.9.9"


@heavy
async def test_a_wheel_that_fails_its_self_test_is_refused(
    bus: Bus, tmp_path: Path, broken_wheel: Path
) -> None:
    root = tmp_path / "node"
    record_switch(root, sys.executable)
    ref = await upload_wheel(bus, broken_wheel)
    with pytest.raises(UpgradeRefused) as refused:
        await prepare(bus, ref, root)
    reason = "self-test failed: import services.trainer: RuntimeError: broken on purpose"
    assert refused.value.reason == reason
    assert current_python(root) == sys.executable


@heavy
async def test_a_step_that_overruns_is_killed_and_refused(
    bus: Bus, tmp_path: Path, good_wheel: Path
) -> None:
    root = tmp_path / "node"
    ref = await upload_wheel(bus, good_wheel)
    with pytest.raises(UpgradeRefused, match=r"^timed out after 1s"):
        await prepare(bus, ref, root, timeout_s=1)
    assert pids_mentioning(str(root)) == []
    assert not list(root.glob(".upgrade-*")), "its scratch directory was left"
