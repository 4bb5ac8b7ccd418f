"""A network-plus-search player with the `choose(game, state, rng)` of `shared.learn.baselines`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.learn.games.base import Game
from shared.learn.inference import Evaluator, NetEvaluator
from shared.learn.net import load_checkpoint
from shared.learn.search.gumbel import gumbel_search


@dataclass(frozen=True)
class SearchAgent:
    """Plays the Gumbel search's action; `gumbel_scale=0` (default) makes it deterministic."""

    name: str
    evaluator: Evaluator
    num_simulations: int = 64
    gumbel_scale: float = 0.0

    def choose(self, game: Game[Any], state: Any, rng: np.random.Generator) -> int:
        """Search `state`; raise ValueError naming the position if the game is over."""
        return self.choose_all(game, [state], rng)[0]

    def choose_all(
        self, game: Game[Any], states: list[Any], rng: np.random.Generator, batch: int = 256
    ) -> list[int]:
        """`choose` for each of `states`, searched `batch` at a time in lockstep."""
        actions: list[int] = []
        for first in range(0, len(states), batch):
            out = gumbel_search(
                game,
                states[first : first + batch],
                self.evaluator,
                rng,
                num_simulations=self.num_simulations,
                gumbel_scale=self.gumbel_scale,
            )
            actions.extend(int(a) for a in out.action)
        return actions


def checkpoint_agent(game: Game[Any], path: Path, sims: int) -> SearchAgent:
    """Load a checkpoint for `game` (raises CheckpointError/OSError) and search with it."""
    checkpoint = load_checkpoint(path, game.name)
    evaluator = NetEvaluator(checkpoint.net, threads=1)
    return SearchAgent(f"gen{checkpoint.generation}-{checkpoint.sha256[:8]}", evaluator, sims)
