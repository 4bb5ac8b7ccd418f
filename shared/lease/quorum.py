"""The quorum lease: pure decisions over what the lease slots and the register show.

A lease is held on a majority of *slots*: single-replica KV buckets, one pinned to each hub
server, so losing one server (or one stream's leader election, which blocks its writes for
4-9 s) never takes a majority away from a healthy holder. The *register*, a key in the
replicated `election` bucket, names the holder and its term; only a majority holder writes it,
and a new term is its revision, so terms only grow.

Safety argument, per slot: a holder counts a slot until `confirmed_at + ttl - margin`, where
`confirmed_at` is the send time of its last acknowledged write. The server expires the key no
earlier than `ttl` after it received that write, and another instance can take the slot only
after expiry (a CAS on the key's then empty subject), so the old holder stops counting the slot
first. Two
majorities share a slot, so at most one instance holds a majority at any time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import msgspec

# The lease buckets' max age: a lease value written without a TTL (or with a long one) by a
# broken or hostile writer still goes within this, while a holder rewrites its keys every TTL.
LEASE_BUCKET_MAX_AGE_S = 120
MAX_LEASE_TTL_S = LEASE_BUCKET_MAX_AGE_S // 2


class LeaseParams(msgspec.Struct, frozen=True):
    """Timing of the lease; the server keeps TTLs in whole seconds."""

    ttl_s: int = 3
    renew_every_s: float = 1.0
    margin_s: float = 0.5
    recheck_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.ttl_s <= MAX_LEASE_TTL_S:
            raise ValueError(
                f"ttl_s must be 1 to {MAX_LEASE_TTL_S} whole seconds, got {self.ttl_s}"
            )
        if not 0 < self.margin_s < self.ttl_s:
            raise ValueError(f"margin_s must be between 0 and ttl_s, got {self.margin_s}")
        if not 0 < self.renew_every_s < self.ttl_s - self.margin_s:
            raise ValueError(
                f"renew_every_s must be below ttl_s - margin_s ({self.ttl_s - self.margin_s}),"
                f" got {self.renew_every_s}"
            )


@dataclass(frozen=True)
class Slot:
    """A lease key as we know it: `holder` (an instance id; None when empty, deleted or expired)
    at `revision`; `confirmed_at` is the send time of our last acknowledged write, when ours.
    `known` is False until the key has been read or written once."""

    holder: str | None = None
    revision: int = 0
    confirmed_at: float | None = None
    known: bool = False

    def ours(self, me: str) -> bool:
        return self.known and self.holder == me


def seen(slot: Slot, holder: str | None, revision: int) -> Slot:
    """`slot` after reading `holder` at `revision`: our confirmation survives only a read of
    the very write it confirms; an older revision than we know is a stale read, except an
    empty key (revision 0): it expired, and leaves no marker (taking it is a create, which
    fails if the read was wrong)."""
    if slot.known and 0 < revision < slot.revision:
        return slot
    same = slot.known and revision == slot.revision and holder == slot.holder
    return Slot(holder, revision, slot.confirmed_at if same else None, known=True)


def written(holder: str, revision: int, sent_at: float) -> Slot:
    return Slot(holder, revision, sent_at, known=True)


def releasing(slot: Slot) -> Slot:
    """`slot` once we decide to release it, before the delete is sent: it no longer counts
    toward our majority, or a term claimed while the delete is in flight would be promised on a
    slot another instance may already hold."""
    return Slot(slot.holder, slot.revision, None, slot.known)


def majority(slots: int) -> int:
    return slots // 2 + 1


def valid_until(slots: Sequence[Slot], me: str, params: LeaseParams) -> float:
    """When our majority of confirmed slots ends; -inf without one."""
    confirmed = sorted(
        (s.confirmed_at for s in slots if s.ours(me) and s.confirmed_at is not None),
        reverse=True,
    )
    need = majority(len(slots))
    if len(confirmed) < need:
        return -math.inf
    return confirmed[need - 1] + params.ttl_s - params.margin_s


class Stance(Enum):
    """What a contender does with slots: take free ones, keep its own, or give its own up."""

    TAKE = "take"
    KEEP = "keep"
    YIELD = "yield"


def stance(slots: Sequence[Slot], register: Slot, me: str, leading: bool) -> Stance:
    """`leading`: we hold a term or a majority. Take free slots when leading or campaigning;
    yield to a register holder, and to a smaller instance id holding any slot (so contenders
    splitting the slots cannot all wait)."""
    if leading:
        return Stance.TAKE
    if register.known and register.holder not in (None, me):
        return Stance.YIELD
    if any(s.holder is not None and s.holder < me for s in slots):
        return Stance.YIELD
    return Stance.TAKE if register.known else Stance.KEEP


@dataclass(frozen=True)
class Take:
    expect_last: int


@dataclass(frozen=True)
class Renew:
    expect_last: int
    deadline: float


@dataclass(frozen=True)
class Release:
    expect_last: int


@dataclass(frozen=True)
class Wait:
    until: float


SlotStep = Take | Renew | Release | Wait


def slot_step(slot: Slot, me: str, how: Stance, now: float, params: LeaseParams) -> SlotStep:
    """The next write to one slot, or how long to wait for a change."""
    if slot.ours(me):
        if how is Stance.YIELD:
            return Release(slot.revision)
        if slot.confirmed_at is None:  # ours by a write whose ack we missed
            return Renew(slot.revision, now + params.renew_every_s)
        due = slot.confirmed_at + params.renew_every_s
        if now >= due:
            ends = slot.confirmed_at + params.ttl_s - params.margin_s
            return Renew(slot.revision, max(ends, now + params.renew_every_s))
        return Wait(due)
    if slot.known and slot.holder is None and how is Stance.TAKE:
        return Take(slot.revision)
    return Wait(now + params.recheck_s)


@dataclass(frozen=True)
class Claim:
    """Write the register on `expect_last`; `new_term` when the write's revision is the term."""

    expect_last: int
    new_term: bool


@dataclass(frozen=True)
class Fence:
    reason: str


RegisterStep = Claim | Fence | Wait


def register_step(
    term: int | None, until: float, register: Slot, me: str, now: float, params: LeaseParams
) -> RegisterStep:
    """Given our term (if any), our majority's `until` and the register: fence, write, or wait.

    A majority holder claims an empty register (a new term, or its own term again after the
    register expired while its bucket was unavailable) and renews its own like a slot."""
    if term is not None and now >= until:
        return Fence("lost the majority of lease slots")
    if now >= until or not register.known:
        return Wait(now + params.recheck_s)
    if register.holder is None:
        return Claim(register.revision, new_term=term is None)
    if register.holder != me:
        if term is not None:
            return Fence("the lease register names another holder")
        return Wait(min(until, now + params.recheck_s))
    if term is None or register.confirmed_at is None:
        return Claim(register.revision, new_term=term is None)
    due = register.confirmed_at + params.renew_every_s
    if now >= due:
        return Claim(register.revision, new_term=False)
    return Wait(min(due, until))
