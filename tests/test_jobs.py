"""The job work queue on a real server: delivery, in-progress, redelivery, dead letters."""

from __future__ import annotations

import asyncio
from typing import cast

import msgspec
import pytest

from schemas import names
from schemas.codec import decode, encode
from schemas.jobs import DeadLetter, SelfplayJob
from shared.bus.consumers import WorkConsumer
from shared.bus.ports import Bus
from shared.bus.queue import Queued
from shared.runtime.counters import Counters
from shared.work.jobs import (
    Delivery,
    JobSettings,
    MaxDeliveries,
    Puller,
    dead_letter_exhausted,
    ensure_consumer,
    last_failure,
    submit,
)

FAST = JobSettings(ack_wait_s=1.0, max_deliver=2)


def job(n: int) -> SelfplayJob:
    return SelfplayJob(
        job_id=f"sp-{n}", game="tictactoe", model_sha256="", generation=0, games=4, sims=8, term=1
    )


@pytest.fixture
async def queue(bus: Bus) -> Bus:
    await ensure_consumer(bus, "selfplay", FAST)
    return bus


async def test_a_job_is_delivered_once_and_gone_after_done(queue: Bus) -> None:
    assert await submit(queue, "selfplay", job(1))
    assert not await submit(queue, "selfplay", job(1)), "same attempt id is a duplicate"
    assert await submit(queue, "selfplay", job(1), attempt=2)
    puller = Puller(queue, "selfplay", SelfplayJob)
    first = await puller.next(2)
    assert first is not None and first.job == job(1) and first.delivered == 1
    await first.done()
    second = await puller.next(2)
    assert second is not None
    await second.done()
    assert await puller.next(0.5) is None


async def test_in_progress_acks_hold_a_long_job(queue: Bus) -> None:
    await submit(queue, "selfplay", job(2))
    puller = Puller(queue, "selfplay", SelfplayJob)
    delivery = await puller.next(2)
    assert delivery is not None
    async with delivery.kept_alive(every_s=0.3):
        assert await puller.next(2.5) is None, "redelivered despite in-progress acks"
    await delivery.done()


async def test_exhausted_job_moves_to_the_dlq_with_the_workers_reason(queue: Bus) -> None:
    await submit(queue, "selfplay", job(3))
    puller = Puller(queue, "selfplay", SelfplayJob)
    advisories = await queue.js.pull_subscribe(
        names.max_deliveries_advisory(names.JOBS_STREAM),
        durable="t",
        stream=names.ADVISORIES_STREAM,
    )
    for attempt in range(FAST.max_deliver):
        delivery = await puller.next(3)
        assert delivery is not None and delivery.delivered == attempt + 1
        await delivery.retry(queue, "n1", f"boom {attempt}", delay_s=0.1)
    # The server gives up (and advises) when it would deliver again, i.e. to a waiting pull.
    assert await puller.next(1) is None
    [msg] = await advisories.fetch(1, timeout=5)
    advisory = msgspec.json.decode(msg.data, type=MaxDeliveries)
    letter = await dead_letter_exhausted(queue, advisory)
    assert letter is not None and letter.job_id == "sp-3" and "boom 1" in letter.reason
    stored = await queue.js.get_msg(
        names.DLQ_STREAM, subject=names.dlq_subject("selfplay", "tictactoe", "sp")
    )
    assert decode(stored.data or b"", DeadLetter).job_id == "sp-3"
    assert (await queue.js.stream_info(names.JOBS_STREAM)).state.messages == 0
    assert await dead_letter_exhausted(queue, advisory) is None, "handling twice is harmless"


async def test_a_malformed_job_is_dead_lettered_at_once_naming_the_field(queue: Bus) -> None:
    await queue.js.publish(
        names.job_subject("selfplay", "tictactoe", "sp"),
        b'{"type":"conclave.job.selfplay.v1","games":"x"}',
    )
    puller = Puller(queue, "selfplay", SelfplayJob)
    assert await puller.next(2) is None
    stored = await queue.js.get_msg(
        names.DLQ_STREAM, subject=names.dlq_subject("selfplay", "tictactoe", "sp")
    )
    letter = decode(stored.data or b"", DeadLetter)
    assert "bad job" in letter.reason and "$." in letter.reason
    await asyncio.sleep(1.5)  # an absence: past the 1 s ack wait, when an unended job comes back
    assert await puller.next(0.5) is None, "a terminated job is not redelivered"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"job_id": "a.b"}, "$.job_id", "job_id 'a.b' must be"),
        ({"group": "a.b"}, "$.group", "group 'a.b' must be"),
    ],
)
async def test_a_job_no_attempt_could_do_is_dead_lettered_naming_the_field(
    queue: Bus, change: dict[str, str], field: str, reason: str
) -> None:
    """Found by tests/test_fuzz_live.py: a self-play worker crashed on an unknown game, and a
    trainer on a job id that cannot name its `trained.<job>` key or failure report."""
    subject = names.job_subject("selfplay", "tictactoe", "sp")
    await queue.js.publish(subject, encode(msgspec.structs.replace(job(1), **change)))
    await submit(queue, "selfplay", job(2))
    puller = Puller(queue, "selfplay", SelfplayJob)
    assert await puller.next(2) is None
    delivery = await puller.next(2)
    assert delivery is not None and delivery.job == job(2)  # the one behind it comes through
    stored = await queue.js.get_msg(
        names.DLQ_STREAM, subject=names.dlq_subject("selfplay", "tictactoe", "sp")
    )
    letter = decode(stored.data or b"", DeadLetter)
    assert letter.reason.startswith(f"bad job: field {field}: {reason}"), letter.reason


async def test_a_job_for_a_game_this_node_lacks_is_refused_for_one_that_has_it(
    queue: Bus,
) -> None:
    """A heterogeneous fleet: a node without the game hands the job back, saying why, and a node
    with it plays it (no dead letter, no crash loop)."""
    await submit(queue, "selfplay", job(7))
    lacking = Puller(queue, "selfplay", SelfplayJob, games=["connect4"], node="n-lacks")
    assert await lacking.next(2) is None
    assert "no game 'tictactoe' here" in await last_failure(queue, "sp-7")
    assert "on n-lacks" in await last_failure(queue, "sp-7")
    having = Puller(queue, "selfplay", SelfplayJob, node="n-has")
    delivery = await having.next(5)  # after the refusal's delay
    assert delivery is not None and delivery.job == job(7) and delivery.delivered == 2
    await delivery.done()
    assert await queue.subject_counts(names.DLQ_STREAM, names.all_dead_letters()) == {}


async def test_jobs_queued_before_tiers_move_to_the_cpu_tier(bus: Bus) -> None:
    """A store from before tiers: one `selfplay-workers` consumer, jobs on 4-token subjects."""
    old = WorkConsumer("selfplay-workers", "jobs.selfplay.>")
    await bus.add_consumer(names.JOBS_STREAM, old)
    await bus.publish_once("jobs.selfplay.tictactoe.sp", encode(job(8)), "sp-8-a1")
    await ensure_consumer(bus, "selfplay", FAST, migrate=True)
    assert not await bus.consumer_exists(names.JOBS_STREAM, "selfplay-workers")
    counts = await bus.subject_counts(names.JOBS_STREAM, names.job_filter("selfplay", None))
    assert counts == {"jobs.selfplay.cpu.tictactoe.sp": 1}
    delivery = await Puller(bus, "selfplay", SelfplayJob, tier="gpu").next(3)
    assert delivery is not None and delivery.job == job(8)
    await delivery.done()
    await ensure_consumer(bus, "selfplay", FAST, migrate=True)  # again: nothing to do


async def test_a_job_in_hand_is_what_the_process_is_doing() -> None:
    job = SelfplayJob(
        job_id="sp-doing", game="tictactoe", model_sha256="", generation=0, games=1, sims=1, term=1
    )
    counters = Counters()
    delivery = Delivery(cast(Queued, object()), job, "selfplay", counters)
    assert counters.doing() == ""
    async with delivery.kept_alive(every_s=60):
        assert counters.doing() == "selfplay sp-doing"
    assert counters.doing() == ""
