"""What a promotion gate costs and how often it promotes, by the candidate's true Elo.

    python bench/sprt_cost.py --elo0 -50 --elo1 0 --max-games 100

Plays each SPRT (`shared.loop.sprt.sprt`, cap rule included) on simulated match results: games come
in jobs of `--chunk` games (the evaluator's match jobs), each a win, draw or loss with the score
the true Elo gives and a `--draw-rate` share of draws, and the test is read after every job as
the scheduler reads it. Prints JSON: for each true Elo, the mean games to a decision and the
share of matches that promoted, over `--matches` matches (seeded, so a rerun prints the same).
"""

from __future__ import annotations

import argparse
import random
import sys

import msgspec
import orjson

from shared.loop.sprt import SprtConfig, score_from_elo, sprt

TRUE_ELOS = (-200.0, -100.0, -50.0, -25.0, 0.0, 25.0, 50.0, 100.0, 200.0)


def play_match(
    cfg: SprtConfig, elo: float, chunk: int, draw_rate: float, rng: random.Random
) -> tuple[int, bool]:
    """(games played, promoted) for one simulated match."""
    p_win = max(0.0, score_from_elo(elo) - draw_rate / 2.0)
    counts = [0, 0, 0]
    while True:
        for _ in range(chunk):
            u = rng.random()
            counts[0 if u < p_win else 1 if u < p_win + draw_rate else 2] += 1
        result = sprt(counts[0], counts[1], counts[2], cfg)
        if result.decision != "continue":
            return result.games, result.decision == "accept_h1"


def measure(
    cfg: SprtConfig, chunk: int, draw_rate: float, matches: int, seed: int
) -> list[dict[str, float]]:
    rng = random.Random(seed)
    rows = []
    for elo in TRUE_ELOS:
        outcomes = [play_match(cfg, elo, chunk, draw_rate, rng) for _ in range(matches)]
        rows.append(
            {
                "true_elo": elo,
                "mean_games": sum(g for g, _ in outcomes) / matches,
                "promoted_share": sum(p for _, p in outcomes) / matches,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--elo0", type=float, default=-20.0)
    ap.add_argument("--elo1", type=float, default=0.0)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--max-games", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=20, help="games per match job")
    ap.add_argument("--draw-rate", type=float, default=0.1)
    ap.add_argument("--matches", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = SprtConfig(
        elo0=args.elo0, elo1=args.elo1, alpha=args.alpha, beta=args.beta, max_games=args.max_games
    )
    rows = measure(cfg, args.chunk, args.draw_rate, args.matches, args.seed)
    sys.stdout.write(
        orjson.dumps(
            {"sprt": msgspec.to_builtins(cfg), "by_true_elo": rows}, option=orjson.OPT_INDENT_2
        ).decode()
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
