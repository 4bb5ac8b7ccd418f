"""Self-play throughput against the same network's pure batched-inference rate, on one thread.

    .venv/bin/python bench/selfplay.py --game connect4 --json [--games G] [--sims N] [--seconds S]
    .venv/bin/python bench/selfplay.py --game tictacmo --json    # any installed game, 2-4 players

The inference bound is measured in short bursts interleaved with self-play (between move
steps, excluded from self-play time), so both see the same background load on a shared
machine. `nn_bound_sims_per_s` is the bare evaluator's positions/s at batch G (the batch
self-play sends), `ratio` = sims_per_s / nn_bound_sims_per_s, and `nn_busy` = network rows
per second / bound: the fraction of time the network would be busy (below `ratio` because
cache hits and terminal leaves need no network call).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.learn.calibrate import sample_positions
from shared.learn.games import get_game
from shared.learn.games.base import BoolArray, FloatArray, Game
from shared.learn.inference import Evaluator, NetEvaluator
from shared.learn.net import NetConfig
from shared.learn.search import SearchStats
from shared.learn.selfplay import SelfPlayConfig, self_play
from shared.learn.training import new_net


def sample_batch(game: Game[Any], batch: int) -> tuple[FloatArray, BoolArray]:
    """Encodings and masks of `batch` random early positions."""
    return sample_positions(game, batch, np.random.default_rng(0))


@dataclass
class Meter:
    """Self-play counters, plus inference bursts run between move steps (time excluded)."""

    evaluator: Evaluator
    batch: tuple[FloatArray, BoolArray]
    burst_every: float
    burst_seconds: float
    stats: list[SearchStats] = field(default_factory=list)
    nn_rows: int = 0
    nn_time: float = 0.0
    excluded: float = 0.0
    last_burst: float = field(default_factory=time.perf_counter)

    def on_search(self, stats: SearchStats) -> None:
        self.stats.append(stats)
        if time.perf_counter() - self.last_burst >= self.burst_every:
            self.burst()

    def burst(self) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < self.burst_seconds:
            self.evaluator(*self.batch)
            self.nn_rows += len(self.batch[0])
        self.last_burst = time.perf_counter()
        self.nn_time += self.last_burst - start
        self.excluded += self.last_burst - start


def measure(
    game: Game[Any], meter: Meter, config: SelfPlayConfig, seconds: float
) -> dict[str, Any]:
    """Self-play for about `seconds` of its own time, with interleaved inference bursts."""
    meter.evaluator(*meter.batch)  # warm-up
    meter.burst()
    start = time.perf_counter()
    games = 0
    for _ in self_play(
        game,
        meter.evaluator,
        np.random.default_rng(1),
        config,
        on_search=meter.on_search,
        stop=lambda: time.perf_counter() - start - meter.excluded >= seconds,
    ):
        games += 1
    meter.burst()
    elapsed = time.perf_counter() - start - meter.excluded
    sims = sum(s.simulations for s in meter.stats)
    nn_bound = meter.nn_rows / meter.nn_time
    return {
        "sims_per_s": round(sims / elapsed, 1),
        "games_per_s": round(games / elapsed, 3),
        "nn_bound_sims_per_s": round(nn_bound, 1),
        "ratio": round(sims / elapsed / nn_bound, 3),
        "nn_busy": round(sum(s.nn_evals for s in meter.stats) / elapsed / nn_bound, 3),
        "cache_hit_rate": round(sum(s.cache_hits for s in meter.stats) / max(sims, 1), 3),
        "terminal_rate": round(sum(s.terminal_visits for s in meter.stats) / max(sims, 1), 3),
        "games_finished": games,
        "selfplay_seconds": round(elapsed, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    game = get_game(args.game)
    torch.manual_seed(0)
    net = new_net(game, NetConfig())  # a value per player for games of 3-4 players
    evaluator = NetEvaluator(net, threads=1)
    config = SelfPlayConfig(
        concurrent_games=args.games, num_simulations=args.sims, pipeline=args.pipeline
    )
    meter = Meter(evaluator, sample_batch(game, args.games), 2.0, 0.4)
    main = measure(game, meter, config, args.seconds)
    single = Meter(evaluator, sample_batch(game, 1), 1.0, 0.2)
    g1 = SelfPlayConfig(concurrent_games=1, num_simulations=args.sims, pipeline=False)
    one = measure(game, single, g1, args.g1_seconds)
    return {
        "game": game.name,
        "concurrent_games": args.games,
        "sims_per_move": args.sims,
        "pipeline": config.pipeline,
        "torch_threads": torch.get_num_threads(),
        **main,
        "g1_sims_per_s": one["sims_per_s"],
        "g1_nn_bound_sims_per_s": one["nn_bound_sims_per_s"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--game", default="connect4")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--games", type=int, default=64, help="concurrent games G")
    parser.add_argument("--sims", type=int, default=64, help="simulations per move")
    parser.add_argument("--seconds", type=float, default=30.0, help="self-play time at G")
    parser.add_argument("--g1-seconds", type=float, default=8.0, help="self-play time at G=1")
    parser.add_argument("--pipeline", action="store_true", help="overlap halves on two threads")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
