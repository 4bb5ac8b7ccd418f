"""Lease slots: an R1 KV bucket per hub server, pinned by a server tag, provisioned by the bus."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from schemas import names
from shared import permissions, provision
from shared.bus import Bus, BusConfig, NoPlacement, Unavailable
from shared.natsserver import NatsCluster, NatsServer, ServerSpec, server_binary
from tests.conftest import eventually


def test_a_single_server_has_one_unplaced_slot() -> None:
    [slot] = provision.lease_slot_streams(1)
    assert slot.name == names.kv_stream("election-1")
    assert slot.num_replicas == 1
    assert slot.placement is None
    assert slot.subject_delete_marker_ttl == 1


def test_a_cluster_has_three_slots_each_pinned_to_its_tag() -> None:
    slots = provision.lease_slot_streams(3)
    assert [s.name for s in slots] == [names.kv_stream(f"election-{i}") for i in (1, 2, 3)]
    assert all(s.num_replicas == 1 for s in slots)
    assert [s.placement.tags if s.placement else None for s in slots] == [
        ["lease-slot-1"],
        ["lease-slot-2"],
        ["lease-slot-3"],
    ]


def test_a_tagged_cluster_config_passes_the_servers_own_check(tmp_path: Path) -> None:
    spec = ServerSpec("c", tmp_path, cluster_port=6222, routes=("h1:6222",), tags=("lease-slot-2",))
    text = spec.config()
    assert 'server_tags: [ "lease-slot-2" ]' in text
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    check = subprocess.run([str(server_binary()), "-t", "-c", str(conf)], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()


def test_cluster_servers_carry_one_slot_tag_each(tmp_path: Path) -> None:
    cluster = NatsCluster.create(tmp_path)
    assert [s.spec.tags for s in cluster.servers] == [
        ("lease-slot-1",),
        ("lease-slot-2",),
        ("lease-slot-3",),
    ]


async def test_a_single_server_gets_one_r1_slot(bus: Bus) -> None:
    info = await bus.js.stream_info(names.kv_stream(names.lease_slot_bucket(1)))
    assert info.config.num_replicas == 1
    assert info.config.placement is None or not info.config.placement.tags


async def provisioned(bus: Bus) -> bool:
    """Provision once the cluster has a meta leader; other errors propagate."""
    try:
        await bus.provision()
    except Unavailable:
        return False
    return True


@pytest.mark.slow
async def test_a_cluster_gets_three_r1_slots_on_three_servers(nats_cluster: NatsCluster) -> None:
    bus = await Bus.connect(BusConfig(servers=nats_cluster.urls, name="test", replicas=3))
    try:
        await eventually(lambda: provisioned(bus), 30, what="cluster provisioning")
        for slot, wanted in enumerate(provision.lease_slot_streams(3), start=1):
            info = await bus.js.stream_info(wanted.name or "")
            assert info.config.num_replicas == 1
            assert info.config.placement == wanted.placement
            assert info.cluster is not None and info.cluster.leader == f"n{slot}"
            assert not info.cluster.replicas  # R1: no followers
            assert provision.same_settings(info.config, wanted)  # a rerun only reads
        await bus.provision()
    finally:
        await bus.close()


@pytest.mark.slow
async def test_a_cluster_without_slot_tags_fails_naming_the_tag(tmp_path: Path) -> None:
    tagged = NatsCluster.create(tmp_path)
    untagged = [NatsServer(dataclasses.replace(s.spec, tags=())) for s in tagged.servers]
    cluster = NatsCluster(untagged).start()
    try:
        bus = await Bus.connect(BusConfig(servers=cluster.urls, name="test", replicas=3))
        try:
            with pytest.raises(NoPlacement, match=r"KV_election-1.*lease-slot-1.*server tag"):
                await eventually(lambda: provisioned(bus), 30, what="cluster provisioning")
        finally:
            await bus.close()
    finally:
        for server in cluster.servers:
            server.kill()


def test_the_lease_holders_may_write_their_key_in_every_slot() -> None:
    coordinator = permissions.permissions("coordinator").publish
    syncer = permissions.permissions("syncer").publish
    for slot in names.lease_slot_buckets(3):
        assert names.kv_subject(slot, names.LEADER_KEY) in coordinator
        assert names.kv_subject(slot, names.SYNCER_KEY) in syncer
        assert names.kv_subject(slot, names.LEADER_KEY) not in syncer
        for role in (coordinator, syncer):
            assert f"$JS.API.DIRECT.GET.{names.kv_stream(slot)}.>" in role
    worker = permissions.permissions("selfplay").publish
    assert not any("election" in subject for subject in worker)
