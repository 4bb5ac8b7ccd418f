"""A worker's device, chosen once at its start."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor

from shared.learn.device import Compute, DeviceUnavailable, SelfTestFailed, choose_compute
from shared.runtime.counters import Counters

log = logging.getLogger("conclave.compute")


async def start_compute(
    pool: Executor, device: str, precision: str, counters: Counters, stop: asyncio.Event
) -> Compute | None:
    """The device and precision the worker's networks run on, chosen and self-tested in `pool`
    (torch and CUDA start slowly: not on the loop that pulses). None when this node cannot run
    what was asked, or its device fails the self-test (`shared.learn.selftest`): the worker then
    takes no jobs until stopped, and says why in status (not a crash loop)."""
    loop = asyncio.get_running_loop()
    try:
        compute = await loop.run_in_executor(pool, _ready, device, precision)
    except (DeviceUnavailable, SelfTestFailed) as e:
        log.error("taking no jobs: %s", e)
        counters.set_doing(f"no jobs: {e}")
        await stop.wait()
        return None
    log.info("networks run on %s", await loop.run_in_executor(pool, compute.describe))
    return compute


def _ready(device: str, precision: str) -> Compute:
    from shared.learn.selftest import self_test  # torch loads here, in the worker thread

    compute = choose_compute(device, precision)
    self_test(compute)
    return compute
