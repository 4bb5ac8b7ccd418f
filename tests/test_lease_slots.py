"""Lease slots: an R1 KV bucket per hub server and lease, pinned by a server tag, provisioned by
the bus."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from schemas import names
from shared.auth import permissions
from shared.bus import provision
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import NoPlacement, Unavailable
from shared.bus.ports import Bus
from shared.bus.server import NatsCluster, NatsServer, ServerSpec, server_binary
from tests.conftest import eventually


def test_a_single_server_has_one_unplaced_slot_per_lease() -> None:
    slots = provision.lease_slot_streams(1)
    assert [s.name for s in slots] == ["KV_election-1", "KV_archive-lease-1"]
    for slot in slots:
        assert slot.num_replicas == 1
        assert slot.placement is None
        assert slot.subject_delete_marker_ttl is None and slot.allow_rollup_hdrs is False


@pytest.mark.parametrize("register", names.LEASE_REGISTERS)
def test_a_cluster_has_three_slots_per_lease_each_pinned_to_its_tag(register: str) -> None:
    slots = provision.lease_slot_streams(3, (register,))
    assert [s.name for s in slots] == [names.kv_stream(f"{register}-{i}") for i in (1, 2, 3)]
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


async def test_a_single_server_gets_one_r1_slot_per_lease(bus: Bus) -> None:
    for register in names.LEASE_REGISTERS:
        info = await bus.js.stream_info(names.kv_stream(names.lease_slot_bucket(1, register)))
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
    bus = await NatsBus.connect(BusConfig(servers=nats_cluster.urls, name="test", replicas=3))
    try:
        await eventually(lambda: provisioned(bus), 30, what="cluster provisioning")
        for wanted in provision.lease_slot_streams(3):
            info = await bus.js.stream_info(wanted.name or "")
            assert info.config.num_replicas == 1
            assert info.config.placement == wanted.placement
            slot = (wanted.name or "").rsplit("-", 1)[1]  # lease-slot-<n> is on server n<n>
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
        bus = await NatsBus.connect(BusConfig(servers=cluster.urls, name="test", replicas=3))
        try:
            with pytest.raises(NoPlacement, match=r"KV_election-1.*lease-slot-1.*server tag"):
                await eventually(lambda: provisioned(bus), 30, what="cluster provisioning")
        finally:
            await bus.close()
    finally:
        for server in cluster.servers:
            server.kill()


def test_each_lease_holder_may_write_its_key_in_its_own_slots_only() -> None:
    coordinator = permissions.permissions("coordinator")
    syncer = permissions.permissions("syncer")
    leader_slots = names.lease_slot_buckets(3)
    archive_slots = names.lease_slot_buckets(3, names.ARCHIVE_LEASE_BUCKET)
    for slot, archive_slot in zip(leader_slots, archive_slots, strict=True):
        assert names.kv_subject(slot, names.LEADER_KEY) in coordinator.publish
        assert names.kv_subject(archive_slot, names.SYNCER_KEY) in syncer.publish
        assert f"$JS.API.DIRECT.GET.{names.kv_stream(slot)}.>" in coordinator.publish
        assert f"$JS.API.DIRECT.GET.{names.kv_stream(archive_slot)}.>" in syncer.publish
        for key in (names.LEADER_KEY, names.SYNCER_KEY):
            assert not permissions.may_publish(syncer, names.kv_subject(slot, key))
            assert not permissions.may_publish(coordinator, names.kv_subject(archive_slot, key))
    worker = permissions.permissions("selfplay").publish
    assert not any("election" in s or "archive-lease" in s for s in worker)
