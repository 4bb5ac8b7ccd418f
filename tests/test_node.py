"""A node's services under the launcher: heartbeat status, TTL expiry, stalls, crashes, orphans."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from schemas import names
from schemas.codec import decode
from schemas.control import NodeStatus
from shared.bus.message import Message
from shared.bus.ports import Bus
from shared.bus.server import NatsServer, pid_alive
from shared.node.launcher import (
    NodeOptions,
    build_children,
    selfplay_nice,
    selfplay_workers,
    services_for,
    supervise,
)
from shared.runtime.supervisor import Child
from tests.conftest import Processes, eventually, process_config

COORDINATOR = services_for(["coordinator"])


async def node_status(bus: Bus, node: str) -> NodeStatus | None:
    entry = await bus.last(names.NODES_BUCKET, node)
    return decode(entry.value, NodeStatus) if entry.value else None


class RunningNode:
    def __init__(self, children: list[Child], task: asyncio.Task[None]) -> None:
        self.children = {c.spec.name: c for c in children}
        self.task = task


@pytest.fixture
async def node(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[RunningNode]:
    opts = NodeOptions(
        node_id="n1",
        roles=["coordinator"],
        nats_urls=[nats_server.url],
        limits_stall_s=2.0,
    )
    children = build_children(opts)
    stop = asyncio.Event()
    task = asyncio.create_task(supervise(children, stop))
    try:
        yield RunningNode(children, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        assert all(c.last_outcome == "stopped" for c in children)


async def test_status_lists_services_with_loop_lag(node: RunningNode, bus: Bus) -> None:
    status = await eventually(
        lambda: _with_services(bus, "n1", len(COORDINATOR)), 20, what="status with services"
    )
    assert status.roles == ["coordinator"]
    assert {s.name for s in status.services} == set(COORDINATOR)
    assert all(s.alive and s.lag_max_ms >= 0 for s in status.services)
    assert status.resources.cores == os.cpu_count()


async def _with_services(bus: Bus, node: str, count: int) -> NodeStatus | None:
    status = await node_status(bus, node)
    if status and sum(s.alive for s in status.services) == count:
        return status
    return None


async def test_sigstopped_service_is_killed_and_restarted(node: RunningNode, bus: Bus) -> None:
    await eventually(
        lambda: _with_services(bus, "n1", len(COORDINATOR)), 20, what="all services alive"
    )
    leader = node.children["leader"]
    stopped_pid = leader.pid
    assert stopped_pid is not None
    os.kill(stopped_pid, signal.SIGSTOP)
    await eventually(lambda: leader.pid != stopped_pid, 10, what="a new leader process")
    assert leader.last_outcome == "stalled" and leader.restarts == 1
    assert not pid_alive(stopped_pid) or _is_zombie(stopped_pid)
    await eventually(
        lambda: _with_services(bus, "n1", len(COORDINATOR)), 20, what="services alive again"
    )


async def test_crashed_service_is_restarted(node: RunningNode, bus: Bus) -> None:
    await eventually(
        lambda: _with_services(bus, "n1", len(COORDINATOR)), 20, what="all services alive"
    )
    heartbeat = node.children["heartbeat"]
    old = heartbeat.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: heartbeat.pid != old, 10, what="a new heartbeat process")
    assert heartbeat.last_outcome == "exited"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return False


async def test_status_expires_within_ttl_after_the_heartbeat_dies(
    nats_server: NatsServer, bus: Bus, processes: Processes
) -> None:
    cfg = {"node_id": "n2", "roles": [], "services": ["heartbeat"], "ttl_s": 5}
    proc = processes.service(
        "services.heartbeat", process_config(nats_server.url, "n2", "heartbeat"), cfg
    )
    await eventually(lambda: node_status(bus, "n2"), 20, what="first status")
    proc.kill()
    killed = time.monotonic()
    await eventually(lambda: _gone(bus, "n2"), 12, what="status to expire")
    assert time.monotonic() - killed <= 10.0


async def _gone(bus: Bus, node: str) -> bool:
    return not (await bus.last(names.NODES_BUCKET, node)).present


async def test_bad_pulses_are_logged_with_the_field_and_survived(
    nats_server: NatsServer, bus: Bus, processes: Processes
) -> None:
    cfg = {"node_id": "n3", "roles": [], "services": ["heartbeat"]}
    proc = processes.service(
        "services.heartbeat", process_config(nats_server.url, "n3", "heartbeat"), cfg
    )
    first = await eventually(lambda: node_status(bus, "n3"), 20, what="first status")
    for junk in (
        b"{",
        b'{"type":"conclave.service_pulse.v9"}',
        b'{"type":"conclave.service_pulse.v1","node":1}',
    ):
        await bus.publish(names.pulse_subject("n3", "bogus"), junk)
    await eventually(
        lambda: _newer(bus, "n3", first.sent_at + 2), 10, what="status still being written"
    )
    assert proc.poll() is None
    log = next(processes.log_dir.glob("n3-heartbeat-*.log")).read_text()
    assert '"field":"$.type"' in log and '"field":"$.node"' in log and '"field":"$"' in log


async def _newer(bus: Bus, node: str, after: float) -> bool:
    status = await node_status(bus, node)
    return status is not None and status.sent_at > after


async def test_services_stop_when_their_launcher_is_killed(
    nats_server: NatsServer, processes: Processes, tmp_path: Path
) -> None:
    launcher = processes.spawn(
        [
            sys.executable,
            "-m",
            "shared.cli.main",
            "node",
            "--roles",
            "coordinator",
            "--node-id",
            "n4",
            "--nats",
            nats_server.url,
            "--log-dir",
            str(tmp_path / "n4"),
        ],
        tmp_path / "launcher.log",
    )
    pids = await eventually(lambda: _children_of(launcher.pid, 2), 20, what="two services")
    launcher.kill()
    await eventually(
        lambda: not any(pid_alive(p) and not _is_zombie(p) for p in pids),
        10,
        what="orphaned services to exit",
    )


def _children_of(pid: int, count: int) -> list[int] | None:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found if len(found) >= count else None


async def test_every_service_answers_srv_ping_with_its_node(node: RunningNode, bus: Bus) -> None:
    await eventually(lambda: _with_services(bus, "n1", len(COORDINATOR)), 20, what="services up")

    async def pinged() -> set[str] | None:
        found: set[str] = set()
        everyone = asyncio.Event()

        async def collect(msg: Message) -> None:
            metadata = json.loads(msg.data)["metadata"]
            if metadata.get("node") == "n1":
                found.add(metadata["service"])
            if found >= set(COORDINATOR):
                everyone.set()

        inbox = bus.nc.new_inbox()
        sub = await bus.nc.subscribe(inbox, cb=collect)
        await bus.nc.publish("$SRV.PING", b"", reply=inbox)
        try:
            await asyncio.wait_for(everyone.wait(), 0.5)
        except TimeoutError:
            return None
        finally:
            await sub.unsubscribe()
        return found

    assert await eventually(pinged, 20, every=0.5, what="$SRV.PING replies")


def test_a_node_runs_one_selfplay_process_per_usable_core_unless_told() -> None:
    opts = NodeOptions("n1", ["selfplay", "trainer"], ["nats://127.0.0.1:1"])
    assert selfplay_workers(opts, cores=4) == 4
    assert selfplay_workers(msgspec.structs.replace(opts, selfplay_workers=1), cores=4) == 1
    assert services_for(["selfplay", "trainer"], 3) == [
        "heartbeat",
        "selfplay",
        "selfplay-2",
        "selfplay-3",
        "trainer",
    ]
    assert services_for(["coordinator"], 3) == COORDINATOR


def test_selfplay_yields_the_cpu_only_where_it_shares_the_node_with_the_loop() -> None:
    assert selfplay_nice(["selfplay"]) == 0
    assert selfplay_nice(["selfplay", "trainer"]) > 0


def test_each_selfplay_process_runs_the_selfplay_module_under_its_own_name() -> None:
    opts = NodeOptions("n1", ["selfplay"], ["nats://127.0.0.1:1"], selfplay_workers=2)
    [heartbeat, first, second] = build_children(opts)
    assert (first.spec.name, second.spec.name) == ("selfplay", "selfplay-2")
    argv = second.spec.argv(3)
    assert argv[argv.index("-m") + 1] == "services.selfplay"
    assert "selfplay-2" in heartbeat.spec.argv(3)[-1]  # the heartbeat expects both


def test_a_nodes_self_play_processes_share_one_kill_record() -> None:
    """Jobs of a kind dying on a node (killed mid-job, as by the OOM killer) mark every process
    of that kind there: the record is one, whichever process was killed."""
    opts = NodeOptions("n1", ["selfplay"], ["nats://127.0.0.1:1"], selfplay_workers=2)
    [heartbeat, first, second] = build_children(opts)
    assert first.record is second.record and heartbeat.record is not first.record
    assert first.spec.restarts_told  # restarts learn the mark and the killed job
