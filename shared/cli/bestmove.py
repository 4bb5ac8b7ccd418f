"""`conclave bestmove`: answer positions, one move string per line, with the chosen move.

Each input line is a position in the game's notation (for Connect Four the 1-based column-digit
move string; an empty line is the empty board); anything after the first whitespace is ignored,
so Pascal Pons' `<moves> <score>` test files can be piped in as they are. Each output line is the
chosen move (`action_name`, the 1-based column for Connect Four) or `error: position '...': why`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from shared.learn.baselines import Agent, BadAgentSpec, make_agent
from shared.learn.games import BadNotation, Game, UnknownGame, get_game

CheckpointLoader = Callable[[Game[Any], Path, int], Agent]
DEFAULT_SIMS = 200
EXIT_OK, EXIT_BAD_LINES, EXIT_USAGE = 0, 1, 2


class SetupError(ValueError):
    """Options that cannot produce an agent (unknown game, bad spec, unusable checkpoint)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--game", default="connect4", help="game name (default: connect4)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="network checkpoint to search with")
    source.add_argument("--agent", help="baseline agent: random | onestep | mcts:N")
    parser.add_argument(
        "--sims", type=int, help=f"simulations per move with --checkpoint (default {DEFAULT_SIMS})"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def search_checkpoint_loader(game: Game[Any], path: Path, sims: int) -> Agent:
    """The network at `path` with Gumbel search of `sims` simulations per move."""
    from shared.learn.search.agent import checkpoint_agent  # torch loads only when a net is wanted

    return checkpoint_agent(game, path, sims)


def run(
    args: argparse.Namespace,
    stdin: TextIO,
    stdout: TextIO,
    *,
    load_checkpoint: CheckpointLoader = search_checkpoint_loader,
) -> int:
    """Answer every line of `stdin`; exit 0, 1 if some lines were errors, 2 on bad options."""
    try:
        game = _game(args.game)
        agent = _agent(args, game, load_checkpoint)
    except SetupError as e:
        stdout.write(f"error: {e}\n")
        return EXIT_USAGE
    rng = np.random.default_rng(args.seed)
    status = EXIT_OK
    for answer in answers(game, agent, stdin, rng):
        stdout.write(answer + "\n")
        stdout.flush()  # a caller driving us line by line through a pipe waits for each answer
        if answer.startswith("error:"):
            status = EXIT_BAD_LINES
    return status


def answers(
    game: Game[Any], agent: Agent, lines: Iterable[str], rng: np.random.Generator
) -> Iterator[str]:
    """One output line per input line; bad positions become `error:` lines."""
    for line in lines:
        fields = line.split()
        yield answer(game, agent, fields[0] if fields else "", rng)


def answer(game: Game[Any], agent: Agent, text: str, rng: np.random.Generator) -> str:
    try:
        state = game.parse(text)
    except BadNotation as e:
        return f"error: {e}"
    value = game.terminal_value(state)
    if value is not None:
        outcome = "drawn" if value == 0 else f"won by the player who made move {game.ply(state)}"
        return f"error: position {text!r}: the game is over ({outcome})"
    return game.action_name(agent.choose(game, state, rng))


def _game(name: str) -> Game[Any]:
    try:
        return get_game(name)
    except UnknownGame as e:
        raise SetupError(f"--game: {e.args[0]}") from None


def _agent(args: argparse.Namespace, game: Game[Any], load_checkpoint: CheckpointLoader) -> Agent:
    if args.checkpoint is None:
        if args.sims is not None:
            raise SetupError("--sims: only used with --checkpoint (use --agent mcts:N)")
        try:
            return make_agent(args.agent)
        except BadAgentSpec as e:
            raise SetupError(f"--agent: {e}") from None
    sims = DEFAULT_SIMS if args.sims is None else args.sims
    if sims < 1:
        raise SetupError(f"--sims: must be at least 1, got {sims}")
    try:
        return load_checkpoint(game, args.checkpoint, sims)
    except SetupError:
        raise
    except (OSError, ValueError) as e:
        raise SetupError(f"--checkpoint {str(args.checkpoint)!r}: {e}") from e
