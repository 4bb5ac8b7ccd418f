"""The in-memory bus's own parts: virtual-time behaviour (TTLs, ack waits, timeouts on the
injected clock) and its injectable faults. The semantics it shares with NATS are checked on both
buses by `tests/test_bus_contract.py`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import pytest
from nats.js.api import StreamConfig

from schemas import names
from shared.bus.consumers import WorkConsumer
from shared.bus.errors import BusError, CasFailed, Unavailable
from shared.bus.memory import MemoryBus, MemoryServer
from shared.bus.message import Entry, Message
from shared.sim.clock import VirtualClock, run_virtual
from shared.work.jobs import MaxDeliveries

T = TypeVar("T")
GAME = "tictactoe"
JOB = names.job_subject("selfplay", GAME, "sp")
SELFPLAY = names.job_consumer("selfplay")


def simulate(main: Callable[[MemoryServer, MemoryBus], Awaitable[T]]) -> T:
    """Run `main` on virtual time against a provisioned server and a first client."""

    async def provisioned() -> T:
        server = MemoryServer(VirtualClock())
        bus = server.connect("test")
        await bus.provision()
        return await main(server, bus)

    return run_virtual(provisioned())


# Virtual timers fire within a few nanoseconds of their time (`shared.sim.clock`).
def now(server: MemoryServer) -> float:
    return server.clock.monotonic()


async def until(server: MemoryServer, t: float) -> None:
    await server.clock.sleep(t - now(server))


# -- virtual time ------------------------------------------------------------------------------


def test_a_ttl_expires_the_key_exactly_on_the_clock_and_tells_no_watch() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> list[Entry | None]:
        await bus.write(names.NODES_BUCKET, "n1", b"up", ttl_s=3)
        seen: list[Entry | None] = []
        async with bus.watch(names.NODES_BUCKET, "n1") as watch:
            reader = asyncio.create_task(_collect(watch, seen))
            await until(server, 2.999)
            assert (await bus.last(names.NODES_BUCKET, "n1")).value == b"up"
            await until(server, 3.0)
            assert (await bus.last(names.NODES_BUCKET, "n1")).revision == 0
            assert server.peek(names.NODES_BUCKET, "n1") is None
            await bus.write(names.NODES_BUCKET, "n1", b"back", expect_last=0)
            await server.clock.sleep(0.1)
            reader.cancel()
        return seen

    seen = simulate(main)
    assert [e.value if e else None for e in seen] == [b"up", None, b"back"]


async def _collect(watch: object, into: list[Entry | None]) -> None:
    async for entry in watch:  # type: ignore[attr-defined]
        into.append(entry)


def test_an_empty_fetch_takes_its_whole_timeout_on_the_clock() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> tuple[int, float]:
        pull = await bus.pull(names.JOBS_STREAM, JOB, SELFPLAY)
        got = await pull.fetch(1, 30.0)
        return len(got), now(server)

    got, at = simulate(main)
    assert got == 0 and at == pytest.approx(30.0, abs=1e-5)


def test_a_waiting_fetch_wakes_when_the_ack_wait_runs_out() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> tuple[float, int]:
        pull = await bus.pull(names.JOBS_STREAM, JOB, WorkConsumer(SELFPLAY, JOB, ack_wait_s=5))
        await bus.publish_durable(JOB, b"job")
        assert len(await pull.fetch(1, 1.0)) == 1
        again = await pull.fetch(1, 60.0)
        return now(server), again[0].message.num_delivered

    at, delivered = simulate(main)
    assert at == pytest.approx(5.0, abs=1e-5) and delivered == 2


def test_a_delayed_nak_and_in_progress_acks_move_redelivery_on_the_clock() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> list[float]:
        consumer = WorkConsumer(SELFPLAY, JOB, ack_wait_s=10)
        pull = await bus.pull(names.JOBS_STREAM, JOB, consumer)
        await bus.publish_durable(JOB, b"job")
        times = []
        (first,) = await pull.fetch(1, 1.0)
        await first.nak(delay_s=4)
        (second,) = await pull.fetch(1, 60.0)
        times.append(now(server))
        await until(server, 12.0)
        await second.in_progress()
        (third,) = await pull.fetch(1, 60.0)
        times.append(now(server))
        await third.ack_sync()
        assert await pull.fetch(1, 100.0) == []
        return times

    assert simulate(main) == pytest.approx([4.0, 22.0], abs=1e-5)


def test_max_ack_pending_holds_back_new_deliveries_until_an_ack() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> list[bytes]:
        consumer = WorkConsumer(SELFPLAY, JOB, max_ack_pending=1)
        pull = await bus.pull(names.JOBS_STREAM, JOB, consumer)
        for i in range(2):
            await bus.publish_durable(JOB, b"%d" % i)
        (first,) = await pull.fetch(5, 1.0)
        assert await pull.fetch(5, 1.0) == []
        await first.ack()
        return [d.message.data for d in await pull.fetch(5, 1.0)]

    assert simulate(main) == [b"1"]


def test_exhausted_deliveries_advise_on_the_clock_and_leave_the_job_stored() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> tuple[float, MaxDeliveries, bool]:
        consumer = WorkConsumer(SELFPLAY, JOB, ack_wait_s=5, max_deliver=2)
        jobs = await bus.pull(names.JOBS_STREAM, JOB, consumer)
        seq = await bus.publish_durable(JOB, b"job")
        assert len(await jobs.fetch(1, 1.0)) == 1
        assert len(await jobs.fetch(1, 10.0)) == 1  # redelivered at t=5
        advisories = await bus.pull(
            names.ADVISORIES_STREAM,
            names.max_deliveries_advisory(names.JOBS_STREAM),
            names.DEAD_LETTER_CONSUMER,
        )
        (advisory,) = await advisories.fetch(1, 60.0)
        advised_at = now(server)
        decoded = msgspec.json.decode(advisory.message.data, type=MaxDeliveries)
        assert decoded.stream_seq == seq and await jobs.fetch(1, 30.0) == []
        return advised_at, decoded, await bus.at_seq(names.JOBS_STREAM, seq) is not None

    at, advisory, stored = simulate(main)
    assert at == pytest.approx(10.0, abs=1e-5) and stored
    assert (advisory.stream, advisory.consumer, advisory.deliveries) == (
        names.JOBS_STREAM,
        SELFPLAY,
        2,
    )


def test_expiry_writes_a_delete_marker_only_where_the_stream_asks_for_them() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> list[Entry | None]:
        config = StreamConfig(
            name="KV_marked",
            subjects=[names.kv_subject("marked", ">")],
            allow_msg_ttl=True,
            allow_rollup_hdrs=True,
            max_msgs_per_subject=1,
            subject_delete_marker_ttl=60,
        )
        server.add_stream(config)
        await bus.write("marked", "k", b"v", ttl_s=2)
        seen: list[Entry | None] = []
        async with bus.watch("marked", "k") as watch:
            reader = asyncio.create_task(_collect(watch, seen))
            await until(server, 3.0)
            entry = await bus.last("marked", "k")
            assert entry.revision == 2 and not entry.present
            reader.cancel()
        marker = await bus.last_on("KV_marked", names.kv_subject("marked", "k"))
        assert marker is not None and marker.headers["Nats-Marker-Reason"] == "MaxAge"
        return seen

    seen = simulate(main)
    assert [(e.revision, e.value) if e else None for e in seen] == [(1, b"v"), None, (2, None)]


def test_the_server_refuses_rollups_overlaps_and_keeps_the_newest_per_subject() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> list[bytes | None]:
        loop = server.stream(names.kv_stream(names.LOOP_BUCKET))
        with pytest.raises(BusError):
            server.store(
                loop, names.kv_subject(names.LOOP_BUCKET, "k"), b"", {"Nats-Rollup": "all"}
            )
        with pytest.raises(BusError):
            server.add_stream(StreamConfig(name="MORE", subjects=["games.>"]))
        for value in (b"a", b"b", b"c"):
            await bus.write(names.LOOP_BUCKET, "k", value)
        stored = await bus.read_all(loop.name, names.kv_subject(names.LOOP_BUCKET, "k"))
        return [m.data for m in stored]

    assert simulate(main) == [b"c"]


# -- faults ------------------------------------------------------------------------------------


def test_an_outage_fails_requests_until_its_end_and_a_fetch_waits_it_out() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> tuple[float, bytes]:
        pull = await bus.pull(names.JOBS_STREAM, JOB, SELFPLAY)
        await bus.publish_durable(JOB, b"job")
        server.faults.unavailable_until(4.0)
        with pytest.raises(Unavailable):
            await bus.last(names.LOOP_BUCKET, "state")
        with pytest.raises(Unavailable):
            await bus.publish_durable(JOB, b"lost")
        (got,) = await pull.fetch(1, 60.0)
        await bus.last(names.LOOP_BUCKET, "state")
        return now(server), got.message.data

    at, data = simulate(main)
    assert at == pytest.approx(4.0, abs=1e-5) and data == b"job"


def test_a_switched_outage_lasts_until_switched_off() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> int:
        bus.faults.unavailable()
        with pytest.raises(Unavailable):
            await bus.write(names.LOOP_BUCKET, "state", b"x")
        other = server.connect("other")
        written = await other.write(names.LOOP_BUCKET, "state", b"x")  # only `bus` is cut off
        bus.faults.unavailable(False)
        return written - (await bus.last(names.LOOP_BUCKET, "state")).revision

    assert simulate(main) == 0


def test_a_lost_reply_still_applies_the_write() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> Entry:
        server.faults.lose_acks(1)
        with pytest.raises(Unavailable):
            await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"mine", expect_last=0)
        with pytest.raises(CasFailed):  # the retry finds its own write
            await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"mine", expect_last=0)
        return await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)

    entry = simulate(main)
    assert (entry.revision, entry.value) == (1, b"mine")


def test_a_lost_ack_reply_still_removes_the_job() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> tuple[int, int]:
        pull = await bus.pull(names.JOBS_STREAM, JOB, SELFPLAY)
        await bus.publish_durable(JOB, b"job")
        (job,) = await pull.fetch(1, 1.0)
        bus.faults.lose_acks(1, "ack")
        with pytest.raises(Unavailable):
            await job.ack_sync()
        counts = await bus.consumer_counts(names.JOBS_STREAM, SELFPLAY)
        return sum((await bus.subject_counts(names.JOBS_STREAM, JOB)).values()), counts.ack_pending

    assert simulate(main) == (0, 0)


def test_a_partition_cuts_one_client_off_both_ways_until_healed() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> tuple[list[bytes], list[bytes]]:
        other = server.connect("other")
        got: dict[str, list[bytes]] = {"bus": [], "other": []}

        def collect(into: list[bytes]) -> Callable[[Message], Awaitable[None]]:
            async def handler(msg: Message) -> None:
                into.append(msg.data)

            return handler

        await bus.subscribe("pulse.>", collect(got["bus"]))
        await other.subscribe("pulse.>", collect(got["other"]))
        assert await bus.register_service("svc", "1", "", {"node": "bus"}) is not None
        bus.partition(True)
        with pytest.raises(Unavailable):
            await bus.last(names.LOOP_BUCKET, "state")
        await bus.publish("pulse.n1.a", b"from cut")
        await other.publish("pulse.n2.a", b"to cut")
        assert await other.ping_services(0.5) == []
        bus.partition(False)
        await other.publish("pulse.n2.a", b"healed")
        assert await other.ping_services(0.5) == [{"node": "bus"}]
        return got["bus"], got["other"]

    assert simulate(main) == ([b"healed"], [b"to cut", b"healed"])


def test_a_restart_keeps_storage_and_consumers_but_loses_watches() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> dict[str, object]:
        await bus.write(names.LOOP_BUCKET, "state", b"kept")
        pull = await bus.pull(names.JOBS_STREAM, JOB, WorkConsumer(SELFPLAY, JOB, ack_wait_s=5))
        await bus.publish_durable(JOB, b"job")
        assert len(await pull.fetch(1, 1.0)) == 1  # never acked
        followed: list[bytes] = []

        async def follow(msg: Message) -> None:
            followed.append(msg.data)

        subject = names.train_progress_subject(GAME)
        await bus.follow(names.EVENTS_STREAM, subject, 1, follow, wait_s=1.0)
        seen: list[Entry | None] = []
        async with bus.watch(names.LOOP_BUCKET, "state") as watch:
            reader = asyncio.create_task(_collect(watch, seen))
            restarted = asyncio.create_task(server.restart(3.0))
            await server.clock.sleep(1.0)
            with pytest.raises(Unavailable):
                await bus.last(names.LOOP_BUCKET, "state")
            assert await pull.fetch(1, 1.0) == []
            await restarted
            await bus.write(names.LOOP_BUCKET, "state", b"after")  # the lost watch misses it
            await bus.publish_durable(subject, b"after restart")
            (redelivered,) = await pull.fetch(1, 60.0)
            await server.clock.sleep(2.0)
            reader.cancel()
        return {
            "watch": [e.value if e else None for e in seen],
            "redelivered": (redelivered.message.num_delivered, now(server) >= 5.0),
            "followed": followed,
        }

    assert simulate(main) == {
        "watch": [b"kept", None],
        "redelivered": (2, True),
        "followed": [b"after restart"],
    }


def test_lost_watches_can_end_their_iteration() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> list[Entry | None]:
        seen: list[Entry | None] = []
        async with bus.watch(names.LOOP_BUCKET, "state") as watch:
            reader = asyncio.create_task(_collect(watch, seen))
            await server.clock.sleep(0.1)
            server.lose_watches(end=True)
            await asyncio.wait_for(reader, 1.0)
        return seen

    assert simulate(main) == [None]


def test_commits_are_observed_and_runs_are_deterministic() -> None:
    async def main(server: MemoryServer, bus: MemoryBus) -> list[tuple[str, str]]:
        commits: list[tuple[str, str]] = []
        server.on_commit(lambda subject, data, headers: commits.append((subject, data.decode())))
        others = [server.connect(f"n{i}") for i in range(3)]

        async def contend(client: MemoryBus, name: str) -> None:
            for _ in range(3):
                last = await client.last(names.ELECTION_BUCKET, names.LEADER_KEY)
                with contextlib.suppress(CasFailed):
                    await client.write(
                        names.ELECTION_BUCKET,
                        names.LEADER_KEY,
                        name.encode(),
                        ttl_s=1,
                        expect_last=last.revision,
                    )
                await server.clock.sleep(0.7)

        await asyncio.gather(*(contend(c, c.name) for c in others))
        await bus.put_object(names.MODELS_STORE, "sha", b"0123456789", chunk_bytes=4)
        meta = server.peek(names.LOOP_BUCKET, "state")
        assert meta is None
        return commits

    first, second = simulate(main), simulate(main)
    assert first == second and len(first) >= 5
    assert json.loads(first[-1][1])["nuid"] in first[-2][0]
