"""Self-play throughput against the same network's pure batched-inference rate, on one thread.

    .venv/bin/python bench/selfplay.py --game connect4 --json [--games G] [--sims N] [--seconds S]

`ratio` = sims_per_s / nn_bound_sims_per_s, where the bound is the best positions/s of the bare
evaluator at batch G and at batch G/2 (the pipelined halves' batch), measured in this run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.evaluator import Evaluator, NetEvaluator
from shared.games import get_game
from shared.games.base import Game
from shared.net import NetConfig, PolicyValueNet
from shared.search import SearchStats
from shared.selfplay import SelfPlayConfig, self_play


def inference_rate(game: Game[Any], evaluator: Evaluator, batch: int, seconds: float) -> float:
    """Positions/s of `evaluator` alone on batches of real positions."""
    rng = np.random.default_rng(0)
    states = []
    for _ in range(batch):
        state = game.initial()
        for _ in range(int(rng.integers(0, 12))):
            legal = np.flatnonzero(game.legal_mask(state))
            if game.terminal_value(state) is not None or legal.size == 0:
                break
            state = game.apply(state, int(rng.choice(legal)))
        states.append(state)
    x = np.stack([game.encode(s) for s in states])
    masks = np.stack([game.legal_mask(s) for s in states])
    for _ in range(3):
        evaluator(x, masks)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        evaluator(x, masks)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def selfplay_rate(
    game: Game[Any], evaluator: Evaluator, config: SelfPlayConfig, seconds: float
) -> dict[str, float]:
    """Run self-play for about `seconds`; count simulations, network rows and finished games."""
    stats: list[SearchStats] = []
    start = time.perf_counter()
    deadline = start + seconds
    games = 0
    for _ in self_play(
        game,
        evaluator,
        np.random.default_rng(1),
        config,
        on_search=stats.append,
        stop=lambda: time.perf_counter() >= deadline,
    ):
        games += 1
    elapsed = time.perf_counter() - start
    sims = sum(s.simulations for s in stats)
    return {
        "sims_per_s": sims / elapsed,
        "games_per_s": games / elapsed,
        "nn_evals_per_s": sum(s.nn_evals for s in stats) / elapsed,
        "cache_hit_rate": sum(s.cache_hits for s in stats) / max(sims, 1),
        "terminal_rate": sum(s.terminal_visits for s in stats) / max(sims, 1),
        "games_finished": games,
        "seconds": elapsed,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    game = get_game(args.game)
    torch.manual_seed(0)
    net = PolicyValueNet(NetConfig(), game.encoding_shape, game.num_actions)
    evaluator = NetEvaluator(net, threads=1)
    config = SelfPlayConfig(
        concurrent_games=args.games, num_simulations=args.sims, pipeline=not args.no_pipeline
    )
    measured = selfplay_rate(game, evaluator, config, args.seconds)
    bounds = {
        b: inference_rate(game, evaluator, b, args.nn_seconds)
        for b in {args.games, max(1, args.games // 2)}
    }
    bound = max(bounds.values())
    g1 = SelfPlayConfig(concurrent_games=1, num_simulations=args.sims, pipeline=False)
    single = selfplay_rate(game, evaluator, g1, args.g1_seconds)
    return {
        "game": game.name,
        "concurrent_games": args.games,
        "sims_per_move": args.sims,
        "pipeline": config.pipeline,
        "torch_threads": torch.get_num_threads(),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in measured.items()},
        "nn_bound_sims_per_s": round(bound, 1),
        "nn_bound_by_batch": {str(b): round(r, 1) for b, r in sorted(bounds.items())},
        "ratio": round(measured["sims_per_s"] / bound, 3),
        "g1_sims_per_s": round(single["sims_per_s"], 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--game", default="connect4")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--games", type=int, default=64, help="concurrent games G")
    parser.add_argument("--sims", type=int, default=64, help="simulations per move")
    parser.add_argument("--seconds", type=float, default=30.0, help="self-play measurement time")
    parser.add_argument("--nn-seconds", type=float, default=5.0)
    parser.add_argument("--g1-seconds", type=float, default=8.0)
    parser.add_argument("--no-pipeline", action="store_true")
    result = run(parser.parse_args(argv))
    if parser.parse_args(argv).json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
