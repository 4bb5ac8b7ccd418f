"""Virtual time for asyncio: an event loop whose clock jumps to the next timer when every task
is waiting, so a minute of timeouts, TTLs and ack-waits passes in milliseconds, in the same
order on every run.

The loop does no waiting of its own: when nothing is ready it moves its clock to the earliest
timer. Work handed to an executor would finish in real time while virtual time races ahead, so
this loop runs it inline instead (`run_in_executor`): CPU work takes no virtual time, and every
run of the same seed interleaves the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")

EPOCH = datetime(2026, 1, 1, tzinfo=UTC).timestamp()  # wall time at virtual time 0


class Deadlock(RuntimeError):
    """Every task waits and no timer is set: nothing can ever happen again."""


class _JumpSelector(selectors.DefaultSelector):
    """A selector that never blocks: instead of waiting `timeout`, it advances the loop's
    virtual clock by it (real I/O, such as the loop's self-pipe, is still polled)."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Deadlock("every task is waiting and no timer is set")
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, starting at 0."""

    def __init__(self) -> None:
        selector = _JumpSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move on by `seconds`, and at least onto the earliest timer when that is what the
        wait was for: a timer a rounding error away would otherwise never come due (seen: a
        lease holder spinning on a deadline 1e-16 s ahead)."""
        target = self._virtual_now + max(0.0, seconds)
        timers: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if timers and timers[0].when() - target < 1e-6:
            target = max(target, timers[0].when())
        self._virtual_now = target

    def call_at(  # type: ignore[override]
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        """A timer a hair ahead of now would fire early, within the clock's resolution, before
        time reaches it: code that waits "until t" would then find t not yet come and wait
        again, forever. Such a timer is set just past the resolution instead."""
        floor = self._virtual_now + 2 * self._clock_resolution  # type: ignore[attr-defined]
        if self._virtual_now < when < floor:
            when = floor
        return super().call_at(when, callback, *args, context=context)

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Run `func` at once, on this thread: a pool would let virtual time pass under it."""
        del executor
        future: asyncio.Future[T] = self.create_future()
        try:
            future.set_result(func(*args))
        except Exception as e:  # handed to whoever awaits it, as a pool would
            future.set_exception(e)
        return future


class VirtualClock:
    """The `Clock` of code running on a `VirtualLoop`: monotonic time is the loop's, wall time
    is `EPOCH` plus it."""

    def time(self) -> float:
        return EPOCH + asyncio.get_running_loop().time()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh `VirtualLoop`; whatever is left is cancelled, and
    the loop closed."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        _cancel_the_rest(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _cancel_the_rest(loop: VirtualLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        # A task that waits again in its clean-up (a release on a dead connection) is left
        # as it is: the world is over, and nothing it could do would be observed.
        with contextlib.suppress(Deadlock):
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def _virtual_clock_is_a_clock() -> None:
    from shared.bus.ports import Clock

    clock: Clock = VirtualClock()
    del clock
