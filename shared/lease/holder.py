"""Holding a quorum lease: the leader's, or any other singleton's (e.g. the syncer's).

One task per lease slot keeps that slot (a slow or dead slot server delays only its own task),
and one task keeps the register (KV `election` for the leader), the term, the fencing and the
audit trail. Each lease has a register and slots of its own (`names.LEASE_REGISTERS`), so each
bucket has one writer role.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import LeaderEvent, LeaderEventKind, LeaderValidity, Lease
from shared.bus.errors import BusError, CasFailed, Unavailable
from shared.bus.message import Entry
from shared.bus.ports import KV, Clock, Streams, Subjects, Timed
from shared.lease import quorum as lease
from shared.lease.quorum import LeaseParams, Slot, Stance
from shared.lease.watch import RETRY_S, KeyChanges
from shared.runtime.service import wait_or_stop

log = logging.getLogger("conclave.lease")

ANNOUNCE_STEP_S = 0.1  # validity growth worth a new promise on the audit trail


class LeaseBus(KV, Subjects, Streams, Timed, Protocol):
    """What holding a lease uses: its keys, the validity promises, the leader events, and the
    clock its validity is measured by."""


@dataclass
class Contender:
    """One process's view of one lease; all broker I/O for it happens here."""

    bus: LeaseBus
    node_id: str
    params: LeaseParams
    key: str = names.LEADER_KEY
    register_bucket: str = names.ELECTION_BUCKET  # its slots are named after it
    announce: bool = True  # leader events and the validity audit trail (the leader lease only)
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    term: int | None = None
    acquired_wall: float = 0.0
    register: Slot = field(default_factory=Slot)
    slots: list[Slot] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # for the register task
    announced_until: float = -math.inf
    register_read_at: float = -math.inf
    _stance: Stance = Stance.KEEP
    register_changes: KeyChanges = field(init=False)
    slot_changes: list[KeyChanges] = field(init=False)

    def __post_init__(self) -> None:
        replicas = self.bus.replicas
        self.buckets = self.buckets or names.lease_slot_buckets(replicas, self.register_bucket)
        self.slots = [Slot() for _ in self.buckets]
        self.register_changes = KeyChanges(self.key, self.register_bucket, self.clock)
        self.slot_changes = [KeyChanges(self.key, bucket, self.clock) for bucket in self.buckets]

    @property
    def clock(self) -> Clock:
        return self.bus.clock

    def until(self) -> float:
        return lease.valid_until(self.slots, self.instance, self.params)

    def stance(self) -> Stance:
        leading = self.term is not None or self.until() > self.clock.monotonic()
        return lease.stance(self.slots, self.register, self.instance, leading)

    def refresh(self) -> None:
        """After any change: wake the register task, and the slot tasks if the stance moved."""
        self.changed.set()
        now = self.stance()
        if now is not self._stance:
            self._stance = now
            for changes in self.slot_changes:
                changes.changed.set()

    # -- slots ----------------------------------------------------------------------------------

    async def read_slot(self, i: int, reset: bool = False) -> None:
        self.slots[i] = await self._reread(self.buckets[i], self.slots[i], reset)
        self.refresh()

    async def write_slot(self, i: int, expect_last: int, deadline: float) -> bool:
        sent = self.clock.monotonic()
        try:
            rev = await self._write(self.buckets[i], expect_last, self.term or 0, deadline - sent)
        except CasFailed:
            await self.read_slot(i, reset=True)
            return False  # pause: a read that failed too must not turn this into a tight loop
        except Unavailable as e:
            log.warning("lease slot %s not written: %s", self.buckets[i], e)
            return False
        self.slots[i] = lease.written(self.instance, rev, sent)
        self.refresh()
        return True

    async def release_slot(self, i: int, expect_last: int) -> bool:
        # Stop counting the slot before the delete is sent: while it is in flight another
        # slot's ack could otherwise make a majority of a slot we are giving away.
        self.slots[i] = lease.releasing(self.slots[i])
        self.refresh()
        try:
            rev = await self.bus.cas_delete(self.buckets[i], self.key, expect_last)
        except BusError as e:
            log.warning("lease slot %s not released: %s", self.buckets[i], e)
            await self.read_slot(i)
            return False
        self.slots[i] = Slot(None, rev, known=True)
        self.refresh()
        return True

    # -- the register ---------------------------------------------------------------------------

    async def read_register(self, reset: bool = False) -> None:
        self.register_read_at = self.clock.monotonic()
        self.register = await self._reread(self.register_bucket, self.register, reset)
        self.refresh()

    def register_recheck_at(self) -> float:
        """When a contender without a term must read the register again: an expired key sends
        no watch event, and the slot tasks' wake-ups must not keep pushing this back."""
        return self.register_read_at + self.params.recheck_s

    async def claim(self, step: lease.Claim) -> bool:
        """Write the register: a new term (its revision), or ours renewed or restored."""
        sent = self.clock.monotonic()
        term = 0 if step.new_term else self.term or 0
        timeout = max(self.params.renew_every_s, self.until() - sent)
        try:
            rev = await self._write(self.register_bucket, step.expect_last, term, timeout)
        except CasFailed:
            await self.read_register(reset=True)
            return False
        except Unavailable as e:
            log.warning("lease register not written: %s", e)
            return False
        self.register = lease.written(self.instance, rev, sent)
        if step.new_term:
            self.term, self.acquired_wall = rev, self.clock.time()
            # Announce before anything else: a term is only acted on once the audit trail has it.
            await self.announce_validity()
            log.info("leader elected", extra={"term": rev})
            await self._event("elected", "", rev)
        self.refresh()
        return True

    async def announce_validity(self) -> None:
        """Promise our validity on the audit trail a checker uses to prove terms never overlap."""
        until = self.until()
        if self.term is None or until < self.announced_until + ANNOUNCE_STEP_S:
            return
        self.announced_until = until
        if not self.announce:
            return
        wall_until = self.clock.time() + (until - self.clock.monotonic())
        msg = LeaderValidity(
            node=self.node_id,
            instance=self.instance,
            term=self.term,
            valid_from=self.acquired_wall,
            valid_until=wall_until,
        )
        await _quietly(self.bus.publish(names.leader_validity_subject(), encode(msg)))

    async def announce_end(self, term: int) -> None:
        """The final promise of `term`, which we no longer act on: it ended now."""
        if not self.announce:
            return
        now = self.clock.time()
        msg = LeaderValidity(
            node=self.node_id,
            instance=self.instance,
            term=term,
            valid_from=self.acquired_wall,
            valid_until=max(now, self.acquired_wall),
            final=True,
        )
        data = encode(msg)

        async def send() -> None:
            await self.bus.publish(names.leader_validity_subject(), data)
            await self.bus.flush(timeout_s=1)  # out before the deletes let a contender in

        try:  # bounded: a bus that is away (a publish waits for it) must not hold up the release
            await asyncio.wait_for(_quietly(send()), END_ANNOUNCE_S)
        except TimeoutError:
            log.warning("the end of term %s was not announced: the bus is away", term)

    async def give_up(self, kind: LeaderEventKind, reason: str) -> None:
        term, self.term = self.term, None
        self.announced_until = -math.inf
        if term is None:
            return
        log.warning("leadership %s: %s", kind, reason, extra={"term": term})
        await self._event(kind, reason, term)
        self.refresh()

    async def release(self) -> None:
        """Graceful step-down: end the term on the audit trail, then CAS-delete what we hold so
        a contender takes over at once (its term starts after ours ended, not after our last
        promise would have run out)."""
        term = self.term
        await self.give_up("released", "shutdown")
        if term is not None:
            await self.announce_end(term)
        held = [
            (b, s) for b, s in zip(self.buckets, self.slots, strict=True) if s.ours(self.instance)
        ]
        if self.register.ours(self.instance):
            held.insert(0, (self.register_bucket, self.register))
        self.register, self.slots = Slot(), [Slot() for _ in self.buckets]
        results = await asyncio.gather(
            *(self.bus.cas_delete(b, self.key, s.revision) for b, s in held),
            return_exceptions=True,
        )
        for (bucket, _), result in zip(held, results, strict=True):
            if isinstance(result, BusError):
                log.warning("%s/%s not released, it will expire: %s", bucket, self.key, result)

    async def _reread(self, bucket: str, known: Slot, reset: bool) -> Slot:
        """`known` after a read of our key in `bucket` (unchanged if the read fails). `reset`
        after a CAS failure: what we knew is wrong, even at a higher revision (a wiped store)."""
        try:
            entry = await self.bus.last(bucket, self.key)
        except BusError as e:
            log.warning("cannot read %s/%s: %s", bucket, self.key, e)
            return known
        holder = _holder(entry)
        if reset:
            return Slot(holder, entry.revision, known=True)
        return lease.seen(known, holder, entry.revision)

    async def _write(self, bucket: str, expect_last: int, term: int, timeout: float) -> int:
        value = Lease(
            node=self.node_id,
            instance=self.instance,
            term=term,
            acquired_at=self.acquired_wall,
            ttl_s=self.params.ttl_s,
        )
        return await self.bus.write(
            bucket,
            self.key,
            encode(value),
            ttl_s=self.params.ttl_s,
            expect_last=expect_last,
            timeout=max(0.05, timeout),
        )

    async def _event(self, kind: LeaderEventKind, reason: str, term: int) -> None:
        if not self.announce:
            return
        event = LeaderEvent(
            kind=kind,
            node=self.node_id,
            instance=self.instance,
            term=term,
            at=self.clock.time(),
            reason=reason,
        )
        await _quietly(self.bus.publish_durable(names.leader_event_subject(kind), encode(event)))


def _holder(entry: Entry) -> str | None:
    if entry.value is None:
        return None
    try:
        return decode(entry.value, Lease, subject=entry.key).instance
    except BadMessage as e:
        # An unreadable lease still blocks: it expires by TTL like any other.
        log.error("unreadable lease: %s", e, extra={"field": e.field})
        return f"unreadable@{entry.revision}"


END_ANNOUNCE_S = 1.0  # the most a release waits to announce its term's end


async def _quietly(op: object) -> None:
    try:
        await op  # type: ignore[misc]
    except BusError as e:
        log.warning("not published: %s", e)


async def keep_slot(me: Contender, i: int, changes: KeyChanges, stop: asyncio.Event) -> None:
    """Take, renew or give up slot `i` as the stance says, until `stop`."""
    await me.read_slot(i)
    while not stop.is_set():
        step = lease.slot_step(
            me.slots[i], me.instance, me.stance(), me.clock.monotonic(), me.params
        )
        done = True
        match step:
            case lease.Wait(until):
                changed = await changes.wait(stop, until)
                if changed or not me.slots[i].ours(me.instance):  # a lost watch: read anyway
                    await me.read_slot(i)
            case lease.Take(expect_last):
                done = await me.write_slot(i, expect_last, me.clock.monotonic() + me.params.ttl_s)
            case lease.Renew(expect_last, deadline):
                done = await me.write_slot(i, expect_last, deadline)
            case lease.Release(expect_last):
                done = await me.release_slot(i, expect_last)
        if not done:
            await wait_or_stop(stop, RETRY_S)


async def keep_register(me: Contender, changes: KeyChanges, stop: asyncio.Event) -> None:
    """Claim, renew and fence the term as the slots and the register say, until `stop`."""
    await me.read_register()
    while not stop.is_set():
        me.changed.clear()  # before deciding: a change while we act must wake the next wait
        now = me.clock.monotonic()
        step = lease.register_step(me.term, me.until(), me.register, me.instance, now, me.params)
        done = True
        match step:
            case lease.Wait(until):
                await me.announce_validity()
                recheck = me.register_recheck_at()
                deadline = until if me.term is not None else min(until, recheck)
                changed = await changes.wait(stop, deadline, me.changed)
                stale = me.term is None and me.clock.monotonic() >= recheck  # a lost watch
                if changed or stale:
                    await me.read_register()
            case lease.Claim():
                done = await me.claim(step)
            case lease.Fence(reason):
                await me.give_up("fenced", reason)
        if not done:
            await wait_or_stop(stop, RETRY_S)


async def hold(me: Contender, stop: asyncio.Event) -> None:
    """Contend for `me`'s lease until `stop`, following its keys; release it on the way out."""
    watches = [me.register_changes, *me.slot_changes]
    try:
        async with asyncio.TaskGroup() as tg:
            followers = {tg.create_task(c.follow(me.bus), name="lease-watch") for c in watches}
            try:
                async with asyncio.TaskGroup() as keepers:
                    for i, changes in enumerate(me.slot_changes):
                        keepers.create_task(keep_slot(me, i, changes, stop), name=f"slot-{i + 1}")
                    keepers.create_task(
                        keep_register(me, me.register_changes, stop), name="register"
                    )
            finally:
                await me.release()  # first: a contender should not wait on our housekeeping
                for changes in watches:
                    await changes.close()
                await asyncio.wait(followers, timeout=2.0)
                for follower in followers:
                    follower.cancel()  # no-op when the watch ended by itself, as it should
    finally:
        await me.release()
