"""A child SIGKILLed mid-job (as the OOM killer would) is recorded; after three it is restarted
marked, to take no jobs and say why; a restarted service reports the job its predecessor was
killed in, so the job's redelivery and dead letter carry the reason."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from schemas import names
from schemas.codec import decode, encode
from schemas.control import ServicePulse
from schemas.jobs import JobFailure
from shared.bus.client import BusConfig
from shared.bus.message import Message
from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.runtime.service import ProcessConfig
from shared.runtime.supervisor import Child, ChildSpec, Limits
from tests.conftest import Processes, eventually

JOB = "selfplay sp-abc"

# A stand-in service: pulses `doing` (or, marked, why it takes no jobs) on the pipe, and
# notes each command line it was started with.
CHILD = """
import json, os, sys, time
from schemas.codec import encode
from schemas.control import ServicePulse
fd, starts, doing, *told = sys.argv[1:]
with open(starts, "a") as f:
    f.write(json.dumps(told) + "\\n")
if "--marked" in told:
    doing = "no jobs: " + told[told.index("--marked") + 1]
while True:
    now = time.time()
    pulse = ServicePulse(node="n1", service="selfplay", pid=os.getpid(), lag_p50_ms=0.0,
                         lag_max_ms=0.0, started_at=now, sent_at=now, doing=doing)
    os.write(int(fd), encode(pulse) + b"\\n")
    time.sleep(0.05)
"""

FAST = Limits(stall_s=2.0, startup_s=20.0, backoff_base_s=0.01, backoff_cap_s=0.05)


def spec(tmp_path: Path, doing: str = JOB) -> ChildSpec:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    starts = tmp_path / "starts.jsonl"

    def argv(fd: int) -> list[str]:
        return [sys.executable, str(script), str(fd), str(starts), doing]

    return ChildSpec("selfplay", argv, tmp_path / "child.log", restarts_told=True)


def starts(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "starts.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@asynccontextmanager
async def supervised(child: Child) -> AsyncIterator[Child]:
    stop = asyncio.Event()
    task = asyncio.create_task(child.run(stop))
    try:
        yield child
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def pulsing(child: Child, doing: Callable[[str], bool], not_pids: set[int]) -> int:
    """The pid of a new process of `child` once it pulses what `doing` accepts."""

    def ready() -> int | None:
        fresh = child.pid is not None and child.pid not in not_pids
        return child.pid if fresh and doing(child.doing) else None

    pid: int = await eventually(ready, timeout=20, what="a new process pulsing")
    return pid


async def kill_mid_job(child: Child, times: int) -> None:
    killed: set[int] = set()
    for _ in range(times):
        pid = await pulsing(child, lambda d: d == JOB, killed)
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    await pulsing(child, lambda d: d != JOB, killed)  # restarted: marked or not


async def test_three_kills_mid_job_mark_the_child_and_its_restart_says_why(
    tmp_path: Path,
) -> None:
    async with supervised(Child(spec(tmp_path), FAST)) as child:
        killed: set[int] = set()
        for _ in range(3):
            assert not child.marked
            pid = await pulsing(child, lambda d: d == JOB, killed)
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        await pulsing(child, lambda d: d.startswith("no jobs: "), killed)
    assert [k.doing for k in child.kills] == [JOB] * 3
    assert child.marked.startswith("killed 3 times in 600s mid-job (last: selfplay sp-abc)")
    first, *restarts = starts(tmp_path)
    assert first == []
    assert restarts[0] == ["--killed-job", JOB]
    assert restarts[1] == ["--killed-job", JOB]
    assert restarts[2] == ["--marked", child.marked, "--killed-job", JOB]
    assert child.doing == f"no jobs: {child.marked}"


async def test_a_mark_needs_the_kills_within_the_window(tmp_path: Path) -> None:
    narrow = dataclasses.replace(FAST, kill_window_s=0.0)
    async with supervised(Child(spec(tmp_path), narrow)) as child:
        await kill_mid_job(child, 3)
    assert len(child.kills) == 3
    assert not child.marked
    assert all("--marked" not in told for told in starts(tmp_path))


async def test_kills_while_idle_are_no_job_kills(tmp_path: Path) -> None:
    async with supervised(Child(spec(tmp_path, doing=""), FAST)) as child:
        killed: set[int] = set()
        for _ in range(3):
            pid = await pulsing(child, lambda d: True, killed)
            await asyncio.sleep(0.2)  # a pulse or two, saying it is idle
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        await pulsing(child, lambda d: True, killed)
    assert child.kills == []
    assert not child.marked
    assert all(told == [] for told in starts(tmp_path))


async def test_a_stalled_child_killed_by_its_supervisor_is_no_kill(tmp_path: Path) -> None:
    quick_stall = dataclasses.replace(FAST, stall_s=1.0)
    async with supervised(Child(spec(tmp_path), quick_stall)) as child:
        pid = await pulsing(child, lambda d: d == JOB, set())
        os.kill(pid, signal.SIGSTOP)
        await pulsing(child, lambda d: d == JOB, {pid})
    assert [outcome for _, outcome in child.history] == ["stalled", "stopped"]
    assert child.kills == []
    assert starts(tmp_path) == [[], []]


async def test_a_marked_service_takes_no_jobs_and_reports_the_killed_one(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    pulses: list[ServicePulse] = []

    async def on_pulse(msg: Message) -> None:
        pulses.append(decode(msg.data, ServicePulse))

    await bus.subscribe(names.pulse_subject("n1", "heartbeat"), on_pulse)
    proc = ProcessConfig("n1", "heartbeat", BusConfig(servers=[nats_server.url], name="n1"))
    config = {"node_id": "n1", "roles": [], "services": ["heartbeat"], "detect_gpus": False}
    told = ["--marked", "killed 3 times", "--killed-job", JOB]
    argv = [sys.executable, "-m", "services.heartbeat", "--process", encode(proc).decode()]
    processes.spawn([*argv, "--config", json.dumps(config), *told], tmp_path / "hb.log")

    async def failure() -> JobFailure | None:
        raw = await bus.last_on(names.EVENTS_STREAM, names.job_failure_subject("sp-abc"))
        return None if raw is None else decode(raw.data, JobFailure)

    reported: JobFailure = await eventually(failure, timeout=20, what="the failure report")
    assert reported.kind == "selfplay"
    assert reported.node == "n1"
    assert reported.reason == "killed by SIGKILL (out of memory?) on node n1 (heartbeat)"
    await eventually(lambda: pulses, timeout=20, what="a pulse")
    assert {p.doing for p in pulses} == {"no jobs: killed 3 times"}
