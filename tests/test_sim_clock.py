"""The virtual-time event loop: timers jump, executor work runs inline, a stuck world says so."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from shared.sim.clock import EPOCH, Deadlock, VirtualClock, run_virtual


def test_an_hour_of_timers_passes_at_once_and_in_order() -> None:
    order: list[float] = []

    async def sleeper(seconds: float) -> None:
        await asyncio.sleep(seconds)
        order.append(asyncio.get_running_loop().time())

    async def main() -> float:
        await asyncio.gather(*(sleeper(s) for s in (3600.0, 1.5, 60.0)))
        return VirtualClock().monotonic()

    started = time.perf_counter()
    assert run_virtual(main()) == 3600.0
    assert order == [1.5, 60.0, 3600.0]
    assert time.perf_counter() - started < 5.0


def test_timeouts_fire_on_virtual_time() -> None:
    async def main() -> float:
        clock = VirtualClock()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30.0):
                await asyncio.Event().wait()
        assert clock.time() == EPOCH + clock.monotonic()
        return clock.monotonic()

    assert run_virtual(main()) == 30.0


def test_executor_work_runs_inline_and_takes_no_virtual_time() -> None:
    async def main() -> tuple[int, float, bool]:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, sum, [1, 2, 3])
        on_loop_thread = (
            await asyncio.to_thread(threading.current_thread) is threading.current_thread()
        )
        return result, loop.time(), on_loop_thread

    assert run_virtual(main()) == (6, 0.0, True)


def test_executor_errors_reach_the_awaiting_task() -> None:
    def fail() -> None:
        raise ValueError("inside")

    async def main() -> None:
        await asyncio.get_running_loop().run_in_executor(None, fail)

    with pytest.raises(ValueError, match="inside"):
        run_virtual(main())


def test_a_world_where_everything_waits_forever_is_a_deadlock() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(Deadlock):
        run_virtual(main())
