"""The memory guard's arithmetic: what a self-play job holds at its peak, how many games at once
fit a worker's budget, and when a running job should start fewer.

What dominates, measured on CPU (torch 1 thread) by `python -m shared.work.memory`, which plays
real games with a fresh network and prints the RSS peak above the set-up worker beside the
estimate (less the weights, already in that RSS):

- an idle worker: ~270 MB (interpreter 12, worker imports 52, torch and a net ~205): not in a
  job's estimate, it is in the worker's RSS (`in_use`) before the job starts;
- playing at all: 12-20 MB (torch's scratch and kernel caches for the batch sizes met, malloc
  arenas), whatever the concurrency;
- each game in flight: its evaluation cache, one entry per position it evaluated (up to one per
  simulation per ply), kept until the game ends. Per simulation of budget a game held ~4.7 KB
  at tic-tac-toe (9 cells) and ~9.5 KB at connect4 (42; 7.1 KB at 128 sims, which hit the cache
  more): 3.4 KB + 160 B a cell bounds both, times 1.25 for games that run longer (the network
  decides how long: another seed's net held +66 MB where this one held +48);
- the network: weights twice per loaded model (checkpoint and inference copy: 10x128 held 27 MB
  more than 4x64), and one batch's activations (G positions), a few MB.

    game      sims    G  net   measured MB   estimate MB
    connect4    64    8  4x64           21            27
    connect4    64   32  4x64           34            46
    connect4    64   64  4x64   48, 48, 66            72
    connect4    64  128  4x64       83, 94           124
    connect4   128   32  4x64       45, 48            71
    tictactoe   64   64  2x32           35            44
    tictactoe   64  256  2x32       71, 77           116
    tictactoe   16  128  1x16       26, 33            32

    .venv/bin/python -m shared.work.memory connect4 64 8,32,64,128 4x64
    .venv/bin/python -m shared.work.memory tictactoe 64 64,256 2x32
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.learn.games.base import Game
from shared.learn.netconfig import NetConfig
from shared.runtime.memory import own_rss_bytes

MB = 1 << 20
PLAY_BASE_BYTES = 20 * MB
SIM_BYTES = 3400  # per simulation of a game in flight ...
SIM_CELL_BYTES = 160  # ... plus this per board cell (a game lasts up to `cells` plies)
GAME_MARGIN = 1.25  # games run longer with some networks than with others
WEIGHT_COPIES = 2  # the checkpoint's net and its inference copy
ACTIVATION_COPIES = 4  # feature maps alive at once during one batch (residual, conv in/out)
FLOAT_BYTES = 4
NODE_SHARE = 0.8  # of a node's memory, what its self-play workers may share by default
HIGH_WATER = 0.9  # of the budget: above it a running job starts fewer games
SETTLE_S = 5.0  # after shrinking, the time freed games get to show in RSS before shrinking again


def cells(game: Game[Any]) -> int:
    _, height, width = game.encoding_shape
    return height * width


def game_bytes(game: Game[Any], sims: int) -> int:
    """Peak memory of one game in flight: its evaluation cache, grown over its plies."""
    return int(GAME_MARGIN * sims * (SIM_BYTES + SIM_CELL_BYTES * cells(game)))


def net_weights(game: Game[Any], net: NetConfig) -> int:
    """Weights of `net` for `game`: convolutions and linear layers (batch norms get folded)."""
    planes, _, _ = game.encoding_shape
    ch, n = net.channels, cells(game)
    stem = planes * ch * 9
    tower = net.blocks * 2 * ch * ch * 9
    policy = ch * net.policy_channels + (net.policy_channels * n + 1) * game.num_actions
    value = ch * net.value_channels + (net.value_channels * n + 1) * net.value_hidden
    return stem + tower + policy + value + net.value_hidden + 1


def net_bytes(game: Game[Any], net: NetConfig | None, batch: int, models: int = 1) -> int:
    """The networks' share: weights per loaded model, and one batch's activations."""
    if net is None:  # the uniform bootstrap: no network
        return 0
    weights = net_weights(game, net) * FLOAT_BYTES * WEIGHT_COPIES * models
    activations = batch * net.channels * cells(game) * FLOAT_BYTES * ACTIVATION_COPIES
    return weights + activations


def estimate_selfplay_bytes(
    game: Game[Any], net: NetConfig | None, concurrent_games: int, sims: int, *, models: int = 1
) -> int:
    """Peak memory a self-play job adds to an idle worker, playing `concurrent_games` games at
    once with `sims` simulations a move (`net` None: the uniform bootstrap)."""
    games = concurrent_games * game_bytes(game, sims)
    return PLAY_BASE_BYTES + games + net_bytes(game, net, concurrent_games, models)


def fit_concurrency(
    budget_bytes: int, in_use_bytes: int, estimate_fn: Callable[[int], int], wanted: int
) -> int | None:
    """The most games at once (<= `wanted`) whose estimate fits beside what is in use; None when
    not even one does. `estimate_fn` must grow with the concurrency."""
    if wanted < 1:
        raise ValueError(f"wanted must be >= 1, got {wanted}")
    free = budget_bytes - in_use_bytes
    if estimate_fn(1) > free:
        return None
    low, high = 1, wanted  # estimate_fn(low) fits; find the largest that does
    while low < high:
        mid = (low + high + 1) // 2
        if estimate_fn(mid) <= free:
            low = mid
        else:
            high = mid - 1
    return low


def mb(n: int | float) -> str:
    return f"{n / MB:.0f}"


def refusal_reason(budget_bytes: int, in_use_bytes: int, estimate_bytes: int) -> str:
    """Why a job was refused: what one game at a time needs against the budget."""
    free = max(0, budget_bytes - in_use_bytes)
    return (
        f"memory: needs ~{mb(estimate_bytes)} MB even one game at a time, but the budget is "
        f"{mb(budget_bytes)} MB with {mb(in_use_bytes)} MB in use ({mb(free)} MB free)"
    )


def default_budget_bytes(node_memory_bytes: int, workers: int) -> int:
    """Each self-play worker's share of the node when none is set (`memory_budget_mb` None)."""
    return int(node_memory_bytes * NODE_SHARE) // max(1, workers)


def budget_bytes(memory_budget_mb: float | None, node_memory: int, workers: int) -> int:
    """A worker's budget: as configured, else its share of the node."""
    if memory_budget_mb is None:
        return default_budget_bytes(node_memory, workers)
    return int(memory_budget_mb * MB)


def node_memory_bytes() -> int:
    """The node's memory: physical, or the container's limit (cgroup v2) when lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return physical
    return min(physical, int(limit)) if limit.isdigit() else physical


class RssWatch:
    """A running job's concurrency limit (`self_play(limit=watch.limit)`): halved (down to 1)
    whenever the reading is above `high` of the budget, at most once per `settle_s` (finished
    games take a while to show up as freed), and never raised again within the job.

    `read` is the process's RSS by default; a VRAM reading with the device's budget works too.
    """

    def __init__(
        self,
        budget_bytes: int,
        start: int,
        *,
        read: Callable[[], int] = own_rss_bytes,
        high: float = HIGH_WATER,
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_bytes, self.read, self.high = budget_bytes, read, high
        self.settle_s, self.clock = settle_s, clock
        self.current = max(1, start)
        self.shrinks: list[tuple[int, int]] = []  # (bytes read, new limit), for the job's log
        self._last_shrink: float | None = None

    def limit(self) -> int:
        if self.current > 1 and self._settled():
            used = self.read()
            if used > self.high * self.budget_bytes:
                self.current = max(1, self.current // 2)
                self.shrinks.append((used, self.current))
                self._last_shrink = self.clock()
        return self.current

    def _settled(self) -> bool:
        return self._last_shrink is None or self.clock() - self._last_shrink >= self.settle_s


def _measure(game_name: str, sims: int, concurrency: int, net_text: str) -> str:
    """Play `concurrency` games of `game_name` with a fresh `net_text` ("4x64") network; the
    RSS peak above the worker once set up, beside the estimate."""
    import numpy as np
    import torch

    from shared.learn.games import get_game
    from shared.learn.inference import NetEvaluator
    from shared.learn.net import PolicyValueNet
    from shared.learn.selfplay import SelfPlayConfig, self_play

    torch.manual_seed(0)
    game = get_game(game_name)
    blocks, channels = (int(x) for x in net_text.split("x"))
    net = NetConfig(blocks=blocks, channels=channels)
    evaluator = NetEvaluator(PolicyValueNet(net, game.encoding_shape, game.num_actions))
    set_up = own_rss_bytes()
    peak = [set_up]
    config = SelfPlayConfig(concurrent_games=concurrency, num_simulations=sims)
    rng = np.random.default_rng(0)
    games = self_play(
        game,
        evaluator,
        rng,
        config,
        num_games=concurrency,
        on_search=lambda _: peak.append(own_rss_bytes()),
    )
    for _ in games:
        pass
    # The estimate's net term counts weights once more: they are in `set_up` already.
    estimate = estimate_selfplay_bytes(game, net, concurrency, sims) - net_bytes(game, net, 0)
    return (
        f"{game_name} sims={sims} G={concurrency} net={net_text}: worker set up {mb(set_up)} MB, "
        f"peak +{mb(max(peak) - set_up)} MB, estimate +{mb(estimate)} MB"
    )


def main(argv: list[str]) -> int:
    """`GAME SIMS G[,G...] [BLOCKSxCHANNELS]`: each concurrency in a fresh process."""
    import subprocess

    if argv[0] == "--one":
        print(_measure(argv[1], int(argv[2]), int(argv[3]), argv[4]), flush=True)
        return 0
    game_name, sims, concurrencies = argv[:3]
    net_text = argv[3] if len(argv) > 3 else "4x64"
    for g in concurrencies.split(","):
        command = [
            sys.executable,
            "-m",
            "shared.work.memory",
            "--one",
            game_name,
            sims,
            g,
            net_text,
        ]
        subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
