"""Each device this machine has: batched-inference throughput, the batch it wants, and what
self-play reaches at that batch.

    .venv/bin/python bench/devices.py --json [--game connect4] [--seconds 5] [--max-batch 1024]

Prints {"devices": [...]}, one object per device present (the CPU always; each CUDA GPU; Apple
MPS): `positions_per_s_batch1`, `best_batch` (the largest batch whose positions/s still rises,
`shared/learn/calibrate.py`), `positions_per_s_best_batch`, `selfplay_sims_per_s` (self-play
with that many concurrent games), `ratio` (self-play sims/s over the batched bound: how much
of the device the search keeps busy) and `peak_memory_mb` (device memory on a GPU, the
process's peak RSS on the CPU). Each device runs at its `--precision auto` (bf16/fp16 on CUDA).
On a GPU node: the same command, nothing else to install beyond a CUDA build of torch.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.learn.calibrate import calibrate, sample_positions
from shared.learn.device import Compute, choose_compute
from shared.learn.games import get_game
from shared.learn.inference import NetEvaluator
from shared.learn.net import NetConfig, PolicyValueNet
from shared.learn.selfplay import SelfPlayConfig, self_play


def present() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def selfplay_sims_per_s(game: Any, evaluator: NetEvaluator, batch: int, seconds: float) -> float:
    config = SelfPlayConfig(concurrent_games=batch, num_simulations=64)
    sims, start = 0, time.perf_counter()

    def count(stats: Any) -> None:
        nonlocal sims
        sims += stats.simulations

    def done() -> bool:
        return time.perf_counter() - start >= seconds

    rng = np.random.default_rng(0)
    for _ in self_play(game, evaluator, rng, config, on_search=count, stop=done):
        pass
    return sims / (time.perf_counter() - start)


def peak_memory_mb(compute: Compute) -> float:
    if compute.kind == "cuda":
        return torch.cuda.max_memory_allocated(compute.device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def measure(device: str, game_name: str, seconds: float, max_batch: int) -> dict[str, Any]:
    compute = choose_compute(device)
    game = get_game(game_name)
    torch.manual_seed(0)
    net = PolicyValueNet(NetConfig(), game.encoding_shape, game.num_actions)
    evaluator = NetEvaluator(net, threads=1, compute=compute)
    positions = sample_positions(game, max_batch, np.random.default_rng(0))
    found = calibrate(evaluator, positions, max_batch=max_batch, seconds_per_size=seconds / 10)
    sims = selfplay_sims_per_s(game, evaluator, found.best_batch, seconds)
    return {
        "device": device,
        "name": compute.describe(),
        "positions_per_s_batch1": round(found.rates[1], 1),
        "best_batch": found.best_batch,
        "positions_per_s_best_batch": round(found.best_rate, 1),
        "selfplay_sims_per_s": round(sims, 1),
        "ratio": round(sims / found.best_rate, 3),
        "peak_memory_mb": round(peak_memory_mb(compute), 1),
        "rates": {str(b): round(r, 1) for b, r in found.rates.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="connect4")
    parser.add_argument("--seconds", type=float, default=5.0, help="self-play time per device")
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--json", action="store_true", help="one JSON object (the default)")
    args = parser.parse_args()
    found = [measure(d, args.game, args.seconds, args.max_batch) for d in present()]
    print(json.dumps({"game": args.game, "devices": found}))


if __name__ == "__main__":
    main()
