"""The device self-test: the known outputs and a win in one, at each precision on the CPU; a
corrupted weight is caught, and a self-play worker whose device fails takes no job and says why."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from schemas import names
from schemas.jobs import SelfplayJob
from services import selfplay
from shared.bus.memory import MemoryServer
from shared.learn import selftest
from shared.learn.device import Compute, SelfTestFailed
from shared.learn.net import PolicyValueNet
from shared.loop.observe import count
from shared.runtime.counters import Counters
from shared.work.jobs import JobSettings, ensure_consumer, submit
from tests.conftest import eventually


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_cpu_passes_at_every_precision(precision: str) -> None:
    selftest.self_test(Compute("cpu", precision))  # type: ignore[arg-type]


FIXED_NET = selftest.fixed_net


def corrupted() -> PolicyValueNet:
    """The fixed network with one weight wrong, as a device that garbles its copy would have."""
    net = FIXED_NET()
    with torch.no_grad():
        net.policy_fc.bias[2] += 2.0
    return net


def test_a_corrupted_weight_fails_it_saying_by_how_much(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selftest, "fixed_net", corrupted)
    with pytest.raises(SelfTestFailed, match=r"self-test failed on cpu \(fp32\): .* off by"):
        selftest.self_test(Compute("cpu", "fp32"))


async def test_a_worker_failing_it_takes_no_job_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(selftest, "fixed_net", corrupted)
    bus = MemoryServer().connect("test")
    await bus.provision()
    await ensure_consumer(bus, "selfplay", JobSettings())
    job = SelfplayJob(
        job_id="sp-1", game="tictactoe", model_sha256="", generation=0, games=2, sims=4, term=1
    )
    await submit(bus, "selfplay", job)
    cfg = selfplay.SelfplayWorkerConfig("w1", str(tmp_path), device="cpu", concurrent_games=2)
    counters, stop = Counters(), asyncio.Event()
    worker = asyncio.create_task(selfplay.run(bus, cfg, stop, counters))
    said = await eventually(lambda: "self-test failed" in counters.doing(), what="the reason")
    assert said and counters.doing().startswith("no jobs: self-test failed on cpu")
    report = counters.compute()  # what the pulses carry to status
    assert report is not None and report.self_test.startswith("self-test failed on cpu")
    await asyncio.sleep(0.5)  # time it would have taken the job, were it taking jobs
    assert await count(bus, names.JOBS_STREAM, names.job_game_filter("selfplay", "tictactoe")) == 1
    assert await count(bus, names.GAMES_STREAM, names.games_subject("tictactoe")) == 0
    stop.set()
    await asyncio.wait_for(worker, 10)
