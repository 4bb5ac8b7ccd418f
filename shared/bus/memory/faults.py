"""Deterministic failures for tests and simulations: the server has one `Faults` for every
client, and each client one of its own.

- `unavailable(on)` / `unavailable_until(t)`: every JetStream request (KV, streams, consumers,
  objects, provisioning) raises `Unavailable`, as during a stream leader election; core
  publish/subscribe still flows. `t` is on the server's clock (`clock.monotonic()`).
- `lose_acks(n, kind)`: the next `n` requests of `kind` are applied, but the caller gets
  `Unavailable`, as when the reply is lost after the commit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from shared.bus.ports import Clock

# Timers due within this much count as due: virtual time advances in float steps, and a timer
# a rounding error away could otherwise be waited for forever in steps too small to move it.
TIME_SLACK_S = 1e-6

# publish: any stored write (stream publish, KV write or delete, object chunk or meta);
# ack: a synchronous ack; delete: a stream message delete.
RequestKind = Literal["publish", "ack", "delete"]


class Faults:
    """Switchable failures, all judged on the injected clock."""

    def __init__(self, clock: Clock, on_change: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self._on_change = on_change
        self._down = False
        self._down_until = -math.inf
        self._lost: dict[str, int] = {}

    def unavailable(self, on: bool = True) -> None:
        """Fail every JetStream request until switched off."""
        self._down = on
        if not on:
            self._down_until = -math.inf
        self._on_change()

    def unavailable_until(self, t: float) -> None:
        """Fail every JetStream request until the clock's monotonic time reaches `t`."""
        self._down_until = t
        self._on_change()

    def lose_acks(self, n: int, kind: RequestKind = "publish") -> None:
        """Apply the next `n` requests of `kind` but answer them with `Unavailable`."""
        self._lost[kind] = self._lost.get(kind, 0) + n

    @property
    def is_down(self) -> bool:
        if self._down:
            return True
        return self._down_until > -math.inf and settled(self._clock) < self._down_until

    @property
    def back_at(self) -> float:
        """When a timed outage ends (-inf when none is timed)."""
        return self._down_until

    def take_lost(self, kind: RequestKind) -> bool:
        """Whether this request's reply is lost (counting it off)."""
        if self._lost.get(kind, 0) <= 0:
            return False
        self._lost[kind] -= 1
        return True


def settled(clock: Clock) -> float:
    """The clock's monotonic time for deciding what is due (`TIME_SLACK_S`)."""
    return clock.monotonic() + TIME_SLACK_S
