"""Warnings logged once each: code that re-reads the same bad data every few seconds (a rating
pool, a dashboard snapshot, the syncer's documents) would otherwise repeat them forever."""

from __future__ import annotations

import logging
from collections.abc import Callable

Warn = Callable[[str], None]  # where a pure function hands a warning it wants logged


class WarnOnce:
    """A `Warn` that logs each distinct text once, remembering at most `limit` texts."""

    def __init__(self, logger: logging.Logger, limit: int = 10_000) -> None:
        self.logger, self.limit = logger, limit
        self.seen: set[str] = set()

    def __call__(self, text: str) -> None:
        if text in self.seen:
            return
        if len(self.seen) >= self.limit:
            self.seen.clear()
        self.seen.add(text)
        self.logger.warning("%s", text)
