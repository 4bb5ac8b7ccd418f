"""Networks ready for search, loaded once per digest from the verified model cache."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from concurrent.futures import Executor
from typing import Any

from shared.evaltypes import Evaluator, uniform_evaluator
from shared.games import Game
from shared.models import ModelStore


class Evaluators:
    """Digest -> evaluator, loading in `pool` (torch work stays off the event loop)."""

    def __init__(self, store: ModelStore, pool: Executor, threads: int, keep: int = 3) -> None:
        self.store, self.pool, self.threads, self.keep = store, pool, threads, keep
        self._loaded: OrderedDict[tuple[str, str], Evaluator] = OrderedDict()

    async def get(self, game: Game[Any], sha256: str) -> Evaluator:
        """The evaluator for a model ("" is the uniform bootstrap); raises CheckpointError."""
        if not sha256:
            return uniform_evaluator
        key = (game.name, sha256)
        if key not in self._loaded:
            path = await self.store.path(sha256)
            loop = asyncio.get_running_loop()
            self._loaded[key] = await loop.run_in_executor(self.pool, self._load, path, game.name)
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return self._loaded[key]

    def _load(self, path: Any, game: str) -> Evaluator:
        # torch loads here, in the worker thread, not when a launcher imports the config.
        from shared.evaluator import NetEvaluator
        from shared.net import load_checkpoint

        checkpoint = load_checkpoint(path, game)
        return NetEvaluator(checkpoint.net, self.threads)
