"""Batched tree search over many games at once: Gumbel AlphaZero (default) and PUCT."""

from shared.learn.search.engine import (
    Cache,
    GameCounts,
    SearchOutput,
    SearchStats,
    Steps,
    drive,
    drive_pipelined,
)
from shared.learn.search.gumbel import considered_visit_sequence, gumbel_search, gumbel_steps
from shared.learn.search.puct import puct_search, puct_steps

__all__ = [
    "Cache",
    "GameCounts",
    "SearchOutput",
    "SearchStats",
    "Steps",
    "considered_visit_sequence",
    "drive",
    "drive_pipelined",
    "gumbel_search",
    "gumbel_steps",
    "puct_search",
    "puct_steps",
]
