"""A NAT-blocked node: its services reach the hub's JetStream through a local leaf server."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import names
from schemas.codec import decode
from schemas.control import NodeStatus
from schemas.jobs import EvalJob, PlayerSpec
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import CasFailed
from shared.bus.ports import Bus
from shared.bus.server import HUB_DOMAIN, LeafSpec, NatsServer, pid_alive
from shared.work.jobs import JobSettings, Puller, ensure_consumer, submit
from shared.work.models import ModelStore
from tests.conftest import Processes, eventually


@pytest.fixture
async def leaf_bus(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Bus]:
    leaf = NatsServer(LeafSpec("edge", tmp_path / "edge", (nats_server.leaf_url,))).start()
    try:
        bus = await NatsBus.connect(BusConfig(servers=[leaf.url], name="edge", domain=HUB_DOMAIN))
        try:
            yield bus
        finally:
            await bus.close()
    finally:
        leaf.stop()


async def test_everything_a_worker_does_works_through_a_leaf(
    bus: Bus, leaf_bus: Bus, tmp_path: Path
) -> None:
    await bus.provision()
    # KV: TTL write, compare-and-set, read back on both sides, snapshot.
    first = await leaf_bus.write(names.NODES_BUCKET, "edge", b"one", ttl_s=5)
    await leaf_bus.write(names.NODES_BUCKET, "edge", b"two", expect_last=first)
    with pytest.raises(CasFailed):
        await leaf_bus.write(names.NODES_BUCKET, "edge", b"stale", expect_last=first)
    assert (await bus.last(names.NODES_BUCKET, "edge")).value == b"two"
    assert (await leaf_bus.snapshot(names.NODES_BUCKET))["edge"].value == b"two"
    # Models both ways through the object store.
    hub_model = await ModelStore(bus, tmp_path / "hub").put(os.urandom(300_000))
    assert len(await ModelStore(leaf_bus, tmp_path / "edge-cache").read(hub_model)) == 300_000
    edge_model = await ModelStore(leaf_bus, tmp_path / "edge-put").put(b"m" * 100_000)
    assert await ModelStore(bus, tmp_path / "hub2").read(edge_model) == b"m" * 100_000
    # Jobs: the shared durable consumer, a pull and an ack that the hub sees.
    await ensure_consumer(leaf_bus, "eval", JobSettings())
    job = EvalJob(
        job_id="leaf-1", game="tictactoe", kind="gauntlet", a=PlayerSpec("a", agent="random"),
        b=PlayerSpec("b", agent="random"), games=2, term=1, seed=1, group="g1",
    )  # fmt: skip
    await submit(bus, "eval", job)
    delivery = await Puller(leaf_bus, "eval", EvalJob).next(timeout_s=5)
    assert delivery is not None and delivery.job == job
    await delivery.done()
    assert await Puller(bus, "eval", EvalJob).next(timeout_s=1) is None
    # Durable publishes land in the hub's streams.
    seq = await leaf_bus.publish_durable(names.games_subject("tictactoe"), b"g", msg_id="g-1")
    assert seq > 0


def start_edge(processes: Processes, hub: NatsServer, tmp: Path) -> int:
    argv = [
        sys.executable, "-m", "shared.cli.main", "node", "--roles", "control",
        "--node-id", "edge1", "--via-leaf", hub.leaf_url, "--cache-dir", str(tmp / "cache"),
        "--log-dir", str(tmp / "logs" / "edge1"),
    ]  # fmt: skip
    # Its own session, like a node started by hand: cleanup ends the whole group.
    return processes.spawn(argv, tmp / "logs" / "edge1.log", start_new_session=True).pid


async def edge_alive(bus: Bus) -> NodeStatus | None:
    entry = await bus.last(names.NODES_BUCKET, "edge1")
    status = decode(entry.value, NodeStatus) if entry.value else None
    return status if status and all(s.alive for s in status.services) else None


def leaf_server_pid(tmp: Path) -> int | None:
    """The leaf server's PID, from the ports file it names after itself (None while none)."""
    ports = list((tmp / "cache" / "edge1" / "leaf" / "ports").glob("*.ports"))
    return int(ports[0].stem.rsplit("_", 1)[1]) if len(ports) == 1 else None


async def test_node_via_leaf_heartbeats_survives_its_leaf_dying_and_takes_it_along(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    await bus.provision()
    launcher = start_edge(processes, nats_server, tmp_path)
    status = await eventually(lambda: edge_alive(bus), 30, what="edge1 heartbeats via its leaf")
    assert {s.name for s in status.services} == {"heartbeat", "leader"}

    leaf: int = await eventually(lambda: leaf_server_pid(tmp_path), 5, what="a leaf ports file")
    os.kill(leaf, signal.SIGKILL)  # the launcher restarts it on the same port
    await eventually(lambda: not pid_alive(leaf), 5, what="leaf server killed")
    await eventually(
        lambda: leaf_server_pid(tmp_path) not in (None, leaf), 20, what="a new leaf server"
    )
    before = (await bus.last(names.NODES_BUCKET, "edge1")).revision
    await eventually(
        lambda: _newer(bus, before), 20, what="heartbeats again after the leaf restarted"
    )

    leaf = await eventually(lambda: leaf_server_pid(tmp_path), 5, what="the leaf's ports file")
    os.kill(launcher, signal.SIGKILL)  # no leaf server or service may outlive its launcher
    await eventually(lambda: not pid_alive(leaf), 10, what="leaf server gone with the launcher")


async def _newer(bus: Bus, revision: int) -> bool:
    return (await bus.last(names.NODES_BUCKET, "edge1")).revision > revision
