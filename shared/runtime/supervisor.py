"""Run service processes and keep them running: restart on exit, kill and restart on a stall.

Each child writes a pulse line to a pipe about once a second from its event loop, so a child whose
loop is blocked (or that was SIGSTOPped) goes quiet and is replaced. The pipe also tells a child
that its supervisor is gone: its next pulse fails with EPIPE and it shuts itself down.

A child SIGKILLed by someone else (the kernel's OOM killer) while its last pulse said it was on a
job is a kill: its restart is told the job (to record why it failed), and a child killed
`max_kills` times within `kill_window_s` is marked: restarted to take no jobs and say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from schemas.codec import BadMessage, decode
from schemas.control import ServicePulse
from shared.runtime.service import NO_JOBS, restart_args, wait_or_stop

log = logging.getLogger("conclave.supervisor")

Outcome = Literal["exited", "stalled", "stopped"]


@dataclass(frozen=True)
class ChildSpec:
    """A service process; `argv(fd)` builds its command line given the pulse pipe's fd.

    With `restarts_told`, that is a `shared.runtime.service.main` command line, which a restart
    extends with why it must take no jobs and the job its predecessor was killed in."""

    name: str
    argv: Callable[[int], list[str]]
    log_path: Path | None = None
    restarts_told: bool = False


@dataclass(frozen=True)
class Limits:
    stall_s: float = 5.0
    startup_s: float = 60.0
    stop_grace_s: float = 5.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    healthy_after_s: float = 60.0
    max_kills: int = 3  # SIGKILLs mid-job within `kill_window_s` before the child is marked
    kill_window_s: float = 600.0


@dataclass(frozen=True)
class Kill:
    """A child SIGKILLed by someone else while its last pulse said it was `doing` a job."""

    at: float
    doing: str


@dataclass
class KillRecord:
    """Kills mid-job and the mark they earned, shared by every process of one service kind on a
    node (its self-play processes): a node whose jobs of a kind keep dying gets no more."""

    kills: list[Kill] = field(default_factory=list)
    marked: str = ""  # why that kind takes no jobs here ("" while it may): until the node restarts


def is_job(doing: str) -> bool:
    return bool(doing) and not doing.startswith(NO_JOBS)


def marked_reason(kills: list[Kill], limits: Limits) -> str | None:
    """Why a child must take no more jobs: too many kills mid-job lately (None: not so)."""
    if not kills:
        return None
    recent = [k for k in kills if kills[-1].at - k.at <= limits.kill_window_s]
    if len(recent) < limits.max_kills:
        return None
    return (
        f"killed {len(recent)} times in {limits.kill_window_s:.0f}s mid-job "
        f"(last: {recent[-1].doing}); out of memory?"
    )


def backoff(failures: int, limits: Limits, rng: random.Random | None = None) -> float:
    """Delay before the next restart after `failures` quick failures in a row: the base
    doubling up to the cap and, given `rng`, with equal jitter (between half of that and all of
    it), so a fleet whose services all failed at once (a hub restart) does not restart them in
    lockstep, while a crash-looping child still waits at least half. Without `rng`, the
    ceiling: a simulation that must replay exactly."""
    if failures <= 0:
        return 0.0
    doublings = min(failures - 1, 64)  # a child failing for days: 2 ** n stays a float
    ceiling = float(min(limits.backoff_cap_s, limits.backoff_base_s * 2**doublings))
    return ceiling if rng is None else equal_jitter(ceiling, rng)


def equal_jitter(ceiling: float, rng: random.Random) -> float:
    """Uniform in [ceiling / 2, ceiling]: spread, yet never under half."""
    return ceiling / 2 + rng.random() * ceiling / 2


@dataclass
class Child:
    """One supervised service and its history."""

    spec: ChildSpec
    limits: Limits
    pid: int | None = None
    restarts: int = 0
    last_outcome: Outcome | None = None
    history: list[tuple[float, Outcome]] = field(default_factory=list)
    doing: str = ""  # what the running process's last pulse said it was doing
    returncode: int | None = None  # of the last process to end
    record: KillRecord = field(default_factory=KillRecord)  # shared with its kind's siblings
    killed_job: str = ""  # the job the last process was killed in, for the next one to report
    rng: random.Random = field(default_factory=random.Random)  # the restart backoff's jitter

    @property
    def kills(self) -> list[Kill]:
        return self.record.kills

    @property
    def marked(self) -> str:
        return self.record.marked

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            started = time.monotonic()
            outcome = await self._run_once(stop)
            self.last_outcome = outcome
            self.history.append((time.time(), outcome))
            self._check_kill(outcome)
            if outcome == "stopped":
                return
            quick = time.monotonic() - started < self.limits.healthy_after_s
            failures = failures + 1 if quick else 1
            self.restarts += 1
            delay = backoff(failures, self.limits, self.rng)
            log.warning(
                "service %s %s; restarting in %.1fs",
                self.spec.name,
                outcome,
                delay,
                extra={"service_name": self.spec.name, "restarts": self.restarts},
            )
            await wait_or_stop(stop, delay)

    def _check_kill(self, outcome: Outcome) -> None:
        """Record an outside SIGKILL mid-job (ours, of a stalled child, is no kill); mark the
        child once they are too many."""
        if outcome != "exited" or self.returncode != -signal.SIGKILL or not is_job(self.doing):
            return
        self.kills.append(Kill(time.time(), self.doing))
        self.killed_job = self.doing
        log.error(
            "service %s killed by SIGKILL while doing %s (out of memory?)",
            self.spec.name,
            self.doing,
            extra={"service_name": self.spec.name},
        )
        reason = marked_reason(self.kills, self.limits)
        if reason is not None and not self.marked:
            self.record.marked = reason
            log.error("service %s takes no more jobs: %s", self.spec.name, reason)

    async def _run_once(self, stop: asyncio.Event) -> Outcome:
        read_fd, write_fd = os.pipe()
        self.doing = ""
        try:
            proc = await self._spawn(write_fd)
        finally:
            os.close(write_fd)
        self.pid = proc.pid
        self.killed_job = ""  # told to this process, which reports it
        reader, transport = await _pipe_reader(read_fd)
        try:
            return await self._until_done(proc, reader, stop)
        finally:
            self.returncode = proc.returncode
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
                *self.argv(write_fd),
                pass_fds=(write_fd,),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        finally:
            if out is not None:
                out.close()

    def argv(self, write_fd: int) -> list[str]:
        """The next process's command line, told what it must know of its predecessors."""
        told = restart_args(self.marked, self.killed_job) if self.spec.restarts_told else []
        return [*self.spec.argv(write_fd), *told]

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
            self._read_pulse(line)

    def _read_pulse(self, line: bytes) -> None:
        try:
            self.doing = decode(line.strip(), ServicePulse, subject=self.spec.name).doing
        except BadMessage as e:
            log.debug("unreadable pulse from %s: %s", self.spec.name, e)


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


def python_module_argv(module: str, *args: str, python: str | None = None) -> list[str]:
    """Run `module` on `python` (by default this interpreter; an upgrade's is another). `-P`:
    not from the working directory, which `-m` would put first on the path, so a launcher
    started in a checkout still runs the upgrade's installed code, not the checkout's."""
    return [python or sys.executable, "-P", "-m", module, *args]
