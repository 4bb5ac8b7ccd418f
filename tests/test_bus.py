"""The bus adapter against a real nats-server: CAS, per-key TTL, markers, typed errors."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.msg import Msg

from schemas import names
from shared.bus.client import BusConfig, NatsBus, ttl_header
from shared.bus.errors import CasFailed, ConnectFailed
from shared.bus.ports import Bus
from shared.bus.server import free_port
from tests.conftest import eventually

B, K = names.ELECTION_BUCKET, "k"


async def test_create_then_cas_and_stale_cas_is_a_typed_error(bus: Bus) -> None:
    rev = await bus.write(B, K, b"a", expect_last=0)
    with pytest.raises(CasFailed):
        await bus.write(B, K, b"b", expect_last=0)
    rev2 = await bus.write(B, K, b"c", expect_last=rev)
    assert rev2 > rev
    assert (await bus.last(B, K)).value == b"c"


async def test_cas_renewal_keeps_the_ttl(bus: Bus) -> None:
    """nats-py's kv.update drops the TTL; our CAS write must keep it on every renewal."""
    rev = await bus.write(B, K, b"a", ttl_s=1, expect_last=0)
    for _ in range(3):
        await asyncio.sleep(0.5)  # renewing at half the TTL, as a lease holder does
        rev = await bus.write(B, K, b"a", ttl_s=1, expect_last=rev)
    renewed_at = time.monotonic()
    assert (await bus.last(B, K)).present
    while (await bus.last(B, K)).present:
        await asyncio.sleep(0.05)
    expired_after = time.monotonic() - renewed_at
    assert 0.8 <= expired_after <= 2.0


async def test_expired_and_deleted_keys_read_as_absent_with_a_revision_to_cas_on(bus: Bus) -> None:
    """No expiry markers (they would force rollups on): an expired key's subject is empty, so
    only a create takes it, a writer of the old revision cannot, and revisions still grow."""
    rev = await bus.write(B, K, b"a", ttl_s=1, expect_last=0)
    await asyncio.sleep(1.4)  # past the 1 s TTL
    gone = await bus.last(B, K)
    assert not gone.present and gone.revision == 0
    with pytest.raises(CasFailed):
        await bus.write(B, K, b"stale", expect_last=rev)
    rev2 = await bus.write(B, K, b"b", expect_last=gone.revision)
    assert rev2 > rev
    await bus.cas_delete(B, K, rev2)
    deleted = await bus.last(B, K)
    assert not deleted.present
    await bus.write(B, K, b"c", expect_last=deleted.revision)


async def test_snapshot_lists_present_keys_only(bus: Bus) -> None:
    await bus.write(names.NODES_BUCKET, "n1", b"1", ttl_s=1)
    await bus.write(names.NODES_BUCKET, "n2", b"2", ttl_s=30)
    assert set(await bus.snapshot(names.NODES_BUCKET)) == {"n1", "n2"}
    await asyncio.sleep(1.4)  # past n1's 1 s TTL
    assert set(await bus.snapshot(names.NODES_BUCKET)) == {"n2"}


async def test_provision_only_reads_what_exists_as_configured_and_repairs_drift(
    bus: Bus,
) -> None:
    """A worker whose identity may not create streams provisions nothing once they exist."""
    writes: list[str] = []

    async def on_request(msg: Msg) -> None:
        writes.append(msg.subject)

    watcher = await NatsBus.connect(BusConfig(servers=bus.cfg.servers, name="watcher"))
    try:
        for verb in ("CREATE", "UPDATE", "DELETE", "PURGE"):
            await watcher.subscribe(f"$JS.API.STREAM.{verb}.>", on_request)
        await watcher.flush()
        await bus.provision()  # the fixture already did
        await bus.flush()
        await asyncio.sleep(0.2)  # an absence: nothing to wait on but time
        assert writes == []

        update = f"$JS.API.STREAM.UPDATE.{names.EVENTS_STREAM}"
        drifted = (await bus.js.stream_info(names.EVENTS_STREAM)).config
        drifted.max_age = 3600.0
        await bus.js.update_stream(drifted)
        await eventually(lambda: writes == [update], 5, what="the drifting update seen")
        writes.clear()
        await bus.provision()
        await watcher.flush()  # every request provision sent has reached the watcher
        await eventually(lambda: writes, 5, what="provision's repair seen")
        assert writes == [update]
        assert (await bus.js.stream_info(names.EVENTS_STREAM)).config.max_age == 7 * 86400.0
    finally:
        await watcher.close()


def test_fractional_ttl_is_refused_because_the_server_truncates_it() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        ttl_header(1.5)
    assert ttl_header(3) == "3s"


async def test_first_connect_fails_fast_and_names_the_server() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match=url):
        await NatsBus.connect(BusConfig(servers=[url], name="t", connect_timeout_s=1.0))
    assert time.monotonic() - started < 5


async def test_concurrent_snapshots_each_see_every_key(bus: Bus) -> None:
    """nats-py's end-of-initial-values marker can overtake the values themselves; a snapshot
    that trusted it came back empty under load (seen in CI)."""
    keys = {f"n{i}": f"{i}".encode() * 2000 for i in range(8)}
    for key, value in keys.items():
        await bus.write(names.NODES_BUCKET, key, value)
    rev = await bus.write(names.NODES_BUCKET, "gone", b"x")
    await bus.cas_delete(names.NODES_BUCKET, "gone", rev)
    snapshots = await asyncio.gather(*(bus.snapshot(names.NODES_BUCKET) for _ in range(40)))
    for snapshot in snapshots:
        assert {k: e.value for k, e in snapshot.items()} == keys


async def test_snapshot_of_an_empty_bucket_is_empty_at_once(bus: Bus) -> None:
    started = time.monotonic()
    assert await bus.snapshot(names.NODES_BUCKET) == {}
    assert time.monotonic() - started < bus.cfg.request_timeout_s / 2


async def test_read_all_sees_every_key_of_a_bucket_being_rewritten(bus: Bus) -> None:
    """A rewritten key moves to the end of the stream: reading a count of messages read some
    twice and missed others (seen with 1000 heartbeating nodes)."""
    keys = [f"n{i}" for i in range(300)]
    for key in keys:
        await bus.write(names.NODES_BUCKET, key, b"x" * 200)
    stream, subject = names.kv_stream(names.NODES_BUCKET), names.kv_subject(names.NODES_BUCKET, ">")
    stop = asyncio.Event()

    async def rewrite() -> None:
        while not stop.is_set():
            await asyncio.gather(*(bus.write(names.NODES_BUCKET, k, b"y" * 200) for k in keys[::7]))

    writer = asyncio.create_task(rewrite())
    try:
        for _ in range(5):
            read = {m.subject.rsplit(".", 1)[1] for m in await bus.read_all(stream, subject)}
            assert read == set(keys)
    finally:
        stop.set()
        await writer
