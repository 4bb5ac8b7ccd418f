"""Does a model win more than a player's fair share against plain UCT? An SPRT says when.

    .venv/bin/python bench/fair_share.py --game tictacmo --checkpoint PATH [--opponent mcts:200]
        [--player BASELINE] [--sims 32] [--margin 0.15] [--batch G] [--max-games N] [--seed K]
        [--json]

The model plays seat-rotated games (`shared.learn.arena`: seat i % P in game i, the opponent in
every other seat) in batches of G games (a multiple of the player count P) until Wald's SPRT on
games won (`shared.learn.strength.ShareTest`: H0 wins 1/P, H1 wins 1/P + margin, alpha = beta =
0.05) decides, or `--max-games` are played. Each batch has its own seed, so no opening repeats.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.effective_strength import model_player
from shared.learn.arena import AgentPlayer, play_match
from shared.learn.baselines import make_agent
from shared.learn.games import get_game
from shared.learn.games.base import num_players
from shared.learn.strength import ShareTest


def run(args: argparse.Namespace) -> dict[str, Any]:
    game = get_game(args.game)
    players = num_players(game)
    if args.batch % players:
        raise SystemExit(f"--batch {args.batch} is not a multiple of the {players} players")
    test = ShareTest(players, margin=args.margin)
    if args.player:  # a baseline in the model's seat: how high the bar is for this game
        name, model = args.player, AgentPlayer(make_agent(args.player))
    else:
        name, model = model_player(game, args.checkpoint, args.sims)
    opponent = AgentPlayer(make_agent(args.opponent))
    started = time.perf_counter()
    won = played = pairs_won = pairs = 0
    decision = "continue"
    while decision == "continue" and played < args.max_games:
        rng = np.random.default_rng([args.seed, played])
        outcome = play_match(game, model, opponent, args.batch, rng)
        won += sum(record.score_a > 0 for record in outcome.records)
        played += outcome.games
        pairs_won += outcome.wins_a
        pairs += outcome.wins_a + outcome.draws + outcome.wins_b
        decision = test.decision(won, played)
    return {
        "game": game.name,
        "players": players,
        "model": name,
        "model_sims": args.sims,
        "opponent": args.opponent,
        "games": played,
        "games_won": won,
        "win_rate": round(won / played, 4),
        "fair_share": round(test.p0, 4),
        "h1_win_rate": round(test.p1, 4),
        "llr": round(test.llr(won, played), 3),
        "decision": decision,
        "pairwise_wins": pairs_won,
        "pairs": pairs,
        "seconds": round(time.perf_counter() - started, 1),
    }


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--game", required=True)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--opponent", default="mcts:200")
    parser.add_argument(
        "--player", default="", help="a baseline (e.g. mcts:3200) instead of the model"
    )
    parser.add_argument("--sims", type=int, default=32, help="the model's simulations per move")
    parser.add_argument("--margin", type=float, default=0.15, help="H1's win rate above 1/P")
    parser.add_argument("--batch", type=int, default=12, help="games per batch")
    parser.add_argument("--max-games", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    return parser


def result(argv: list[str]) -> dict[str, Any]:
    return run(parser().parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
