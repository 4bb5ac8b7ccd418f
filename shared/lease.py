"""The leader-lease decision: a pure function of what the KV shows, what we hold, and the clock.

Safety argument: a holder stops acting as leader at `confirmed_at + ttl - margin`, where
`confirmed_at` is the send time of its last acknowledged write. The server expires the key no
earlier than `ttl` after it received that write, and a contender can acquire only after expiry,
so the old holder's validity always ends before the next term begins.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec


class LeaseParams(msgspec.Struct, frozen=True):
    """Timing of the lease; the server keeps TTLs in whole seconds."""

    ttl_s: int = 3
    renew_every_s: float = 1.0
    margin_s: float = 0.5
    recheck_s: float = 1.0

    def __post_init__(self) -> None:
        if self.ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1 whole second, got {self.ttl_s}")
        if not 0 < self.margin_s < self.ttl_s:
            raise ValueError(f"margin_s must be between 0 and ttl_s, got {self.margin_s}")
        if not 0 < self.renew_every_s < self.ttl_s - self.margin_s:
            raise ValueError(
                f"renew_every_s must be below ttl_s - margin_s ({self.ttl_s - self.margin_s}),"
                f" got {self.renew_every_s}"
            )


@dataclass(frozen=True)
class Observed:
    """The lease key as last read: `holder` is None when the key is empty, deleted or expired."""

    holder: str | None
    revision: int


@dataclass(frozen=True)
class Held:
    """Our lease: `term` is the acquiring revision; `confirmed_at` the send time of our last ack."""

    term: int
    revision: int
    confirmed_at: float

    def valid_until(self, params: LeaseParams) -> float:
        return self.confirmed_at + params.ttl_s - params.margin_s


@dataclass(frozen=True)
class Acquire:
    expect_last: int


@dataclass(frozen=True)
class Renew:
    expect_last: int
    deadline: float


@dataclass(frozen=True)
class Fence:
    reason: str


@dataclass(frozen=True)
class Wait:
    until: float


Decision = Acquire | Renew | Fence | Wait


def decide(observed: Observed, held: Held | None, now: float, params: LeaseParams) -> Decision:
    """What to do next, given the last observation, our lease (if any) and the monotonic clock."""
    if held is not None:
        return _as_holder(held, now, params)
    if observed.holder is None:
        return Acquire(observed.revision)
    return Wait(now + params.recheck_s)


def _as_holder(held: Held, now: float, params: LeaseParams) -> Decision:
    deadline = held.valid_until(params)
    if now >= deadline:
        return Fence(f"no renewal acknowledged for {now - held.confirmed_at:.2f}s")
    due = held.confirmed_at + params.renew_every_s
    if now >= due:
        return Renew(held.revision, deadline)
    return Wait(due)


def acquired(revision: int, sent_at: float) -> Held:
    return Held(term=revision, revision=revision, confirmed_at=sent_at)


def renewed(held: Held, revision: int, sent_at: float) -> Held:
    return Held(term=held.term, revision=revision, confirmed_at=sent_at)
