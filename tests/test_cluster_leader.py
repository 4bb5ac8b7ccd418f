"""Leadership on a 3-server JetStream cluster through KV stream-leader changes and crashes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from schemas import names
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.bus.server import NatsCluster
from shared.lease.audit import LeaseAudit
from tests.conftest import Processes, eventually
from tests.test_leader import current_lease, start_contenders

pytestmark = pytest.mark.slow

STREAM = names.kv_stream(names.ELECTION_BUCKET)


@pytest.fixture
async def cbus(nats_cluster: NatsCluster) -> AsyncIterator[Bus]:
    b = await NatsBus.connect(BusConfig(servers=nats_cluster.urls, name="test", replicas=3))
    await eventually(lambda: _provisioned(b), 30, what="cluster provisioning")
    try:
        yield b
    finally:
        await b.close()


async def _provisioned(bus: Bus) -> bool:
    try:
        await bus.provision()
    except BusError:
        return False
    return True


async def stream_leader(bus: Bus) -> str | None:
    try:
        info = await bus.js.stream_info(STREAM)
    except Exception:
        return None
    return info.cluster.leader if info.cluster else None


async def test_leadership_survives_a_graceful_kv_stream_leader_stepdown(
    nats_cluster: NatsCluster, cbus: Bus, processes: Processes
) -> None:
    audit = await LeaseAudit().start(cbus)
    start_contenders(processes, nats_cluster.urls, ["a", "b"], replicas=3)
    lease = await eventually(lambda: current_lease(cbus), 20, what="a leader")
    await asyncio.sleep(2)  # a few 1 s renewals: the lease is settled before the stepdown
    before = await eventually(lambda: stream_leader(cbus), 10, what="a stream leader")
    await cbus.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", b"", timeout=5)
    after = await eventually(lambda: _changed(cbus, before), 15, what="a new KV stream leader")
    assert after != before
    await asyncio.sleep(4)  # longer than the lease TTL: renewals must have kept going
    still = await current_lease(cbus)
    assert still is not None and still.instance == lease.instance
    assert len(audit.terms) == 1 and audit.overlaps() == []


async def _changed(bus: Bus, before: str) -> str | None:
    now = await stream_leader(bus)
    return now if now and now != before else None


async def test_leadership_recovers_unsplit_after_the_kv_stream_leader_server_is_killed(
    nats_cluster: NatsCluster, cbus: Bus, processes: Processes
) -> None:
    audit = await LeaseAudit().start(cbus)
    start_contenders(processes, nats_cluster.urls, ["a", "b", "c"], replicas=3)
    await eventually(lambda: current_lease(cbus), 20, what="a leader")
    await asyncio.sleep(2)  # a few 1 s renewals: the lease is settled before the kill
    victim = nats_cluster.by_name(await eventually(lambda: stream_leader(cbus), 10))
    victim.kill()
    await asyncio.sleep(8)  # stream election plus a full lease TTL
    lease = await eventually(lambda: current_lease(cbus), 30, what="a leader after the crash")
    await asyncio.sleep(2)  # stable: the same holder two renewals later
    still = await current_lease(cbus)
    assert still is not None and still.instance == lease.instance, "leadership not stable"
    victim.start()
    await asyncio.sleep(3)  # the rejoining server must cause no overlap: watched for a while
    await cbus.flush()
    assert audit.overlaps() == []
    assert lease.instance in {t.instance for t in audit.terms.values()}


async def test_killing_any_one_hub_server_costs_no_failover(
    nats_cluster: NatsCluster, cbus: Bus, processes: Processes
) -> None:
    """The quorum lease: a killed server takes one slot (and maybe the register's stream leader,
    whose election blocks writes for 4-9 s) but never the holder's majority."""
    audit = await LeaseAudit().start(cbus)
    start_contenders(processes, nats_cluster.urls, ["a", "b"], replicas=3)
    first = await eventually(lambda: current_lease(cbus), 20, what="a leader")
    for victim in nats_cluster.servers:
        await asyncio.sleep(2)  # the restarted server back in the cluster before the next kill
        victim.kill()
        await asyncio.sleep(10)  # past the longest stream leader election and three lease TTLs
        victim.start()
    await asyncio.sleep(3)  # the last restart must cause no failover either: watched for a while
    await cbus.flush()
    still = await eventually(lambda: current_lease(cbus), 10, what="the lease")
    assert still.instance == first.instance
    assert [t.instance for t in audit.ordered()] == [first.instance], "a failover happened"
    assert audit.overlaps() == []
