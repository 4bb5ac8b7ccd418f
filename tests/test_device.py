"""Devices: the choice at start (the best one, or the one asked for, named when missing), and
every device-dependent path run on the CPU, reduced precision included."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from shared.learn.device import (
    CPU,
    Compute,
    DeviceUnavailable,
    check_names,
    choose_compute,
)
from shared.learn.games import get_game
from shared.learn.inference import NetEvaluator, uniform_evaluator
from shared.learn.net import checkpoint_bytes, load_checkpoint, weights_sha256
from shared.learn.netconfig import NetConfig, TrainSettings
from shared.learn.replay import ReplayWindow, positions_of
from shared.learn.selfplay import SelfPlayConfig, self_play
from shared.learn.training import new_net, train
from shared.runtime.counters import Counters
from shared.work.compute import BadTier, start_compute, tier_of

GAME = get_game("tictactoe")
SMALL = NetConfig(blocks=1, channels=8, value_hidden=8)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this node has CUDA")


def test_auto_picks_the_best_device_this_node_has() -> None:
    compute = choose_compute()
    if torch.cuda.is_available():
        assert compute.kind == "cuda" and compute.precision in ("bf16", "fp16")
    elif torch.backends.mps.is_available():
        assert compute == Compute("mps", "fp32")
    else:
        assert compute == CPU


def test_cpu_asked_for_is_cpu_at_full_precision_unless_told() -> None:
    assert choose_compute("cpu") == CPU
    assert choose_compute("cpu", "bf16") == Compute("cpu", "bf16")


@NO_CUDA
def test_a_missing_gpu_is_named_not_a_torch_error() -> None:
    with pytest.raises(DeviceUnavailable, match=r"--device 'cuda:1': this node has 0 CUDA"):
        choose_compute("cuda:1")


@pytest.mark.parametrize(
    ("device", "precision", "named"),
    [("tpu", "auto", "--device"), ("cuda:x", "auto", "--device"), ("cpu", "fp8", "--precision")],
)
def test_names_no_node_could_run_are_refused_at_the_edge(
    device: str, precision: str, named: str
) -> None:
    with pytest.raises(DeviceUnavailable, match=named):
        check_names(device, precision)
    with pytest.raises(DeviceUnavailable, match=named):
        choose_compute(device, precision)


def test_reduced_precision_inference_agrees_with_full_precision() -> None:
    torch.manual_seed(0)
    net = new_net(GAME, SMALL)
    states = [GAME.initial(), GAME.parse("15"), GAME.parse("1527")]
    encodings = np.stack([GAME.encode(s) for s in states])
    masks = np.stack([np.asarray(GAME.legal_mask(s), dtype=np.bool_) for s in states])
    full_p, full_v = NetEvaluator(net, compute=CPU)(encodings, masks)
    half_p, half_v = NetEvaluator(net, compute=Compute("cpu", "bf16"))(encodings, masks)
    assert half_p.dtype == np.float32 and half_v.dtype == np.float32
    assert np.allclose(half_p, full_p, atol=0.02) and np.allclose(half_v, full_v, atol=0.02)
    assert np.array_equal(half_p > 0, masks)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_at_each_precision_learns_and_saves_a_device_independent_checkpoint(
    precision: str,
) -> None:
    window = ReplayWindow(100, max_reuse=100)
    rng = np.random.default_rng(0)
    config = SelfPlayConfig(concurrent_games=8, num_simulations=4)
    for record in self_play(GAME, uniform_evaluator, rng, config, num_games=16):
        window.add(positions_of(GAME, record))
    torch.manual_seed(0)
    net = new_net(GAME, SMALL)
    compute = choose_compute("cpu", precision)
    settings = TrainSettings(batch_size=16, learning_rate=0.01)
    first = train(net, GAME, window, 2, settings, rng, compute=compute)
    later = train(net, GAME, window, 30, settings, rng, compute=compute)
    assert later.steps == 30 and later.policy_loss < first.policy_loss
    loaded = load_checkpoint(checkpoint_bytes(net, "tictactoe", 1), "tictactoe")
    assert loaded.sha256 == weights_sha256(net)
    assert all(t.device.type == "cpu" for t in loaded.net.state_dict().values())


async def test_a_worker_without_its_device_takes_no_jobs_and_says_why() -> None:
    counters, stop = Counters(), asyncio.Event()
    with ThreadPoolExecutor(1) as pool:
        waiting = asyncio.create_task(start_compute(pool, "cuda:7", "auto", counters, stop))
        while not counters.doing():
            await asyncio.sleep(0.01)
        assert not waiting.done()  # no crash loop: it waits to be stopped
        stop.set()
        assert await waiting is None
    assert "no jobs: --device 'cuda:7'" in counters.doing()
    said = counters.compute()
    assert said is not None and said.self_test.startswith("--device 'cuda:7'")


async def test_a_worker_with_its_device_gets_it() -> None:
    with ThreadPoolExecutor(1) as pool:
        counters = Counters()
        compute = await start_compute(pool, "cpu", "auto", counters, asyncio.Event())
    assert compute == CPU
    said = counters.compute()
    assert said is not None
    assert (said.device, said.tier, said.self_test, said.precision) == (
        "cpu",
        "cpu",
        "passed",
        "fp32",
    )
    assert said.name and said.device_memory_total == 0


def test_the_tier_is_the_devices_unless_declared() -> None:
    assert tier_of(CPU) == "cpu"
    assert tier_of(Compute("cuda:0", "bf16")) == "gpu"
    assert tier_of(Compute("mps")) == "gpu"
    assert tier_of(CPU, "gpu") == "gpu"  # a declared capability (fake fleets, tests)
    with pytest.raises(BadTier, match="--tier 'tpu'"):
        tier_of(CPU, "tpu")
