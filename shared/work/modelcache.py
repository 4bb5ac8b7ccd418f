"""Networks ready for search, loaded once per digest from the verified model cache."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from shared.learn.device import CPU, Compute
from shared.learn.evaltypes import Evaluator, uniform_evaluator
from shared.learn.games import Game
from shared.learn.games.base import num_players
from shared.work.models import ModelStore, UnloadableModel


class Evaluators:
    """Digest -> evaluator, loading in `pool` (torch work stays off the event loop)."""

    def __init__(
        self, store: ModelStore, pool: Executor, threads: int, keep: int = 3, compute: Compute = CPU
    ) -> None:
        self.store, self.pool, self.threads, self.keep = store, pool, threads, keep
        self.compute = compute  # set once the worker has chosen its device
        self._loaded: OrderedDict[tuple[str, str], Evaluator] = OrderedDict()

    async def get(self, game: Game[Any], sha256: str) -> Evaluator:
        """The evaluator for a model ("" is the uniform bootstrap); raises UnloadableModel when
        the verified blob is no network for `game`."""
        if not sha256:
            return uniform_evaluator
        key = (game.name, sha256)
        if key not in self._loaded:
            path = await self.store.path(sha256)
            loop = asyncio.get_running_loop()
            self._loaded[key] = await loop.run_in_executor(
                self.pool, load_evaluator, path, game, sha256, self.threads, self.compute
            )
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return self._loaded[key]


def load_evaluator(
    source: Path | bytes, game: Game[Any], sha256: str, threads: int, compute: Compute = CPU
) -> Evaluator:
    """A checked network for `game` from checkpoint bytes: anything that cannot be one (unreadable
    bytes, another game, weights that do not fit, a shape other than the game's) raises
    UnloadableModel naming the digest and the field, never a raw torch error."""
    # torch loads here, in the worker thread, not when a launcher imports the config.
    from shared.learn.inference import NetEvaluator
    from shared.learn.net import load_checkpoint
    from shared.learn.netconfig import CheckpointError

    try:
        net = load_checkpoint(source, game.name).net
    except (CheckpointError, RuntimeError, OSError) as e:
        raise UnloadableModel(sha256, f"{type(e).__name__}: {e}") from e
    for field, want in (
        ("encoding_shape", tuple(game.encoding_shape)),
        ("num_actions", game.num_actions),
        ("players", num_players(game)),
    ):
        have = getattr(net, field)
        if have != want:
            raise UnloadableModel(sha256, f"{field} is {have}, {game.name} needs {want}")
    evaluator = NetEvaluator(net, threads, compute)
    _probe(evaluator, game, sha256)
    return evaluator


def _probe(evaluator: Evaluator, game: Game[Any], sha256: str) -> None:
    """One inference on the opening position: a net that fails it would fail every search."""
    state = game.initial()
    encodings = game.encode(state)[np.newaxis]
    masks = np.array(game.legal_mask(state), dtype=np.bool_)[np.newaxis]  # a writable copy
    try:
        priors, values = evaluator(encodings, masks)
    except (RuntimeError, ValueError) as e:
        raise UnloadableModel(sha256, f"inference fails: {type(e).__name__}: {e}") from e
    players = num_players(game)
    if priors.shape != masks.shape or values.shape != ((1,) if players == 2 else (1, players)):
        raise UnloadableModel(sha256, f"outputs {priors.shape} and {values.shape}, not a net")
