"""The bus contract: one suite run on every `Bus`, the nats-py adapter on a real nats-server (the
ground truth) and the in-memory bus, so both keep the semantics Conclave relies on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from schemas import names
from shared.bus.client import BusConfig, NatsBus
from shared.bus.consumers import WorkConsumer
from shared.bus.errors import BusError, CasFailed, Unavailable
from shared.bus.message import Entry, Message
from shared.bus.ports import Acks, Bus, Pull
from tests.conftest import eventually

Connect = Callable[[str], Awaitable[Bus]]

GAME = "tictactoe"
JOB = names.job_subject("selfplay", GAME, "sp")
SELFPLAY = names.job_consumer("selfplay")
WAIT_S = 10.0  # the deadline for what must happen soon: only a failing test waits it out


@pytest.fixture(params=["nats", "memory"])
def connect(request: pytest.FixtureRequest) -> Connect:
    """How to open another client on this test's server (one server per test)."""
    if request.param == "nats":
        url = request.getfixturevalue("nats_server").url

        async def to_nats(name: str) -> Bus:
            return await NatsBus.connect(BusConfig(servers=[url], name=name))

        return to_nats
    memory = pytest.importorskip("shared.bus.memory", reason="shared.bus.memory is not written yet")
    server = memory.MemoryServer()

    async def to_memory(name: str) -> Bus:
        client: Bus = server.connect(name)
        return client

    return to_memory


@pytest.fixture
async def bus(connect: Connect) -> AsyncIterator[Bus]:
    client = await connect("test")
    await client.provision()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def second(connect: Connect, bus: Bus) -> AsyncIterator[Bus]:
    """Another client of the same (provisioned) server."""
    client = await connect("other")
    try:
        yield client
    finally:
        await client.close()


# -- KV ----------------------------------------------------------------------------------------


async def test_kv_revisions_grow_and_last_reads_the_newest(bus: Bus) -> None:
    revisions = [await bus.write(names.LOOP_BUCKET, "state", b"v%d" % i) for i in range(3)]
    other = await bus.write(names.LOOP_BUCKET, "other", b"x")
    assert revisions == sorted(set(revisions)) and other > revisions[-1]
    entry = await bus.last(names.LOOP_BUCKET, "state")
    assert (entry.key, entry.revision, entry.value) == ("state", revisions[-1], b"v2")
    assert entry.present and entry.written_at is not None


async def test_kv_absent_key_is_revision_0_and_no_value(bus: Bus) -> None:
    entry = await bus.last(names.LOOP_BUCKET, "missing")
    assert (entry.revision, entry.value, entry.present) == (0, None, False)


async def test_kv_cas_write_creates_at_0_and_fails_on_a_moved_revision(bus: Bus) -> None:
    first = await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"a", expect_last=0)
    with pytest.raises(CasFailed):
        await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"b", expect_last=0)
    second = await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"c", expect_last=first)
    with pytest.raises(CasFailed):
        await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"d", expect_last=first)
    entry = await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)
    assert second > first and (entry.revision, entry.value) == (second, b"c")


async def test_kv_cas_delete_needs_the_last_revision_and_leaves_a_revision_to_cas_on(
    bus: Bus,
) -> None:
    written = await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"a")
    with pytest.raises(CasFailed):
        await bus.cas_delete(names.ELECTION_BUCKET, names.LEADER_KEY, written + 1)
    assert (await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)).value == b"a"
    deleted = await bus.cas_delete(names.ELECTION_BUCKET, names.LEADER_KEY, written)
    entry = await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)
    assert deleted > written and (entry.revision, entry.value, entry.present) == (
        deleted,
        None,
        False,
    )
    with pytest.raises(CasFailed):  # a delete is a revision: 0 no longer matches
        await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"b", expect_last=0)
    again = await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"b", expect_last=deleted)
    assert (await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)).revision == again


async def test_kv_ttl_expires_the_key_no_sooner_than_its_ttl(bus: Bus) -> None:
    started = time.monotonic()
    await bus.write(names.NODES_BUCKET, "n1", b"up", ttl_s=1)
    assert (await bus.last(names.NODES_BUCKET, "n1")).value == b"up"

    async def gone() -> Entry | None:
        entry = await bus.last(names.NODES_BUCKET, "n1")
        return entry if entry.revision == 0 else None

    expired = await eventually(gone, timeout=WAIT_S, what="n1 to expire")
    assert expired.value is None and time.monotonic() - started >= 0.95
    assert await bus.snapshot(names.NODES_BUCKET) == {}
    # An expired key leaves nothing behind (no expiry markers): a create takes it again.
    assert await bus.write(names.NODES_BUCKET, "n1", b"back", expect_last=0) > 0


async def test_a_bucket_keeps_only_each_keys_last_message(bus: Bus) -> None:
    await bus.write(names.NODES_BUCKET, "n1", b"old")
    await bus.write(names.NODES_BUCKET, "n2", b"two")
    newest = await bus.write(names.NODES_BUCKET, "n1", b"new")
    stream, subjects = (
        names.kv_stream(names.NODES_BUCKET),
        names.kv_subject(names.NODES_BUCKET, ">"),
    )
    stored = await bus.read_all(stream, subjects)
    n1, n2 = names.kv_subject(names.NODES_BUCKET, "n1"), names.kv_subject(names.NODES_BUCKET, "n2")
    assert [(m.subject, m.data) for m in stored] == [(n2, b"two"), (n1, b"new")]
    assert stored[-1].seq == newest
    assert await bus.subject_counts(stream, subjects) == {n1: 1, n2: 1}


@pytest.mark.parametrize("ttl_s", [0, 0.5, 1.5, -1])
async def test_kv_ttl_must_be_whole_seconds_of_at_least_1(bus: Bus, ttl_s: float) -> None:
    with pytest.raises(ValueError):
        await bus.write(names.NODES_BUCKET, "n1", b"up", ttl_s=ttl_s)
    assert (await bus.last(names.NODES_BUCKET, "n1")).revision == 0


async def test_kv_snapshot_has_exactly_the_present_keys(bus: Bus) -> None:
    assert await bus.snapshot(names.REGISTRY_BUCKET) == {}
    revisions = {key: await bus.write(names.REGISTRY_BUCKET, key, key.encode()) for key in "abc"}
    await bus.cas_delete(names.REGISTRY_BUCKET, "b", revisions["b"])
    snapshot = await bus.snapshot(names.REGISTRY_BUCKET)
    assert {k: (e.revision, e.value) for k, e in snapshot.items()} == {
        "a": (revisions["a"], b"a"),
        "c": (revisions["c"], b"c"),
    }


async def test_kv_watch_yields_the_current_entry_then_none_then_changes(
    bus: Bus, second: Bus
) -> None:
    first = await second.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"v1")
    async with bus.watch(names.ELECTION_BUCKET, names.LEADER_KEY) as watch:
        changes = aiter(watch)
        current = await asyncio.wait_for(anext(changes), WAIT_S)
        assert current is not None and (current.revision, current.value) == (first, b"v1")
        assert await asyncio.wait_for(anext(changes), WAIT_S) is None
        renewed = await second.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"v2")
        change = await asyncio.wait_for(anext(changes), WAIT_S)
        assert change is not None and (change.revision, change.value) == (renewed, b"v2")
        deleted = await second.cas_delete(names.ELECTION_BUCKET, names.LEADER_KEY, renewed)
        gone = await asyncio.wait_for(anext(changes), WAIT_S)
        assert gone is not None and (gone.key, gone.revision, gone.value) == (
            names.LEADER_KEY,
            deleted,
            None,
        )
        await watch.stop()


async def test_kv_watch_of_an_absent_key_starts_with_none(bus: Bus, second: Bus) -> None:
    async with bus.watch(names.ELECTION_BUCKET, names.LEADER_KEY) as watch:
        changes = aiter(watch)
        assert await asyncio.wait_for(anext(changes), WAIT_S) is None
        written = await second.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"v1")
        change = await asyncio.wait_for(anext(changes), WAIT_S)
        assert change is not None and (change.revision, change.value) == (written, b"v1")


# -- streams -----------------------------------------------------------------------------------


async def test_publish_durable_returns_growing_sequences(bus: Bus) -> None:
    seqs = [
        await bus.publish_durable(names.leader_event_subject("elected"), b"%d" % i)
        for i in range(3)
    ]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1


async def test_a_message_id_is_stored_once_within_the_dedupe_window(bus: Bus) -> None:
    subject = names.games_subject(GAME)
    assert await bus.publish_once(subject, b"first", "game-1") is True
    assert await bus.publish_once(subject, b"again", "game-1") is False
    seq = await bus.publish_durable(subject, b"other", "game-2")
    assert await bus.publish_durable(subject, b"retry", "game-2") == seq
    stored = await bus.read_all(names.GAMES_STREAM, subject)
    assert [(m.data, m.msg_id) for m in stored] == [(b"first", "game-1"), (b"other", "game-2")]
    assert await bus.subject_counts(names.GAMES_STREAM, subject) == {subject: 2}


async def test_read_all_returns_every_message_on_a_filter_oldest_first(bus: Bus) -> None:
    match, gauntlet = names.results_subject(GAME, "m1"), names.results_subject(GAME, "g1-0")
    published = [
        (subject, await bus.publish_durable(subject, b"%d" % i))
        for i, subject in enumerate([match, gauntlet, match, match])
    ]
    on_match = await bus.read_all(names.RESULTS_STREAM, match)
    assert [(m.subject, m.seq, m.data) for m in on_match] == [
        (match, seq, b"%d" % i) for i, (s, seq) in enumerate(published) if s == match
    ]
    everything = await bus.read_all(names.RESULTS_STREAM, names.results_subject(GAME, "*"))
    assert [(m.subject, m.seq) for m in everything] == published
    assert all(m.stream == names.RESULTS_STREAM and m.timestamp for m in everything)
    assert await bus.read_all(names.RESULTS_STREAM, names.results_subject("other", "*")) == []


async def test_subject_counts_count_per_subject_under_a_filter(bus: Bus) -> None:
    for subject in [JOB, JOB, names.job_subject("train", GAME, "t1")]:
        await bus.publish_durable(subject, b"job")
    assert await bus.subject_counts(names.JOBS_STREAM, names.job_filter("selfplay")) == {JOB: 2}
    assert await bus.subject_counts(names.JOBS_STREAM, names.all_jobs()) == {
        JOB: 2,
        names.job_subject("train", GAME, "t1"): 1,
    }
    assert await bus.subject_counts(names.JOBS_STREAM, names.job_filter("eval", None)) == {}


async def test_reads_by_subject_and_sequence_and_deletes(bus: Bus) -> None:
    failed = names.job_failure_subject("j1")
    elected = names.leader_event_subject("elected")
    before = time.time()
    one = await bus.publish_durable(failed, b"one")
    two = await bus.publish_durable(elected, b"two")
    three = await bus.publish_durable(failed, b"three")
    assert _seq_data(await bus.first_on(names.EVENTS_STREAM, failed)) == (one, b"one")
    assert _seq_data(await bus.last_on(names.EVENTS_STREAM, failed)) == (three, b"three")
    assert _seq_data(await bus.at_seq(names.EVENTS_STREAM, two)) == (two, b"two")
    assert _seq_data(await bus.last_on(names.EVENTS_STREAM, names.all_events())) == (
        three,
        b"three",
    )
    assert await bus.stream_seqs(names.EVENTS_STREAM) == (one, three)
    first_time = await bus.first_time(names.EVENTS_STREAM, failed)
    assert first_time is not None and before - 1 <= first_time <= time.time() + 1
    await bus.delete_at(names.EVENTS_STREAM, one)
    assert await bus.at_seq(names.EVENTS_STREAM, one) is None
    assert _seq_data(await bus.first_on(names.EVENTS_STREAM, failed)) == (three, b"three")
    assert await bus.stream_seqs(names.EVENTS_STREAM) == (two, three)
    await bus.delete_at(names.EVENTS_STREAM, one)  # already gone: nothing happens
    assert await bus.stream_seqs(names.EVENTS_STREAM) == (two, three)


async def test_reads_of_nothing_are_none(bus: Bus) -> None:
    absent = names.job_failure_subject("none")
    assert await bus.stream_seqs(names.EVENTS_STREAM) == (0, 0)
    await bus.publish_durable(names.leader_event_subject("elected"), b"x")
    assert await bus.first_on(names.EVENTS_STREAM, absent) is None
    assert await bus.last_on(names.EVENTS_STREAM, absent) is None
    assert await bus.first_time(names.EVENTS_STREAM, absent) is None
    assert await bus.at_seq(names.EVENTS_STREAM, 99) is None


def _seq_data(msg: Message | None) -> tuple[int, bytes] | None:
    return None if msg is None else (msg.seq, msg.data)


async def test_follow_delivers_every_message_from_start_seq_in_order(bus: Bus, second: Bus) -> None:
    subject = names.train_progress_subject(GAME)
    seqs = [await second.publish_durable(subject, b"%d" % i) for i in range(3)]
    await second.publish_durable(names.leader_event_subject("elected"), b"not followed")
    got: list[Message] = []

    async def handler(msg: Message) -> None:
        got.append(msg)

    task = await bus.follow(names.EVENTS_STREAM, subject, seqs[1], handler, wait_s=0.5)
    try:
        seqs += [await second.publish_durable(subject, b"%d" % i) for i in range(3, 5)]
        await eventually(lambda: len(got) >= 4, timeout=WAIT_S, what="four followed messages")
        await asyncio.sleep(0.2)  # nothing more may come
        assert [(m.seq, m.data) for m in got] == [(s, b"%d" % i) for i, s in enumerate(seqs)][1:]
    finally:
        task.cancel()


# -- objects -----------------------------------------------------------------------------------


async def test_objects_are_written_once_and_read_back_chunk_by_chunk(bus: Bus) -> None:
    data = bytes(range(10))
    assert await bus.put_object(names.MODELS_STORE, "sha-a", data, chunk_bytes=4) is True
    assert await bus.put_object(names.MODELS_STORE, "sha-a", b"replaced", chunk_bytes=4) is False
    assert await _read_object(bus, "sha-a", batch=2) == [[data[0:4], data[4:8]], [data[8:]]]


async def _read_object(bus: Bus, name: str, batch: int) -> list[list[bytes]]:
    stream = names.object_stream(names.MODELS_STORE)
    meta = await bus.last_on(stream, names.object_meta_subject(names.MODELS_STORE, name))
    assert meta is not None
    info = json.loads(meta.data)
    assert (info["name"], info["size"]) == (name, 10)
    subject = names.object_chunk_subject(names.MODELS_STORE, info["nuid"])
    return [chunks async for chunks in bus.object_chunks(stream, subject, info["chunks"], batch)]


# -- core subjects -----------------------------------------------------------------------------


async def test_subscriptions_get_what_their_wildcards_match(bus: Bus) -> None:
    one_token: list[str] = []
    any_tokens: list[str] = []
    received: list[Message] = []

    async def on_one(msg: Message) -> None:
        one_token.append(msg.subject)

    async def on_any(msg: Message) -> None:
        any_tokens.append(msg.subject)
        received.append(msg)

    # Published by the subscriber itself: one connection's commands reach the server in order,
    # while nats-py's flush can return before its pending SUBs are sent (its PING skips them).
    star = await bus.subscribe(names.pulse_wildcard("n1"), on_one)
    await bus.subscribe("pulse.>", on_any)
    last = names.pulse_subject("n1", "heartbeat")
    for subject in ["pulse.n1.a.b", names.pulse_subject("n2", "x"), "other.n1.x", last]:
        await bus.publish(subject, b"x")
    await bus.flush()
    # Messages arrive in order: once the last is in, every earlier one is.
    await eventually(lambda: last in one_token and last in any_tokens, timeout=WAIT_S)
    assert one_token == [last]
    assert any_tokens == ["pulse.n1.a.b", names.pulse_subject("n2", "x"), last]
    assert all((m.data, m.seq, m.timestamp) == (b"x", 0, None) for m in received)
    await star.unsubscribe()
    await bus.publish(names.pulse_subject("n1", "late"), b"x")
    await eventually(lambda: len(any_tokens) == 4, timeout=WAIT_S)
    assert one_token == [last]


async def test_core_messages_reach_other_clients(bus: Bus, second: Bus) -> None:
    got: list[Message] = []

    async def on_message(msg: Message) -> None:
        got.append(msg)

    await bus.subscribe(names.leader_validity_subject(), on_message)
    subject = names.leader_validity_subject()

    async def delivered() -> bool:
        # Sent until one arrives: a subscription is live only once the server has it.
        await second.publish(subject, b"valid")
        await second.flush()
        return bool(got)

    await eventually(delivered, timeout=WAIT_S, what="a message from the other client")
    assert {(m.subject, m.data) for m in got} == {(subject, b"valid")}


async def test_a_flushed_subscription_gets_the_next_message_from_anyone(
    bus: Bus, second: Bus
) -> None:
    """`flush` returns once the server has every command sent before it, subscriptions too."""
    for attempt in range(20):
        got: list[Message] = []
        arrived = asyncio.Event()

        async def on_message(
            msg: Message, got: list[Message] = got, arrived: asyncio.Event = arrived
        ) -> None:
            got.append(msg)
            arrived.set()

        subject = names.pulse_subject(f"flush{attempt}", "heartbeat")
        sub = await bus.subscribe(subject, on_message)
        await bus.flush()
        await second.publish(subject, b"once")
        await second.flush()
        async with asyncio.timeout(WAIT_S):
            await arrived.wait()
        assert [m.data for m in got] == [b"once"]
        await sub.unsubscribe()


# -- durable consumers on the work queue -------------------------------------------------------


def _selfplay(ack_wait_s: float | None = None, max_deliver: int | None = None) -> WorkConsumer:
    return WorkConsumer(SELFPLAY, names.job_filter("selfplay"), ack_wait_s, max_deliver)


async def _fetch_one(queue: Pull, timeout_s: float = WAIT_S) -> Acks:
    got: Sequence[Acks] = await queue.fetch(1, timeout_s)
    assert len(got) == 1, f"no message within {timeout_s}s"
    return got[0]


async def test_consumers_are_added_found_and_deleted(bus: Bus) -> None:
    assert await bus.consumer_exists(names.JOBS_STREAM, SELFPLAY) is False
    await bus.add_consumer(names.JOBS_STREAM, _selfplay(ack_wait_s=5))
    await bus.add_consumer(names.JOBS_STREAM, _selfplay(ack_wait_s=5))  # as it is: no error
    assert await bus.consumer_exists(names.JOBS_STREAM, SELFPLAY) is True
    await bus.delete_consumer(names.JOBS_STREAM, SELFPLAY)
    await bus.delete_consumer(names.JOBS_STREAM, SELFPLAY)  # none: nothing
    assert await bus.consumer_exists(names.JOBS_STREAM, SELFPLAY) is False


async def test_pull_makes_the_consumer_and_bind_shares_it(bus: Bus, second: Bus) -> None:
    worker = await bus.pull(names.JOBS_STREAM, names.job_filter("selfplay"), _selfplay(5))
    assert await bus.consumer_exists(names.JOBS_STREAM, SELFPLAY)
    other = await second.bind(names.JOBS_STREAM, SELFPLAY)
    seqs = {await bus.publish_durable(JOB, b"%d" % i) for i in range(2)}
    mine, theirs = await _fetch_one(worker), await _fetch_one(other)
    assert {mine.message.seq, theirs.message.seq} == seqs
    assert mine.message.subject == JOB and mine.message.stream == names.JOBS_STREAM
    by_name = await bus.pull(names.JOBS_STREAM, names.job_filter("train"), "train-workers")
    assert await bus.consumer_exists(names.JOBS_STREAM, "train-workers")
    await by_name.unsubscribe()


async def test_binding_to_a_missing_consumer_fails(bus: Bus) -> None:
    # nats-py binds without asking the server; the first fetch is refused.
    with pytest.raises(BusError):
        queue = await bus.bind(names.JOBS_STREAM, SELFPLAY)
        await queue.fetch(1, 1.0)


async def test_fetch_from_an_empty_queue_waits_its_timeout_then_is_empty(bus: Bus) -> None:
    queue = await bus.pull(names.JOBS_STREAM, names.job_filter("selfplay"), _selfplay())
    started = time.monotonic()
    assert await queue.fetch(4, 0.5) == []
    assert time.monotonic() - started >= 0.4


async def test_an_ack_removes_the_job(bus: Bus) -> None:
    queue = await bus.pull(names.JOBS_STREAM, names.job_filter("selfplay"), _selfplay(5))
    await bus.publish_durable(JOB, b"a")
    await bus.publish_durable(JOB, b"b")
    job = await _fetch_one(queue)
    assert (job.message.data, job.message.num_delivered) == (b"a", 1)
    assert job.message.timestamp is not None
    counts = await bus.consumer_counts(names.JOBS_STREAM, SELFPLAY)
    assert (counts.delivered, counts.pending, counts.ack_pending) == (1, 1, 1)
    await job.ack_sync()
    assert await bus.subject_counts(names.JOBS_STREAM, JOB) == {JOB: 1}
    counts = await bus.consumer_counts(names.JOBS_STREAM, SELFPLAY)
    assert (counts.pending, counts.ack_pending) == (1, 0)
    await (await _fetch_one(queue)).ack()

    async def all_done() -> bool:
        counts = await bus.consumer_counts(names.JOBS_STREAM, SELFPLAY)
        return (counts.delivered, counts.pending, counts.ack_pending) == (2, 0, 0)

    await eventually(all_done, timeout=WAIT_S, what="the plain ack to land")
    assert await bus.subject_counts(names.JOBS_STREAM, JOB) == {}


async def test_max_ack_pending_holds_back_deliveries_until_an_ack(bus: Bus) -> None:
    one_at_a_time = WorkConsumer(SELFPLAY, names.job_filter("selfplay"), 30, None, 1)
    queue = await bus.pull(names.JOBS_STREAM, one_at_a_time.subjects, one_at_a_time)
    seqs = [await bus.publish_durable(JOB, b"%d" % i) for i in range(2)]
    first = await _fetch_one(queue)
    assert await queue.fetch(1, 0.5) == []
    await first.ack_sync()
    assert [first.message.seq, (await _fetch_one(queue)).message.seq] == seqs


async def test_a_nak_redelivers_at_once(bus: Bus) -> None:
    queue = await bus.pull(names.JOBS_STREAM, names.job_filter("selfplay"), _selfplay(30))
    seq = await bus.publish_durable(JOB, b"job")
    await (await _fetch_one(queue)).nak()
    again = await _fetch_one(queue)
    assert (again.message.seq, again.message.num_delivered) == (seq, 2)


async def test_a_delayed_nak_redelivers_no_sooner_than_the_delay(bus: Bus) -> None:
    queue = await bus.pull(names.JOBS_STREAM, names.job_filter("selfplay"), _selfplay(30))
    await bus.publish_durable(JOB, b"job")
    job = await _fetch_one(queue)
    nak_at = time.monotonic()
    await job.nak(delay_s=1.0)
    again = await _fetch_one(queue)
    assert time.monotonic() - nak_at >= 0.95 and again.message.num_delivered == 2


async def test_an_unacked_job_is_redelivered_after_ack_wait(bus: Bus) -> None:
    queue = await bus.pull(names.JOBS_STREAM, names.job_filter("selfplay"), _selfplay(1))
    await bus.publish_durable(JOB, b"job")
    await _fetch_one(queue)
    delivered_at = time.monotonic()
    again = await _fetch_one(queue)
    assert time.monotonic() - delivered_at >= 0.95 and again.message.num_delivered == 2


async def test_in_progress_acks_postpone_redelivery(bus: Bus) -> None:
    queue = await bus.pull(names.JOBS_STREAM, names.job_filter("selfplay"), _selfplay(1))
    await bus.publish_durable(JOB, b"job")
    job = await _fetch_one(queue)
    kept_until = time.monotonic() + 2.0  # twice the ack wait
    while time.monotonic() < kept_until:
        await job.in_progress()
        assert await queue.fetch(1, 0.3) == []
    again = await _fetch_one(queue)
    assert again.message.num_delivered == 2


async def test_a_terminated_job_is_never_delivered_again(bus: Bus) -> None:
    queue = await bus.pull(names.JOBS_STREAM, names.job_filter("selfplay"), _selfplay(1))
    await bus.publish_durable(JOB, b"job")
    await (await _fetch_one(queue)).term()
    assert await queue.fetch(1, 1.5) == []  # past the ack wait

    async def settled() -> bool:
        counts = await bus.consumer_counts(names.JOBS_STREAM, SELFPLAY)
        return (counts.pending, counts.ack_pending) == (0, 0)

    await eventually(settled, timeout=WAIT_S, what="the term to land")
    assert await bus.subject_counts(names.JOBS_STREAM, JOB) == {}  # the work queue drops it


async def test_exhausted_deliveries_land_an_advisory(bus: Bus) -> None:
    queue = await bus.pull(names.JOBS_STREAM, names.job_filter("selfplay"), _selfplay(1, 2))
    seq = await bus.publish_durable(JOB, b"job")
    for _ in range(2):
        await (await _fetch_one(queue)).nak()
    assert await queue.fetch(1, 1.0) == []
    advisories = names.max_deliveries_advisory(names.JOBS_STREAM)

    async def advisory() -> Message | None:
        return await bus.last_on(names.ADVISORIES_STREAM, advisories)

    msg: Message = await eventually(advisory, timeout=WAIT_S, what="the max-deliveries advisory")
    fields: dict[str, Any] = json.loads(msg.data)
    assert msg.subject == advisories.replace("*", SELFPLAY)
    assert {k: fields[k] for k in ("stream", "consumer", "stream_seq", "deliveries")} == {
        "stream": names.JOBS_STREAM,
        "consumer": SELFPLAY,
        "stream_seq": seq,
        "deliveries": 2,
    }
    # The exhausted job stays queued until the dead-lettering leader removes it.
    kept = await bus.at_seq(names.JOBS_STREAM, seq)
    assert kept is not None and (kept.subject, kept.data) == (JOB, b"job")
    await bus.delete_at(names.JOBS_STREAM, seq)
    assert await bus.subject_counts(names.JOBS_STREAM, JOB) == {}


async def test_overlapping_consumers_on_the_work_queue_are_refused(bus: Bus) -> None:
    await bus.add_consumer(names.JOBS_STREAM, _selfplay())
    everything = WorkConsumer("every-job", names.all_jobs())
    with pytest.raises(BusError, match="not unique"):
        await bus.add_consumer(names.JOBS_STREAM, everything)
    with pytest.raises(BusError, match="not unique"):
        await bus.pull(names.JOBS_STREAM, everything.subjects, everything)
    assert await bus.consumer_exists(names.JOBS_STREAM, "every-job") is False
    train = WorkConsumer(names.job_consumer("train"), names.job_filter("train"))
    await bus.add_consumer(names.JOBS_STREAM, train)  # disjoint: fine
    assert await bus.consumer_exists(names.JOBS_STREAM, train.durable)


# -- services ----------------------------------------------------------------------------------


async def test_a_registered_service_answers_pings_until_stopped(bus: Bus, second: Bus) -> None:
    metadata = {"node": "n1", "service": "heartbeat"}
    registration = await bus.register_service("conclave", "1.0.0", "a node", metadata)
    assert registration is not None

    async def answered() -> list[dict[str, Any]]:
        return await second.ping_services(0.5)

    assert await eventually(answered, timeout=WAIT_S, what="an answer to the ping") == [metadata]
    await registration.stop()

    async def unanswered() -> bool:
        return await second.ping_services(0.5) == []

    await eventually(unanswered, timeout=WAIT_S, what="the stopped service to go quiet")


# -- errors ------------------------------------------------------------------------------------


async def test_a_durable_publish_no_stream_captures_is_unavailable(bus: Bus) -> None:
    with pytest.raises(Unavailable):
        await bus.publish_durable("nowhere.stored", b"x")
    with pytest.raises(Unavailable):
        await bus.write("unprovisioned", "key", b"x")


async def test_reads_of_what_does_not_exist_are_bus_errors(bus: Bus) -> None:
    with pytest.raises(BusError):
        await bus.consumer_counts(names.JOBS_STREAM, SELFPLAY)
    with pytest.raises(BusError):
        await bus.read_all("UNPROVISIONED", "nowhere.>")
    with pytest.raises(BusError):
        await bus.stream_seqs("UNPROVISIONED")


async def test_an_oversize_payload_is_refused(bus: Bus) -> None:
    too_big = b"x" * (bus.max_payload + 1)
    with pytest.raises(BusError):
        await bus.publish_durable(names.games_subject(GAME), too_big)
    with pytest.raises(BusError):
        await bus.publish(names.pulse_subject("n1", "heartbeat"), too_big)
    assert await bus.subject_counts(names.GAMES_STREAM, names.games_subject(GAME)) == {}
