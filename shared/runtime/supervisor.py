"""Run service processes and keep them running: restart on exit, kill and restart on a stall.

Each child writes a pulse line to a pipe about once a second from its event loop, so a child whose
loop is blocked (or that was SIGSTOPped) goes quiet and is replaced. The pipe also tells a child
that its supervisor is gone: its next pulse fails with EPIPE and it shuts itself down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shared.runtime.service import wait_or_stop

log = logging.getLogger("conclave.supervisor")

Outcome = Literal["exited", "stalled", "stopped"]


@dataclass(frozen=True)
class ChildSpec:
    """A service process; `argv(fd)` builds its command line given the pulse pipe's fd."""

    name: str
    argv: Callable[[int], list[str]]
    log_path: Path | None = None


@dataclass(frozen=True)
class Limits:
    stall_s: float = 5.0
    startup_s: float = 60.0
    stop_grace_s: float = 5.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    healthy_after_s: float = 60.0


def backoff(failures: int, limits: Limits) -> float:
    """Delay before the next restart after `failures` quick failures in a row."""
    if failures <= 0:
        return 0.0
    return float(min(limits.backoff_cap_s, limits.backoff_base_s * 2 ** (failures - 1)))


@dataclass
class Child:
    """One supervised service and its history."""

    spec: ChildSpec
    limits: Limits
    pid: int | None = None
    restarts: int = 0
    last_outcome: Outcome | None = None
    history: list[tuple[float, Outcome]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            started = time.monotonic()
            outcome = await self._run_once(stop)
            self.last_outcome = outcome
            self.history.append((time.time(), outcome))
            if outcome == "stopped":
                return
            quick = time.monotonic() - started < self.limits.healthy_after_s
            failures = failures + 1 if quick else 1
            self.restarts += 1
            delay = backoff(failures, self.limits)
            log.warning(
                "service %s %s; restarting in %.1fs",
                self.spec.name,
                outcome,
                delay,
                extra={"service_name": self.spec.name, "restarts": self.restarts},
            )
            await wait_or_stop(stop, delay)

    async def _run_once(self, stop: asyncio.Event) -> Outcome:
        read_fd, write_fd = os.pipe()
        try:
            proc = await self._spawn(write_fd)
        finally:
            os.close(write_fd)
        self.pid = proc.pid
        reader, transport = await _pipe_reader(read_fd)
        try:
            return await self._until_done(proc, reader, stop)
        finally:
            transport.close()

    async def _until_done(
        self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader, stop: asyncio.Event
    ) -> Outcome:
        watch = asyncio.ensure_future(self._watch(reader))
        waiter = asyncio.ensure_future(proc.wait())
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({watch, waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (watch, stopper):
            task.cancel()
        if waiter in done:
            return "exited"
        if stopper in done:
            await _terminate(proc, self.limits.stop_grace_s)
            return "stopped"
        _kill(proc)
        await proc.wait()
        return "stalled"

    async def _spawn(self, write_fd: int) -> asyncio.subprocess.Process:
        out = self.spec.log_path.open("ab") if self.spec.log_path else None
        try:
            return await asyncio.create_subprocess_exec(
                *self.spec.argv(write_fd),
                pass_fds=(write_fd,),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        finally:
            if out is not None:
                out.close()

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        """Return when the child has been silent too long (or closed its pipe)."""
        timeout = self.limits.startup_s
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout)
            except TimeoutError:
                return
            if not line:
                await asyncio.sleep(timeout)  # pipe closed: the waiter will see the exit first
                return
            timeout = self.limits.stall_s


async def _pipe_reader(read_fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(read_fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader, transport


async def _terminate(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        _kill(proc)
        await proc.wait()


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
