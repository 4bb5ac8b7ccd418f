"""Jobs on a JetStream work queue: submit, pull, keep alive, finish, fail, and dead-letter."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.jobs import DeadLetter, EvalJob, JobFailure, SelfplayJob, TrainJob, job_group
from shared.bus.compat import Gate
from shared.bus.consumers import WorkConsumer
from shared.bus.errors import BusError
from shared.bus.ports import Acks, Bus, Pull, Streams
from shared.learn.games import game_names
from shared.runtime.counters import Counters
from shared.work.fleet import Standing, may_pull

log = logging.getLogger("conclave.jobs")

J = TypeVar("J", SelfplayJob, TrainJob, EvalJob)

JOB_TYPES: dict[str, type[SelfplayJob] | type[TrainJob] | type[EvalJob]] = {
    "selfplay": SelfplayJob,
    "train": TrainJob,
    "eval": EvalJob,
}


LANE_PROBE_S = 0.25  # how long a worker waits on each higher-priority lane before the next
CONSUMER_POLL_S = 1.0  # how often a worker looks for the job consumers it waits for
REFUSE_DELAY_S = 2.0  # a refused job waits this long before redelivery: another worker's turn


def job_seed(job_id: str, delivery: int = 1) -> int:
    """The random seed of one delivery of a job: the same job replays the same way (job ids
    come from the loop state), and a redelivery plays afresh (new games, new ids)."""
    digest = hashlib.sha256(f"{job_id}#{delivery}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class JobSettings(msgspec.Struct, frozen=True):
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000


async def ensure_consumer(
    bus: Bus, kind: str, settings: JobSettings, *, migrate: bool = False
) -> None:
    """Create (or update) the durable consumer of every lane of `kind`; `migrate` first drops
    the kind's consumer from before lanes and tiers, and moves its queued jobs to the default
    tier. The coordinator's: only its identity (and admin's) may configure the job consumers;
    workers wait for them (`await_consumer`)."""
    if migrate:
        await _migrate_unlaned(bus, kind)
    for lane in names.job_lanes(kind):
        consumer = WorkConsumer(
            names.job_consumer(kind, lane),
            names.job_filter(kind, lane),
            ack_wait_s=settings.ack_wait_s,
            max_deliver=settings.max_deliver,
            max_ack_pending=settings.max_ack_pending,
        )
        await bus.add_consumer(names.JOBS_STREAM, consumer)


async def await_consumer(
    bus: Bus, kind: str, stop: asyncio.Event, every_s: float = CONSUMER_POLL_S
) -> bool:
    """Wait until the durable consumer of every lane of `kind` exists (the coordinator creates
    them): a worker binds to them and never creates or reconfigures them. False if `stop` came
    first."""
    for lane in names.job_lanes(kind):
        consumer = names.job_consumer(kind, lane)
        waiting = False
        while not await bus.consumer_exists(names.JOBS_STREAM, consumer):
            if not waiting:
                log.info("waiting for the coordinator to create consumer %s", consumer)
                waiting = True
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                continue
            return False
    return True


async def _migrate_unlaned(bus: Bus, kind: str) -> None:
    """A store from before lanes and tiers has one `<kind>-workers` consumer on `jobs.<kind>.>`,
    which a work-queue stream refuses beside the lanes' consumers, so it goes. Self-play and
    training jobs queued under the old subjects (`jobs.<kind>.<game>.<group>`) move to the
    default tier; evaluation jobs there are no longer pulled, and their matches reschedule them
    once they are dead-lettered by hand (docs/architecture.md)."""
    legacy = names.legacy_job_consumer(kind)
    if legacy is None:
        return
    await bus.delete_consumer(names.JOBS_STREAM, legacy)
    if kind in names.TIERED_KINDS:
        moved = await _move_untiered(bus, kind)
        if moved:
            log.info("moved %d queued %s jobs to the %s tier", moved, kind, names.DEFAULT_TIER)


async def _move_untiered(bus: Bus, kind: str) -> int:
    return await move_queued(bus, kind, names.untiered_job_filter(kind), names.DEFAULT_TIER)


async def move_queued(bus: Bus, kind: str, source: str, tier: str) -> int:
    """Refile every job of `kind` stored on `source` (a filter) under `tier`: republish, then
    delete. A crash between the two leaves a copy that the next move deduplicates by id (within
    the stream's duplicate window; after it, one job is played twice, which costs games, never
    loses any). Returns how many moved."""
    moved = 0
    while (msg := await bus.first_on(names.JOBS_STREAM, source)) is not None:
        game, group = names.game_and_group(msg.subject)
        msg_id = f"{msg.msg_id or f'seq{msg.seq}'}-{tier}"
        await bus.publish_once(names.job_subject(kind, game, group, tier), msg.data, msg_id)
        await bus.delete_at(names.JOBS_STREAM, msg.seq)
        moved += 1
    return moved


async def rehome(bus: Bus, kind: str, tiers: Iterable[str]) -> int:
    """Jobs queued in `tiers` (ones no live worker pulls: their nodes all gone) move to the
    default tier, which every worker pulls: no job waits for hardware that left."""
    moved, to = 0, names.DEFAULT_TIER
    for tier in tiers:
        if tier != to:
            found = await move_queued(bus, kind, names.job_filter(kind, tier), to)
            if found:
                log.warning("no %s worker in tier %s: %d jobs moved to %s", kind, tier, found, to)
            moved += found
    return moved


async def submit(
    bus: Bus,
    kind: str,
    job: SelfplayJob | TrainJob | EvalJob,
    attempt: int = 1,
    tier: str = names.DEFAULT_TIER,
) -> bool:
    """Enqueue `job`: an evaluation job in its kind's lane, a self-play or training job in
    `tier`'s; the message id makes a retried submit of the same attempt a no-op (in any tier).

    Returns False when JetStream recognised it as a duplicate.
    """
    msg_id = f"{job.job_id}-a{attempt}"
    lane = job.kind if isinstance(job, EvalJob) else tier
    subject = names.job_subject(kind, job.game, job_group(job), lane)
    return await bus.publish_once(subject, encode(job), msg_id)


@dataclass
class Delivery(Generic[J]):
    """One delivery of a job to this worker."""

    msg: Acks
    job: J
    kind: str
    # the worker's: what it is doing, for its pulses
    counters: Counters = dataclasses.field(default_factory=Counters)

    @property
    def delivered(self) -> int:
        return self.msg.message.num_delivered

    @property
    def submitted_at(self) -> float:
        """When the job was stored in the queue (the stream's timestamp)."""
        stamp = self.msg.message.timestamp
        return stamp.timestamp() if stamp else 0.0

    async def done(self) -> None:
        """Acknowledge, waiting for the server: the job is gone from the queue once this returns."""
        await self.msg.ack_sync()

    async def retry(self, bus: Streams, node: str, reason: str, delay_s: float = 1.0) -> None:
        """This attempt failed: say why (kept for the dead letter) and ask for redelivery."""
        await report_failure(bus, self.kind, self.job.job_id, node, reason, self.delivered)
        await self.msg.nak(delay_s)

    async def release(self) -> None:
        """Hand the job back at once, for another worker (this one is stopping)."""
        await self.msg.nak()

    @asynccontextmanager
    async def kept_alive(self, every_s: float) -> AsyncIterator[None]:
        """Send in-progress acks while the body runs, so a long job is not redelivered."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(every_s)
                try:
                    await self.msg.in_progress()
                except BusError as e:
                    log.warning("in-progress ack failed: %s", e)

        task = asyncio.create_task(beat(), name=f"keepalive-{self.job.job_id}")
        self.counters.set_doing(f"{self.kind} {self.job.job_id}")  # shown per node by status
        try:
            yield
        finally:
            self.counters.set_doing("")
            task.cancel()


class Puller(Generic[J]):
    """A worker's handle on the shared durable consumers of one job kind: it takes the next job
    from the first lane that has one, so a match never waits behind queued rating games, and a
    GPU worker takes CPU-tier work only when its own tier has none.

    `tier` is the worker's (for self-play and training); `games` those it can play (None: every
    game this build has): a job for another game is refused, with the reason, for a node that
    has it. While `node` is draining (`conclave fleet drain`) it takes no job (shared.work.fleet).
    """

    def __init__(
        self,
        bus: Bus,
        kind: str,
        job_type: type[J],
        probe_s: float = LANE_PROBE_S,
        counters: Counters | None = None,
        *,
        tier: str = names.DEFAULT_TIER,
        games: Collection[str] | None = None,
        node: str = "",
    ) -> None:
        self.bus = bus
        self.counters = Counters() if counters is None else counters
        self.kind = kind
        self.job_type: type[J] = job_type
        self.probe_s = probe_s
        self.lanes = names.tier_lanes(tier) if kind in names.TIERED_KINDS else names.job_lanes(kind)
        self.games = frozenset(game_names() if games is None else games)
        self.node = node
        self.gate = Gate(bus)
        self.fleet = Standing(bus, node, bus.clock)
        self._subs: dict[str, Pull] = {}

    async def next(self, timeout_s: float = 5.0) -> Delivery[J] | None:
        """The next job, or None if none came in time (or this build's protocol is refused, or
        the node is draining); a malformed job goes to the DLQ. With lanes, each lane is asked
        in priority order for up to `probe_s` (the last one for the rest of `timeout_s`)."""
        if may_pull(await self.gate.refusal(), await self.fleet.read()) is not None:
            await asyncio.sleep(timeout_s)  # accepted or resumed later: check again then
            return None
        for i, lane in enumerate(self.lanes):
            last = i == len(self.lanes) - 1
            wait = max(self.probe_s, timeout_s - self.probe_s * i) if last else self.probe_s
            msg = await self._fetch(lane, wait)
            if msg is not None:
                return await self._delivery(msg)
        return None

    async def _fetch(self, lane: str, timeout_s: float) -> Acks | None:
        msgs = await (await self._subscription(lane)).fetch(1, timeout_s)
        return msgs[0] if msgs else None

    async def _delivery(self, msg: Acks) -> Delivery[J] | None:
        subject = msg.message.subject
        try:
            job = decode(msg.message.data, self.job_type, subject=subject)
            check_job(job, subject)
        except BadMessage as e:
            await dead_letter_now(self.bus, self.kind, msg, f"bad job: field {e.field}: {e.reason}")
            return None
        if job.game not in self.games:
            await self._refuse(msg, job, f"no game {job.game!r} here (has {sorted(self.games)})")
            return None
        if (draining := may_pull(None, await self.fleet.read())) is not None:
            await self._refuse(msg, job, draining)  # drained while fetching: hand it back
            return None
        return Delivery(msg, job, self.kind, self.counters)

    async def _refuse(self, msg: Acks, job: J, reason: str) -> None:
        """Hand a job this worker cannot do back for another, saying why (kept for the dead
        letter should no worker take it)."""
        log.warning("refusing %s job %s: %s", self.kind, job.job_id, reason)
        delivered = msg.message.num_delivered
        await report_failure(self.bus, self.kind, job.job_id, self.node, reason, delivered)
        await msg.nak(REFUSE_DELAY_S)

    async def _subscription(self, lane: str) -> Pull:
        if lane not in self._subs:
            consumer = names.job_consumer(self.kind, lane)
            self._subs[lane] = await self.bus.bind(names.JOBS_STREAM, consumer)
        return self._subs[lane]


def check_job(job: SelfplayJob | TrainJob | EvalJob, subject: str) -> None:
    """BadMessage naming the field when no attempt at `job` could work: its id or group cannot
    name the subjects and keys its products are filed under."""
    for field, value in (("job_id", job.job_id), ("group", job.group)):
        try:
            names.check_token(value, field)
        except names.BadName as e:
            raise BadMessage(subject, f"$.{field}", str(e)) from e


async def report_failure(
    bus: Streams, kind: str, job_id: str, node: str, reason: str, delivery: int
) -> None:
    failure = JobFailure(
        job_id=job_id, kind=kind, node=node, reason=reason[:2000], delivery=delivery, at=time.time()
    )
    try:
        await bus.publish_durable(names.job_failure_subject(job_id), encode(failure))
    except BusError as e:
        log.warning("failure report for %s not stored: %s", job_id, e)


async def dead_letter_now(bus: Bus, kind: str, queued: Acks, reason: str, job_id: str = "") -> None:
    """Move a job that must never be retried (unreadable, or no worker can do it) to the DLQ at
    once; `job_id` when the job could be read."""
    msg = queued.message
    letter = DeadLetter(
        kind=kind,
        job_id=job_id,
        stream_seq=msg.seq,
        deliveries=msg.num_delivered,
        reason=reason,
        job=msg.data,
        at=time.time(),
    )
    await bus.publish_durable(
        names.dlq_subject(kind, *names.game_and_group(msg.subject)),
        encode(letter),
        msg_id=f"dlq-{msg.seq}",
    )
    await queued.term()
    log.error("dead-lettered %s job #%d: %s", kind, msg.seq, reason)


class MaxDeliveries(msgspec.Struct, frozen=True):
    """The server's advisory that a consumer gave up on a message (only the fields we use)."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


async def dead_letter_exhausted(bus: Bus, advisory: MaxDeliveries) -> DeadLetter | None:
    """Move an exhausted job from the work queue to the DLQ with the last failure reason.

    Idempotent: the DLQ publish is deduplicated by stream sequence, and an already removed job
    is skipped, so a leader that crashes half-way can simply do it again.
    """
    kind = names.consumer_kind(advisory.consumer)
    raw = await bus.at_seq(names.JOBS_STREAM, advisory.stream_seq)
    if raw is None:
        return None
    data = raw.data
    job_id = _job_id(kind, data)
    reason = await last_failure(bus, job_id) if job_id else "unreadable job"
    letter = DeadLetter(
        kind=kind,
        job_id=job_id,
        stream_seq=advisory.stream_seq,
        deliveries=advisory.deliveries,
        reason=reason,
        job=data,
        at=time.time(),
    )
    game, group = names.game_and_group(raw.subject) if raw.subject else ("unknown", "unknown")
    await bus.publish_durable(
        names.dlq_subject(kind, game, group),
        encode(letter),
        msg_id=f"dlq-{advisory.stream_seq}",
    )
    await bus.delete_at(names.JOBS_STREAM, advisory.stream_seq)
    return letter


def _job_id(kind: str, data: bytes) -> str:
    job_type = JOB_TYPES.get(kind)
    if job_type is None:
        return ""
    try:
        return decode(data, job_type).job_id
    except BadMessage:
        return ""


async def last_failure(bus: Bus, job_id: str) -> str:
    raw = await bus.last_on(names.EVENTS_STREAM, names.job_failure_subject(job_id))
    if raw is None:
        return "no failure report: the worker died or the ack wait expired on every delivery"
    try:
        failure = decode(raw.data, JobFailure)
    except BadMessage as e:
        return f"unreadable failure report: {e}"
    return f"{failure.reason} (delivery {failure.delivery} on {failure.node})"


async def handle_dead_letters(bus: Bus, stop: asyncio.Event) -> None:
    """Move every job the server gave up on to the DLQ; advisories wait in a stream meanwhile."""
    sub = await bus.pull(
        names.ADVISORIES_STREAM,
        names.max_deliveries_advisory(names.JOBS_STREAM),
        names.DEAD_LETTER_CONSUMER,
    )
    while not stop.is_set():
        for msg in await sub.fetch(16, 2.0):
            await _dead_letter_one(bus, msg)


async def _dead_letter_one(bus: Bus, queued: Acks) -> None:
    msg = queued.message
    try:
        advisory = decode(msg.data, MaxDeliveries, subject=msg.subject)
    except BadMessage as e:
        log.error("unreadable advisory: %s", e)
    else:
        letter = await dead_letter_exhausted(bus, advisory)
        if letter is not None:
            log.error("dead-lettered %s job %s: %s", letter.kind, letter.job_id, letter.reason)
    await queued.ack_sync()
