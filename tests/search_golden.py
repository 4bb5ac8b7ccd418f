"""Golden outputs of the batched searches on fixed seeds, to pin the two-player path exactly.

    .venv/bin/python -m tests.search_golden   # (re)writes tests/data/search_golden.npz

`golden_runs()` plays short games move by move with Gumbel (noise on) and PUCT (Dirichlet
noise, plain and with forced playouts) on tic-tac-toe and Connect Four, several games per batch,
each with its own transposition cache kept across moves, against a deterministic fake network
(priors and value from a hash of the encoding: exact on any machine, no BLAS involved). It
returns every search's actions, root visits, root Q, policy targets and root values, plus the
cache hit counts; the test asserts the current code reproduces the file bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.learn.games.base import BoolArray, FloatArray, Game
from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.search import Cache, SearchOutput, gumbel_search, puct_search

GOLDEN = Path(__file__).resolve().parent / "data" / "search_golden.npz"


def hashed_evaluator(encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
    """Skewed priors over the legal actions and a value in (-1, 1), both a pure function of the
    position's encoding (so transpositions agree and caching changes nothing)."""
    priors = np.zeros(masks.shape, dtype=np.float32)
    values = np.zeros(len(masks), dtype=np.float32)
    for i, (x, legal) in enumerate(zip(encodings, masks, strict=True)):
        seed = int.from_bytes(hashlib.blake2b(x.tobytes(), digest_size=8).digest(), "little")
        draw = np.random.default_rng(seed)
        logits = np.asarray(2.0 * draw.standard_normal(masks.shape[1]), dtype=np.float32)
        weights: FloatArray = np.exp(logits - logits[legal].max()) * legal
        priors[i] = weights / weights.sum()
        values[i] = np.float32(np.tanh(0.8 * draw.standard_normal()))
    return priors, values


Search = Callable[[Game[Any], list[Any], list[Cache], np.random.Generator], SearchOutput]


def _gumbel(sims: int, considered: int) -> Search:
    return lambda game, roots, caches, rng: gumbel_search(
        game, roots, hashed_evaluator, rng, caches=caches, num_simulations=sims,
        max_considered=considered, gumbel_scale=1.0,
    )  # fmt: skip


def _puct(sims: int, forced_k: float) -> Search:
    return lambda game, roots, caches, rng: puct_search(
        game, roots, hashed_evaluator, rng, caches=caches, num_simulations=sims, forced_k=forced_k
    )


CASES: dict[str, tuple[Game[Any], tuple[str, ...], Search, int, int]] = {
    # name: (game, openings (one game each), search, seed, moves to play)
    "ttt-gumbel": (TICTACTOE, ("", "5", "19", "1597", "12"), _gumbel(24, 16), 11, 5),
    "ttt-puct": (TICTACTOE, ("", "5", "1425", "73"), _puct(40, 0.0), 12, 5),
    "ttt-puct-forced": (TICTACTOE, ("", "3"), _puct(60, 2.0), 13, 4),
    "c4-gumbel": (CONNECT4, ("", "4", "4433", "1234567"), _gumbel(48, 8), 14, 6),
    "c4-puct": (CONNECT4, ("", "44", "3455"), _puct(48, 0.0), 15, 6),
    "c4-puct-forced": (CONNECT4, ("4",), _puct(64, 2.0), 16, 4),
}
FIELDS = ("action", "visits", "q", "policy", "root_value")


def golden_runs() -> dict[str, np.ndarray]:
    """Every case's per-move search outputs, keyed "case/move/field"."""
    out: dict[str, np.ndarray] = {}
    for name, (game, openings, search, seed, moves) in CASES.items():
        rng = np.random.default_rng(seed)
        states = [game.parse(text) for text in openings]
        caches: list[Cache] = [{} for _ in states]
        for move in range(moves):
            live = [i for i, s in enumerate(states) if game.terminal_value(s) is None]
            if not live:
                break
            result = search(game, [states[i] for i in live], [caches[i] for i in live], rng)
            for field in FIELDS:
                out[f"{name}/{move}/{field}"] = np.asarray(getattr(result, field))
            out[f"{name}/{move}/live"] = np.array(live)
            out[f"{name}/{move}/cache_hits"] = result.stats.per_game.cache_hits.copy()
            out[f"{name}/{move}/nn_evals"] = result.stats.per_game.nn_evals.copy()
            out[f"{name}/{move}/terminal_visits"] = result.stats.per_game.terminal_visits.copy()
            for i, action in zip(live, result.action.tolist(), strict=True):
                states[i] = game.apply(states[i], action)
    return out


def main() -> None:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    runs = golden_runs()
    np.savez_compressed(GOLDEN, **runs)  # type: ignore[arg-type]
    print(f"wrote {len(runs)} arrays to {GOLDEN}")


if __name__ == "__main__":
    main()
