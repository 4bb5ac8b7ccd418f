"""The batch a device wants: the largest before its positions/s falls (a fake device with a
known cost curve, and one with a busy neighbour), and a real calibration on the CPU."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from services import selfplay
from shared.bus.memory import MemoryServer
from shared.learn.calibrate import calibrate, chosen, sample_positions
from shared.learn.games import get_game
from shared.learn.games.base import BoolArray, FloatArray
from shared.learn.inference import NetEvaluator
from shared.learn.netconfig import NetConfig
from shared.learn.training import new_net

GAME = get_game("connect4")


class FakeDevice:
    """An evaluator that costs `overhead + per_row * batch` seconds (a clock it advances) up
    to `saturated_at` rows, and `slow_row` seconds a row beyond: a device that saturates."""

    def __init__(self, overhead: float, per_row: float, saturated_at: int, slow_row: float) -> None:
        self.now = 0.0
        self.overhead, self.per_row = overhead, per_row
        self.saturated_at, self.slow_row = saturated_at, slow_row

    def clock(self) -> float:
        return self.now

    def __call__(self, encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        batch = len(masks)
        if batch <= self.saturated_at:
            self.now += self.overhead + self.per_row * batch
        else:
            self.now += self.slow_row * batch
        return np.zeros(masks.shape, np.float32), np.zeros(batch, np.float32)


def test_the_batch_chosen_is_the_largest_before_the_rate_falls() -> None:
    device = FakeDevice(overhead=1e-3, per_row=1e-5, saturated_at=64, slow_row=6e-5)
    positions = sample_positions(GAME, 512, np.random.default_rng(0))
    found = calibrate(device, positions, seconds_per_size=0.05, clock=device.clock)
    assert found.best_batch == 64
    assert sorted(found.rates) == [1, 2, 4, 8, 16, 32, 64, 128, 256]  # stopped after two falls
    assert found.best_rate == max(found.rates.values())


class BusyNeighbour(FakeDevice):
    """A device whose clock jumps by `stall` seconds during the `stalled`th call: a neighbour
    took the CPU while one size was being timed."""

    def __init__(self, stalled: int, stall: float) -> None:
        super().__init__(overhead=1e-3, per_row=1e-5, saturated_at=10**6, slow_row=1.0)
        self.calls, self.stalled, self.stall = 0, stalled, stall

    def __call__(self, encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        self.calls += 1
        if self.calls == self.stalled:
            self.now += self.stall
        return super().__call__(encodings, masks)


@given(st.integers(1, 400), st.floats(0.01, 1.0))
def test_a_stall_while_timing_one_size_does_not_shrink_the_batch(
    stalled: int, stall: float
) -> None:
    # At one game at a time a worker pays its search overhead per game: a stall must not pin
    # the batch low (seen: "1 games at once (positions/s by batch {1: 3433, 2: 3513})").
    device = BusyNeighbour(stalled, stall)
    positions = sample_positions(GAME, 64, np.random.default_rng(0))
    found = calibrate(device, positions, seconds_per_size=0.02, clock=device.clock)
    assert found.best_batch == 64


def test_the_largest_batch_within_a_quarter_of_the_best_rate_is_chosen() -> None:
    assert chosen({1: 100.0, 2: 180.0, 4: 300.0, 8: 280.0, 16: 200.0}) == 8
    assert chosen({1: 3433.0, 2: 3513.0, 4: 3400.0}) == 4
    # seen: 32 timed while the node started everything else
    assert chosen({1: 1918.0, 2: 2319.0, 4: 3919.0, 8: 5394.0, 16: 6707.0, 32: 4739.0}) == 16
    assert chosen({1: 1918.0, 2: 2319.0, 4: 3919.0, 8: 5394.0, 16: 6707.0, 32: 5100.0}) == 32


@given(st.integers(1, 9).map(lambda k: 2**k), st.integers(0, 10))
def test_the_batch_never_exceeds_the_limit_or_the_positions(limit: int, extra: int) -> None:
    device = FakeDevice(overhead=1e-3, per_row=1e-6, saturated_at=10**6, slow_row=1.0)
    positions = sample_positions(GAME, limit + extra, np.random.default_rng(0))
    found = calibrate(device, positions, max_batch=limit, seconds_per_size=0.01, clock=device.clock)
    assert found.best_batch == limit  # an unsaturated device: the largest batch allowed


def test_a_real_network_on_the_cpu_calibrates() -> None:
    torch.manual_seed(0)
    evaluator = NetEvaluator(new_net(GAME, NetConfig(blocks=1, channels=8, value_hidden=8)))
    positions = sample_positions(GAME, 64, np.random.default_rng(0))
    found = calibrate(evaluator, positions, seconds_per_size=0.02)
    assert 1 <= found.best_batch <= 64 and all(rate > 0 for rate in found.rates.values())


async def test_a_self_play_worker_plays_as_many_games_at_once_as_its_device_wants(
    tmp_path: Path,
) -> None:
    """The batch is calibrated once per game and net size (the cap at most), not a constant."""
    bus = MemoryServer().connect("test")
    cfg = selfplay.SelfplayWorkerConfig("w1", str(tmp_path), concurrent_games=16, calibrate=True)
    worker = selfplay.Worker(bus, cfg, asyncio.Event())
    evaluator = NetEvaluator(new_net(GAME, NetConfig(blocks=1, channels=8, value_hidden=8)))
    try:
        batch = await worker.batch_for(GAME, evaluator)
        assert batch in (1, 2, 4, 8, 16) and worker.batches == {("connect4", "1x8"): batch}
        assert await worker.batch_for(GAME, evaluator) == batch  # measured once
        fixed = selfplay.Worker(bus, msgspec.structs.replace(cfg, calibrate=False), asyncio.Event())
        assert await fixed.batch_for(GAME, evaluator) == 16
        fixed.pool.shutdown()
    finally:
        worker.pool.shutdown()
