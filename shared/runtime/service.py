"""The frame every service process runs in: config at the edge, bus, signals, pulses, TaskGroup."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import re
import signal
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import DeviceReport, ServicePulse
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import BusError, ConnectFailed
from shared.bus.ports import Bus, Registration
from shared.runtime import log as logsetup
from shared.runtime.buslog import BusLogHandler
from shared.runtime.counters import CPU, Counters
from shared.runtime.memory import own_rss_bytes
from shared.work.jobs import JOB_TYPES, report_failure

log = logging.getLogger("conclave.service")


def installed_version() -> str:
    """The installed `conclave` package's version (pyproject.toml's when installed from this
    checkout); a placeholder when run from sources that were never installed."""
    try:
        return importlib.metadata.version("conclave")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def semver(version: str) -> str:
    """`version` as the semantic version a micro service must announce (nats-py refuses any
    other): a PEP 440 one that is not (`0.3.0rc1`, `0.3`) goes into `0.0.0+`'s build metadata."""
    if re.fullmatch(SEMVER, version):
        return version
    return "0.0.0+" + ".".join(re.findall(r"[0-9A-Za-z-]+", version))


C = TypeVar("C")
RunFn = Callable[[Bus, C, asyncio.Event], Awaitable[None]]

LAG_TICK_S = 0.05
VERSION = installed_version()
SEMVER = r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
NO_JOBS = "no jobs: "  # what a worker that takes no jobs is doing, then why


class ProcessConfig(msgspec.Struct, frozen=True):
    """What every service process needs besides its own config."""

    node_id: str
    service: str
    bus: BusConfig
    pulse_fd: int | None = None
    pulse_every_s: float = 1.0
    log_level: str = "info"
    # Set by the supervisor on a restart: why this process must take no jobs (its predecessors
    # kept being killed mid-job), and the job the previous process was killed doing.
    marked: str = ""
    killed_job: str = ""  # its pulse's `doing`, e.g. "selfplay sp-abc"


class LoopLag:
    """Measures how late the event loop wakes a sleeper: the lag any other task would suffer."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_TICK_S)
            self.samples.append(max(0.0, loop.time() - start - LAG_TICK_S) * 1000)

    def take(self) -> tuple[float, float]:
        """(p50, max) lag in ms since the last call."""
        samples, self.samples = self.samples, []
        if not samples:
            return 0.0, 0.0
        return statistics.median(samples), max(samples)


def _with_rss(report: DeviceReport | None) -> DeviceReport | None:
    """A worker's device report with its memory now (reading /proc costs microseconds)."""
    return None if report is None else msgspec.structs.replace(report, rss_bytes=own_rss_bytes())


class Pulse:
    """Reports liveness and loop lag to the local supervisor (a pipe) and to the bus."""

    def __init__(self, proc: ProcessConfig, stop: asyncio.Event, counters: Counters) -> None:
        self.proc = proc
        self.stop = stop
        self.counters = counters
        self.lag = LoopLag()
        self.started_at = time.time()
        self.bus: Bus | None = None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.lag.run(), name="loop-lag")
            tg.create_task(self._beat(), name="pulse")

    async def _beat(self) -> None:
        subject = names.pulse_subject(self.proc.node_id, self.proc.service)
        while True:
            await asyncio.sleep(self.proc.pulse_every_s)
            p50, worst = self.lag.take()
            pulse = ServicePulse(
                node=self.proc.node_id,
                service=self.proc.service,
                pid=os.getpid(),
                lag_p50_ms=round(p50, 2),
                lag_max_ms=round(worst, 2),
                started_at=self.started_at,
                sent_at=time.time(),
                counters={**self.counters.snapshot(), CPU: round(time.process_time(), 3)},
                doing=self.counters.doing(),
                compute=_with_rss(self.counters.compute()),
            )
            data = encode(pulse)
            self._to_supervisor(data)
            if self.bus is not None:
                try:
                    await self.bus.publish(subject, data)
                except BusError as e:
                    log.debug("pulse not published: %s", e)

    def _to_supervisor(self, data: bytes) -> None:
        if self.proc.pulse_fd is None:
            return
        try:
            os.write(self.proc.pulse_fd, data + b"\n")
        except BlockingIOError:
            pass  # the supervisor is behind; the next pulse will do
        except BrokenPipeError:
            log.warning("supervisor gone; shutting down")
            self.stop.set()


async def serve(
    proc: ProcessConfig,
    cfg: C,
    run: RunFn[C],
    logs: BusLogHandler | None = None,
    counters: Counters | None = None,
) -> None:
    """Run one service until SIGTERM/SIGINT: pulses start before the bus is reachable and carry
    `counters` (the process's work counters; none if it counts nothing); log lines go to the bus
    (`logs`) once it is. A `marked` process never runs the service: it pulses why until stopped.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    counters = Counters() if counters is None else counters
    if proc.marked:
        log.error("taking no jobs: %s", proc.marked)
        counters.set_doing(NO_JOBS + proc.marked)
    pulse = Pulse(proc, stop, counters)
    if proc.pulse_fd is not None:
        os.set_blocking(proc.pulse_fd, False)
    async with asyncio.TaskGroup() as tg:
        pulse_task = tg.create_task(pulse.run(), name="pulse")
        bus = await connect_until(proc.bus, stop)
        logs_task = None
        if bus is not None:
            pulse.bus = bus
            if logs is not None:
                logs_task = tg.create_task(logs.publish_forever(bus), name="logs")
            micro = await register(bus, proc)
            try:
                if proc.killed_job:
                    await report_killed_job(bus, proc)
                if proc.marked:
                    await stop.wait()  # pulses say why meanwhile: `conclave status` shows it
                else:
                    await run(bus, cfg, stop)
            finally:
                if micro is not None:
                    await micro.stop()
                await bus.close()
        pulse_task.cancel()
        if logs_task is not None:
            logs_task.cancel()


def killed_job_of(doing: str) -> tuple[str, str] | None:
    """(kind, job id) of a pulse's `doing` ("selfplay sp-abc"), None if it names no job."""
    kind, _, job_id = doing.partition(" ")
    return (kind, job_id) if kind in JOB_TYPES and job_id else None


async def report_killed_job(bus: Bus, proc: ProcessConfig) -> None:
    """Record why the previous process's job failed, for its redelivery and dead letter: the
    kernel's SIGKILL left it no chance to say so itself."""
    job = killed_job_of(proc.killed_job)
    if job is None:
        log.warning("killed mid-%r, which names no job: nothing to report", proc.killed_job)
        return
    kind, job_id = job
    reason = f"killed by SIGKILL (out of memory?) on node {proc.node_id} ({proc.service})"
    log.warning("%s job %s: %s", kind, job_id, reason, extra={"job": job_id})
    await report_failure(bus, kind, job_id, proc.node_id, reason, delivery=0)


def restart_args(marked: str, killed_job: str) -> list[str]:
    """The `main` options a supervisor adds to a restarted process's command line."""
    args = ["--marked", marked] if marked else []
    return args + (["--killed-job", killed_job] if killed_job else [])


async def register(bus: Bus, proc: ProcessConfig) -> Registration | None:
    """Announce this process as a NATS micro service, so `nats micro ls` and `$SRV.PING` see it
    (behind NAT too: it answers over its own outbound connection)."""
    return await bus.register_service(
        f"conclave-{proc.service}",
        semver(VERSION),
        f"Conclave {proc.service} on {proc.node_id}",
        {"node": proc.node_id, "service": proc.service, "pid": str(os.getpid())},
    )


async def connect_until(cfg: BusConfig, stop: asyncio.Event) -> Bus | None:
    """Keep trying the first connection (the hub may come up later) until `stop` is set."""
    delay = 0.5
    while not stop.is_set():
        try:
            return await NatsBus.connect(cfg)
        except ConnectFailed as e:
            log.warning("%s; retrying in %.1fs", e, delay)
            await wait_or_stop(stop, delay)
            delay = min(delay * 2, 10.0)
    return None


async def set_when(stop: asyncio.Event, halt: threading.Event) -> None:
    """Mirror `stop` into a thread-side event, so work running in a thread can give up too."""
    await stop.wait()
    halt.set()


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; return True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    except TimeoutError:
        return False
    return True


def main(
    service: str,
    config_type: type[C],
    run: RunFn[C],
    argv: list[str] | None = None,
    *,
    counters: Counters | None = None,
) -> int:
    """Entry point of a service process: `--process JSON --config JSON`, built by the launcher.

    A service that counts its work makes the process's `counters` and hands them both to its
    `run` and here, so that its pulses carry them."""
    parser = argparse.ArgumentParser(prog=f"conclave-{service}")
    parser.add_argument("--process", required=True, help="ProcessConfig as JSON")
    parser.add_argument("--config", required=True, help=f"{config_type.__name__} as JSON")
    parser.add_argument("--marked", default="", help="take no jobs, for this reason")
    parser.add_argument("--killed-job", default="", help="the job the last process was killed in")
    args = parser.parse_args(argv)
    try:
        proc = decode(args.process.encode(), ProcessConfig, subject="--process")
        cfg = decode(args.config.encode(), config_type, subject="--config")
    except BadMessage as e:
        print(f"conclave-{service}: {e}", file=sys.stderr)
        return 2
    if args.marked or args.killed_job:
        proc = msgspec.structs.replace(
            proc, marked=args.marked or proc.marked, killed_job=args.killed_job or proc.killed_job
        )
    formatter = logsetup.setup(proc.log_level, node=proc.node_id, service=service)
    on_bus = BusLogHandler(proc.node_id, service, formatter)
    logging.getLogger().addHandler(on_bus)
    asyncio.run(serve(proc, cfg, run, on_bus, counters))
    return 0
