"""Holding a fenced lease in KV `election`: the leader's, or any other singleton's (e.g. syncer)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import LeaderEvent, LeaderEventKind, LeaderValidity, Lease
from shared import lease
from shared.bus import Bus, BusError, CasFailed, Entry, Unavailable
from shared.lease import Held, LeaseParams, Observed
from shared.leasewatch import RETRY_S, KeyChanges
from shared.service import wait_or_stop

log = logging.getLogger("conclave.lease")


@dataclass
class Contender:
    """One process's view of the lease; all broker I/O for the lease happens here."""

    bus: Bus
    node_id: str
    params: LeaseParams
    key: str = names.LEADER_KEY
    announce: bool = True  # leader events and the validity audit trail (the leader lease only)
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    held: Held | None = None
    observed: Observed = field(default_factory=lambda: Observed(holder=None, revision=0))
    acquired_wall: float = 0.0

    async def observe(self) -> None:
        entry = await self.bus.last(names.ELECTION_BUCKET, self.key)
        self.observed = Observed(holder=_holder(entry), revision=entry.revision)

    async def observe_quietly(self) -> None:
        try:
            await self.observe()
        except BusError as e:
            log.warning("cannot read lease: %s", e)

    async def acquire(self, expect_last: int) -> bool:
        value = Lease(self.node_id, self.instance, 0, time.time(), self.params.ttl_s)
        sent = time.monotonic()
        try:
            rev = await self._write(value, expect_last, timeout=self.params.renew_every_s)
        except CasFailed:
            await self.observe_quietly()
            return True  # someone else won; nothing to retry
        except Unavailable as e:
            log.warning("acquire failed: %s", e)
            return False
        self.held = lease.acquired(rev, sent)
        self.acquired_wall = time.time()
        self.observed = Observed(self.instance, rev)
        # Announce before anything else: a term is only acted on once the audit trail has it.
        await self._announce(self.held)
        log.info("leader elected", extra={"term": rev})
        await self._event("elected", "", rev)
        return True

    async def renew(self, held: Held, deadline: float) -> bool:
        value = Lease(self.node_id, self.instance, held.term, self.acquired_wall, self.params.ttl_s)
        sent = time.monotonic()
        try:
            rev = await self._write(value, held.revision, timeout=max(0.05, deadline - sent))
        except CasFailed:
            await self.give_up("lost", "lease revision moved: another holder")
            await self.observe_quietly()
            return True
        except Unavailable as e:
            log.warning("renewal not acknowledged: %s", e)
            return False
        self.held = lease.renewed(held, rev, sent)
        self.observed = Observed(self.instance, rev)
        await self._announce(self.held)
        return True

    async def release(self) -> None:
        """Graceful step-down: CAS-delete our lease so a contender takes over at once."""
        if self.held is None:
            return
        held = self.held
        await self.give_up("released", "shutdown")
        try:
            await self.bus.cas_delete(names.ELECTION_BUCKET, self.key, held.revision)
        except BusError as e:
            log.warning("release failed, lease will expire: %s", e)

    async def give_up(self, kind: LeaderEventKind, reason: str) -> None:
        held, self.held = self.held, None
        if held is None:
            return
        log.warning("leadership %s: %s", kind, reason, extra={"term": held.term})
        await self._event(kind, reason, held.term)

    async def _write(self, value: Lease, expect_last: int, timeout: float) -> int:
        return await self.bus.write(
            names.ELECTION_BUCKET,
            self.key,
            encode(value),
            ttl_s=self.params.ttl_s,
            expect_last=expect_last,
            timeout=timeout,
        )

    async def _announce(self, held: Held) -> None:
        if not self.announce:
            return
        # The audit trail a checker uses to prove terms never overlap.
        until = time.time() + (held.valid_until(self.params) - time.monotonic())
        msg = LeaderValidity(self.node_id, self.instance, held.term, self.acquired_wall, until)
        await _quietly(self.bus.publish(names.leader_validity_subject(), encode(msg)))

    async def _event(self, kind: LeaderEventKind, reason: str, term: int) -> None:
        if not self.announce:
            return
        event = LeaderEvent(kind, self.node_id, self.instance, term, time.time(), reason)
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


async def _quietly(op: object) -> None:
    try:
        await op  # type: ignore[misc]
    except BusError as e:
        log.warning("not published: %s", e)


async def contend(me: Contender, changes: KeyChanges, stop: asyncio.Event) -> None:
    """The lease loop: decide, act, and wait, until `stop`."""
    await me.observe_quietly()
    while not stop.is_set():
        decision = lease.decide(me.observed, me.held, time.monotonic(), me.params)
        done = True
        match decision:
            case lease.Wait(until):
                await changes.wait(stop, until)
                if me.held is None:
                    await me.observe_quietly()
            case lease.Acquire(expect_last):
                done = await me.acquire(expect_last)
            case lease.Renew(_, deadline) if me.held is not None:
                done = await me.renew(me.held, deadline)
            case lease.Fence(reason):
                await me.give_up("fenced", reason)
        if not done:
            await wait_or_stop(stop, RETRY_S)


async def hold(me: Contender, changes: KeyChanges, stop: asyncio.Event) -> None:
    """Contend for `me`'s lease until `stop`, following its key; release it on the way out."""
    try:
        async with asyncio.TaskGroup() as tg:
            follower = tg.create_task(changes.follow(me.bus), name="lease-watch")
            try:
                await contend(me, changes, stop)
            finally:
                await me.release()  # first: a contender should not wait on our housekeeping
                await changes.close()
                await asyncio.wait({follower}, timeout=2.0)
                follower.cancel()  # no-op when the watch ended by itself, as it should
    finally:
        await me.release()
