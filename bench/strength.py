"""Connect Four move quality against the exact solver: mistake rates by game stage.

    .venv/bin/python bench/strength.py --json [--checkpoint FILE] [--sims S] [--positions N]
        [--seed K] [--baselines random,onestep,mcts:200] [--cache DIR]

A mistake is a move whose win/draw/loss value is worse than the best available (the measure of
Pons' test sets in AlphaZero.jl's Connect Four benchmark). Positions come from seeded games of
random and `onestep` moves mixed, stopped at a ply drawn within each stage (<= 14, 15-28, > 28
moves played; the first stage starts at 8 moves, where labelling takes the C solver ~0.5 s);
every legal move is labelled by `shared.learn.solver.connect4.move_values`, and a position is kept
only if its moves do not all have the same value. The `quiet` rates cover the positions (of any
stage) with no immediate win or block for either side, where `onestep` plays at random. The
labelled set is cached under --cache (default ~/.cache/conclave) by seed and size. Every agent
sees each position with the same seeded generator, so `random` and `onestep` share their random
draws.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.learn.baselines import Agent, make_agent, opponent_can_win, wins_at_once
from shared.learn.games.connect4 import GAME, Connect4State
from shared.learn.solver.connect4 import move_values

STAGES = (("<=14", 8, 14), ("15-28", 15, 28), (">28", 29, 41))
QUIET = "quiet"  # a subset across stages: no immediate win or block for either side
CACHE_VERSION = 1  # bump when position generation or labelling changes


@dataclass(frozen=True)
class Labelled:
    """A position and the solver's WIN/DRAW/LOSS (1/0/-1) for each legal action."""

    moves: str
    values: dict[int, int]

    @property
    def stage(self) -> str:
        return next(name for name, low, high in STAGES if low <= len(self.moves) <= high)

    def is_mistake(self, action: int) -> bool:
        return self.values[action] < max(self.values.values())


def _play_to(ply: int, rng: np.random.Generator) -> Connect4State | None:
    """A game of random and onestep moves mixed, stopped after `ply` moves (None if it ended)."""
    agents = (make_agent("random"), make_agent("onestep"))
    random_share = rng.uniform(0.1, 0.6)
    state = GAME.initial()
    for _ in range(ply):
        agent = agents[0] if rng.random() < random_share else agents[1]
        state = GAME.apply(state, agent.choose(GAME, state, rng))
        if GAME.terminal_value(state) is not None:
            return None
    return state


def _stage_position(low: int, high: int, rng: np.random.Generator) -> Connect4State:
    while True:
        state = _play_to(int(rng.integers(low, high + 1)), rng)
        if state is not None:
            return state


def label_positions(seed: int, count: int) -> list[Labelled]:
    """`count` distinct positions with moves of differing value, split evenly over the stages."""
    rng = np.random.default_rng([CACHE_VERSION, seed])
    out: list[Labelled] = []
    seen: set[Hashable] = set()
    for index, (_, low, high) in enumerate(STAGES):
        wanted = count // len(STAGES) + (index < count % len(STAGES))
        kept = 0
        while kept < wanted:
            state = _stage_position(low, high, rng)
            key = GAME.key(state)
            if key in seen:
                continue
            seen.add(key)
            values = move_values(state)
            if len(set(values.values())) > 1:
                out.append(Labelled(state.moves, values))
                kept += 1
    return out


def cached_positions(seed: int, count: int, cache: Path) -> tuple[list[Labelled], bool]:
    """The labelled set, from `cache` if there (and whether it was), else labelled and stored."""
    path = cache / f"c4-strength-v{CACHE_VERSION}-seed{seed}-n{count}.json"
    if path.exists():
        rows = json.loads(path.read_text())
        return [Labelled(m, {int(a): v for a, v in values.items()}) for m, values in rows], True
    positions = label_positions(seed, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([[p.moves, p.values] for p in positions]))
    tmp.replace(path)
    return positions, False


def is_quiet(state: Connect4State) -> bool:
    """No tactics one ply deep: the mover cannot win at once and no move lets the opponent win
    at once (so nothing to block), i.e. `onestep` knows nothing here and plays at random."""
    actions = [int(a) for a in np.flatnonzero(GAME.legal_mask(state))]
    if any(wins_at_once(GAME, state, a) for a in actions):
        return False
    return not any(opponent_can_win(GAME, GAME.apply(state, a)) for a in actions)


def _rates(counts: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    stages = [c for name, c in counts.items() if name != QUIET]
    total = [sum(c[0] for c in stages), sum(c[1] for c in stages)]
    return {
        name: {"positions": n, "mistakes": m, "rate": round(m / n, 4) if n else None}
        for name, (n, m) in {**counts, "overall": total}.items()
    }


def mistake_rates(
    positions: Sequence[Labelled], agent: Agent, seed: int
) -> dict[str, dict[str, Any]]:
    """Per stage and overall: {positions, mistakes, rate} of `agent` on `positions`."""
    counts = {name: [0, 0] for name, _, _ in STAGES}
    counts[QUIET] = [0, 0]
    for index, position in enumerate(positions):
        rng = np.random.default_rng([seed, index])
        state = GAME.parse(position.moves)
        action = agent.choose(GAME, state, rng)
        groups = (position.stage, QUIET) if is_quiet(state) else (position.stage,)
        for group in groups:
            counts[group][0] += 1
            counts[group][1] += position.is_mistake(action)
    return _rates(counts)


def report(positions: Sequence[Labelled], agents: Sequence[Agent], seed: int) -> dict[str, Any]:
    """The benchmark's JSON: counts by stage, and each agent's mistake rates and seconds."""
    counts = {name: 0 for name, _, _ in STAGES}
    for position in positions:
        counts[position.stage] += 1
    out: dict[str, Any] = {"seed": seed, "positions": len(positions), "counts": counts}
    out["agents"], out["seconds"] = {}, {}
    for agent in agents:
        start = time.perf_counter()
        out["agents"][agent.name] = mistake_rates(positions, agent, seed)
        out["seconds"][agent.name] = round(time.perf_counter() - start, 2)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a Connect Four checkpoint to measure")
    parser.add_argument("--sims", type=int, default=64, help="search simulations per move")
    parser.add_argument("--positions", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baselines", default="random,onestep,mcts:200")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "conclave")
    parser.add_argument("--json", action="store_true", help="print JSON (the only output)")
    args = parser.parse_args(argv)

    agents: list[Agent] = [make_agent(spec) for spec in args.baselines.split(",") if spec]
    if args.checkpoint is not None:
        from shared.learn.search.agent import checkpoint_agent  # imports torch

        agents.insert(0, checkpoint_agent(GAME, args.checkpoint, args.sims))
    start = time.perf_counter()
    positions, cached = cached_positions(args.seed, args.positions, args.cache)
    label_seconds = round(time.perf_counter() - start, 2)
    out = report(positions, agents, args.seed)
    out["seconds"]["label"] = label_seconds
    checkpoint = None if args.checkpoint is None else str(args.checkpoint)
    out |= {"checkpoint": checkpoint, "sims": args.sims if checkpoint else None, "cached": cached}
    if args.json:
        print(json.dumps(out))
    else:
        for name, stages in out["agents"].items():
            rates = "  ".join(f"{s} {v['rate']}" for s, v in stages.items())
            print(f"{name:>20}: {rates}")


if __name__ == "__main__":
    main()
