"""Effective strength of a model: the plain UCT simulations that hold it to its fair share.

    .venv/bin/python bench/effective_strength.py --game tictacmo [--checkpoint PATH]
        [--ladder 25,50,100,200,400] [--games G] [--sims S] [--seed K] [--json]

At each rung N of the ladder the model plays G seat-rotated games (`shared.learn.arena`: seat
i % P in game i, `mcts:N` in every other seat; G a multiple of the player count P) with S
simulations of Gumbel search per move. Every rung starts from the same seed, so the rungs share
their openings. Without --checkpoint the model is the search over a uniform evaluator (uniform
priors, value 0). Reports per rung the pairwise wins, draws and losses, the games won, the
pairwise score and whether it beats the fair share of 1/2, and then the effective strength
(`shared.learn.strength`: the first rung not beaten, null if every rung is).
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

from shared.learn.arena import AgentPlayer, ModelPlayer, play_match
from shared.learn.baselines import BadAgentSpec, make_agent
from shared.learn.evaltypes import uniform_evaluator
from shared.learn.games import UnknownGame, get_game
from shared.learn.games.base import Game, num_players
from shared.learn.strength import FAIR_SHARE, Rung, effective_strength

DEFAULT_LADDER = "25,50,100,200,400"


def ladder_of(text: str) -> list[int]:
    """Simulation counts from "25,50,100"; argparse names what is wrong."""
    try:
        sims = [int(part) for part in text.split(",")]
        for n in sims:
            make_agent(f"mcts:{n}")  # the range a gauntlet accepts
    except (ValueError, BadAgentSpec) as e:
        raise argparse.ArgumentTypeError(f"bad ladder {text!r}: {e}") from e
    return sorted(set(sims))


def model_player(game: Game[Any], checkpoint: Path | None, sims: int) -> tuple[str, ModelPlayer]:
    """The model's name and player: the checkpoint's network, or the uniform evaluator."""
    if checkpoint is None:
        return "uniform", ModelPlayer(uniform_evaluator, sims)
    from shared.learn.search.agent import checkpoint_agent  # torch only when a net is asked for

    agent = checkpoint_agent(game, checkpoint, sims)
    return agent.name, ModelPlayer(agent.evaluator, sims)


def play_rung(
    game: Game[Any], model: ModelPlayer, sims: int, games: int, seed: int
) -> dict[str, Any]:
    started = time.perf_counter()
    opponent = AgentPlayer(make_agent(f"mcts:{sims}"))
    outcome = play_match(game, model, opponent, games, np.random.default_rng(seed))
    rung = Rung(sims, outcome.wins_a, outcome.draws, outcome.wins_b)
    return {
        "sims": sims,
        "games": outcome.games,
        "games_won": sum(record.score_a > 0 for record in outcome.records),
        "wins": rung.wins,
        "draws": rung.draws,
        "losses": rung.losses,
        "score": round(rung.score, 4),
        "beats_fair_share": rung.beats_fair_share,
        "seconds": round(time.perf_counter() - started, 2),
    }


def report(args: argparse.Namespace, game: Game[Any]) -> dict[str, Any]:
    name, model = model_player(game, args.checkpoint, args.sims)
    rows = [play_rung(game, model, sims, args.games, args.seed) for sims in args.ladder]
    ladder = [Rung(r["sims"], r["wins"], r["draws"], r["losses"]) for r in rows]
    return {
        "game": game.name,
        "players": num_players(game),
        "model": name,
        "model_sims": args.sims,
        "games_per_rung": args.games,
        "seed": args.seed,
        "fair_share": FAIR_SHARE,
        "rungs": rows,
        "effective_strength": effective_strength(ladder),
    }


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--game", default="tictacmo")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--ladder", type=ladder_of, default=ladder_of(DEFAULT_LADDER))
    ap.add_argument("--games", type=int, default=None, help="per rung (default: 10 rotations)")
    ap.add_argument("--sims", type=int, default=32, help="the model's simulations per move")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    return ap


def _game_and_games(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Game[Any]:
    try:
        game = get_game(args.game)
    except UnknownGame as e:
        ap.error(str(e.args[0]))
    players = num_players(game)
    args.games = 10 * players if args.games is None else args.games
    if args.games < 1 or args.games % players:
        ap.error(f"--games must be a positive multiple of {players} (the players of {game.name})")
    if args.sims < 1:
        ap.error(f"--sims must be >= 1, got {args.sims}")
    return game


def _print_table(out: dict[str, Any]) -> None:
    print(f"{out['game']}: {out['model']} ({out['model_sims']} sims) against mcts:N")
    for r in out["rungs"]:
        mark = "beats" if r["beats_fair_share"] else "held"
        print(
            f"  mcts:{r['sims']:<5} W/D/L {r['wins']}/{r['draws']}/{r['losses']}"
            f"  won {r['games_won']}/{r['games']}  score {r['score']:.3f}  {mark}"
            f"  ({r['seconds']} s)"
        )
    print(f"effective strength: {out['effective_strength']}")


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    game = _game_and_games(ap, args)
    out = report(args, game)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
