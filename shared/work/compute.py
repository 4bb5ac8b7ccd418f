"""A worker's device, chosen once at its start, and what its pulses say about it."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor

import msgspec

from schemas.control import SELF_TEST_PASSED, DeviceReport
from schemas.names import TIERS
from shared.learn.device import Compute, DeviceUnavailable, SelfTestFailed, choose_compute
from shared.learn.netconfig import NetConfig, size_label
from shared.runtime.counters import Counters

log = logging.getLogger("conclave.compute")

PASSED = SELF_TEST_PASSED


class BadTier(ValueError):
    """A tier that is not one of schemas.names.TIERS."""


def check_tier(tier: str) -> str:
    if tier != "auto" and tier not in TIERS:
        raise BadTier(f"--tier {tier!r}: expected auto or one of {', '.join(TIERS)}")
    return tier


def tier_of(compute: Compute, asked: str = "auto") -> str:
    """The job tier a worker pulls first: `asked`, else "gpu" for any accelerator, else "cpu"."""
    if check_tier(asked) != "auto":
        return asked
    return "cpu" if compute.kind == "cpu" else "gpu"


def report(compute: Compute, tier: str, self_test: str = PASSED) -> DeviceReport:
    """What pulses carry about the device (torch calls: run it where networks run)."""
    used, total = compute.memory()
    return DeviceReport(
        device=compute.device,
        name=compute.name(),
        precision=compute.precision,
        tier=tier,
        self_test=self_test,
        device_memory_bytes=used,
        device_memory_total=total,
    )


async def start_compute(
    pool: Executor,
    device: str,
    precision: str,
    counters: Counters,
    stop: asyncio.Event,
    tier: str = "auto",
) -> Compute | None:
    """The device and precision the worker's networks run on, chosen and self-tested in `pool`
    (torch and CUDA start slowly: not on the loop that pulses). None when this node cannot run
    what was asked, or its device fails the self-test (`shared.learn.selftest`): the worker then
    takes no jobs until stopped, and says why in status (not a crash loop)."""
    loop = asyncio.get_running_loop()
    try:
        compute, chosen = await loop.run_in_executor(pool, _ready, device, precision, tier)
    except DeviceUnavailable as e:
        chosen = DeviceReport(device=device, tier=_asked(tier), self_test=str(e))
    counters.set_compute(chosen)
    if chosen.self_test != PASSED:
        log.error("taking no jobs: %s", chosen.self_test)
        counters.set_doing(f"no jobs: {chosen.self_test}")
        await stop.wait()
        return None
    log.info("networks run on %s, tier %s", compute.describe(), chosen.tier)
    return compute


def _ready(device: str, precision: str, tier: str) -> tuple[Compute, DeviceReport]:
    from shared.learn.selftest import self_test  # torch loads here, in the worker thread

    compute = choose_compute(device, precision)
    try:
        self_test(compute)
    except SelfTestFailed as e:
        return compute, report(compute, tier_of(compute, tier), str(e))
    return compute, report(compute, tier_of(compute, tier))


def _asked(tier: str) -> str:
    return "cpu" if tier == "auto" else tier


def net_config_of(evaluator: object) -> NetConfig | None:
    """The network size of a NetEvaluator; None for a net-less one (found by attribute, so the
    launcher that imports worker configs does not load torch)."""
    config = getattr(getattr(evaluator, "net", None), "config", None)
    return config if isinstance(config, NetConfig) else None


def record_rate(
    counters: Counters, compute: Compute, net: NetConfig | None, positions: int, seconds: float
) -> None:
    """Put a job's positions/s for its network's size, and the device memory now, into the
    worker's device report (what placement weighs workers by); nothing for a net-less job."""
    report = counters.compute()
    if net is None or report is None or seconds <= 0 or not positions:
        return
    rates = {**report.positions_per_s, size_label(net): positions / seconds}
    used, _ = compute.memory()
    counters.set_compute(
        msgspec.structs.replace(report, positions_per_s=rates, device_memory_bytes=used)
    )
