"""Fixtures: real nats-server processes (port chosen by the server, temp store) and child processes,
all stopped at teardown even when the test fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.bus.client import BusConfig, NatsBus
from shared.bus.ports import Bus
from shared.bus.server import NatsCluster, NatsServer, ServerSpec

# Registered here, before any test module imports it, so pytest can rewrite its asserts.
pytest_plugins = ["tests.s3server"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(ServerSpec("test", tmp_path / "nats")).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster.create(tmp_path / "cluster")
    try:
        yield cluster.start()
    finally:
        for server in cluster.servers:
            server.kill()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await NatsBus.connect(BusConfig(servers=[nats_server.url], name="test"))
    await b.provision()
    try:
        yield b
    finally:
        await b.close()


class Processes:
    """Spawns service processes for a test and kills every one of them at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def service(
        self, module: str, process: dict[str, Any], config: dict[str, Any]
    ) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{process['node_id']}-{process['service']}-{len(self.procs)}.log"
        argv = [sys.executable, "-m", module, "--process", json.dumps(process)]
        return self.spawn([*argv, "--config", json.dumps(config)], log)

    def spawn(self, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        # Temporary files go under the test's directory: a SIGKILLed process cannot remove
        # its own (seen: dozens of dashboard caches left in /tmp).
        tmp = self.log_dir.parent / "tmp"
        tmp.mkdir(exist_ok=True)
        kw["env"] = {**(kw.get("env") or os.environ), "TMPDIR": str(tmp)}
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, **kw)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with_signal(proc, signal.SIGCONT)
                proc.kill()
            proc.wait()
            # A launcher started in its own session leaves children: end its whole group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        # Anything still running from this test's directory (e.g. the NATS server of a
        # `conclave up` that was SIGKILLed when its test failed) goes too.
        for pid in pids_mentioning(str(self.log_dir.parent)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def pids_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def with_signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.cleanup()


def process_config(url: str | list[str], node: str, service: str, **extra: Any) -> dict[str, Any]:
    urls = [url] if isinstance(url, str) else url
    return {"node_id": node, "service": service, "bus": {"servers": urls, "name": node}, **extra}


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, every: float = 0.05, what: str = "condition"
) -> Any:
    """Poll `check` (sync or async) until it returns a truthy value; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
