"""`conclave play`: a human against the best model, in the terminal.

The model is the running cluster's best checkpoint (read like `conclave models export`) or a local
`--checkpoint` file, searched like an evaluation match: deterministic Gumbel search with `--sims`
simulations per move. The pure parts (drawing a board, reading a move, replaying a move list, the
result) work for any `Game` whose encoding starts with the mover's and the opponent's stone planes
and whose actions are either the board's cells or its columns; the dashboard's board uses them too.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np

from schemas import names
from schemas.codec import decode
from schemas.jobs import BestPointer
from shared.bus.client import BusConfig, NatsBus
from shared.bus.ports import Bus
from shared.learn.baselines import Agent
from shared.learn.games import Game, IllegalMove, UnknownGame, get_game, two_player_games
from shared.loop.effects import EffectSettings
from shared.loop.presets import PRESETS
from shared.work.models import ModelStore

Side = Literal["first", "second"]
SIDES: tuple[Side, Side] = ("first", "second")
MARKS = ("X", "O")
Outcome = Literal["you win", "model wins", "draw"]
EXIT_OK, EXIT_NOT_PLAYED, EXIT_USAGE = 0, 1, 2


class BadMove(ValueError):
    """Input that is not a legal move in the position it was meant for."""


class NoBestModel(LookupError):
    """The cluster has not promoted a model of the game yet."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--game", default="connect4", choices=two_player_games())
    parser.add_argument(
        "--sims", type=int, default=None, help="simulations per move (default: the preset's eval)"
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="play this checkpoint, not the cluster's best"
    )
    parser.add_argument("--as", dest="side", choices=SIDES, default="first", help="your side")
    parser.add_argument("--cache-dir", default="conclave-cache", help="verified model cache")


def default_sims(game: str) -> int:
    """The simulations per move of the game's evaluation matches."""
    preset = PRESETS.get(game)
    return (preset.effects if preset is not None else EffectSettings()).eval_sims


# -- the board --------------------------------------------------------------------------------


def plays_columns(game: Game[Any]) -> bool:
    """Whether an action is a column (a stone drops into it) rather than a cell."""
    _, height, width = game.encoding_shape
    return game.num_actions == width and height > 1


def action_grid(game: Game[Any]) -> list[list[int]]:
    """The action that puts a stone on each cell (row 0 at the top), legal or not."""
    _, height, width = game.encoding_shape
    if plays_columns(game):
        return [list(range(width)) for _ in range(height)]
    if game.num_actions != height * width:
        raise ValueError(f"{game.name}: {game.num_actions} actions match neither cells nor columns")
    return [[row * width + col for col in range(width)] for row in range(height)]


def board_cells(game: Game[Any], state: Any) -> list[list[int | None]]:
    """Who holds each cell: 0 the first player, 1 the second, None nobody (row 0 at the top)."""
    planes = game.encode(state)
    mover = game.to_play(state)
    _, height, width = game.encoding_shape
    return [
        [_owner(planes[0, r, c], planes[1, r, c], mover) for c in range(width)]
        for r in range(height)
    ]


def _owner(mine: float, theirs: float, mover: int) -> int | None:
    if mine > 0.5:
        return mover
    if theirs > 0.5:
        return 1 - mover
    return None


def move_word(game: Game[Any]) -> str:
    return "column" if plays_columns(game) else "cell"


def render(game: Game[Any], state: Any) -> str:
    """The board as text: X and O for stones; empty cells show their move unless moves are
    columns, which are named under the board."""
    grid = action_grid(game)
    width = max(len(game.action_name(a)) for a in range(game.num_actions))
    columns = plays_columns(game)
    lines = []
    for owners, actions in zip(board_cells(game, state), grid, strict=True):
        cells = [
            MARKS[owner] if owner is not None else "." if columns else game.action_name(action)
            for owner, action in zip(owners, actions, strict=True)
        ]
        lines.append(" ".join(cell.rjust(width) for cell in cells))
    if columns:
        lines.append(" ".join(game.action_name(a).rjust(width) for a in grid[0]))
    return "\n".join(lines) + "\n"


# -- moves and results ------------------------------------------------------------------------


def legal_names(game: Game[Any], state: Any) -> list[str]:
    return [game.action_name(int(a)) for a in np.flatnonzero(game.legal_mask(state))]


def parse_move(game: Game[Any], state: Any, text: str) -> int:
    """The action a typed move names; BadMove says what is wrong and what is legal."""
    typed = text.strip()
    legal = " ".join(legal_names(game, state))
    word = move_word(game)
    if not typed:
        raise BadMove(f"no move typed: type a {word} ({legal})")
    by_name = {game.action_name(a): a for a in range(game.num_actions)}
    action = by_name.get(typed)
    if action is None:
        raise BadMove(f"{typed!r} is not a {word} of {game.name}: type one of {legal}")
    if not game.legal_mask(state)[action]:
        raise BadMove(f"{word} {typed} is not playable now: type one of {legal}")
    return action


def replay(game: Game[Any], moves: Sequence[int]) -> Any:
    """The position after `moves` (action indices); BadMove names the first bad entry."""
    state = game.initial()
    for index, action in enumerate(moves):
        if not 0 <= action < game.num_actions:
            raise BadMove(f"moves[{index}]: {action} is out of range 0..{game.num_actions - 1}")
        try:
            state = game.apply(state, action)
        except IllegalMove as e:
            raise BadMove(f"moves[{index}]: {e}") from None
    return state


def side_index(side: Side) -> int:
    return SIDES.index(side)


def outcome(game: Game[Any], state: Any, human: int) -> Outcome | None:
    """The result for the human playing side `human` (0 first), or None while the game goes on."""
    value = game.terminal_value(state)
    if value is None:
        return None
    if value == 0:
        return "draw"
    winner = 1 - game.to_play(state)  # a decided game is lost by the player to move
    return "you win" if winner == human else "model wins"


# -- the terminal game ------------------------------------------------------------------------


def play(
    game: Game[Any],
    agent: Agent,
    human: int,
    stdin: TextIO,
    stdout: TextIO,
    rng: np.random.Generator,
) -> Outcome | None:
    """Play one game on the terminal; None if the input ended before the game did."""
    state = game.initial()
    say(stdout, f"You are {MARKS[human]} ({SIDES[human]}); {MARKS[0]} moves first.")
    say(stdout, render(game, state))
    while (result := outcome(game, state, human)) is None:
        if game.to_play(state) == human:
            action = ask_move(game, state, stdin, stdout)
            if action is None:
                say(stdout, "\nNo more input: game abandoned.")
                return None
        else:
            action = agent.choose(game, state, rng)
            say(stdout, f"model plays {move_word(game)} {game.action_name(action)}")
        state = game.apply(state, action)
        say(stdout, render(game, state))
    say(stdout, f"Game over: {result}.")
    return result


def ask_move(game: Game[Any], state: Any, stdin: TextIO, stdout: TextIO) -> int | None:
    """Prompt until a legal move is typed; None at the end of the input."""
    while True:
        stdout.write(f"your move ({move_word(game)} {' '.join(legal_names(game, state))}): ")
        stdout.flush()
        try:
            line = stdin.readline()
            if not line:
                return None
            return parse_move(game, state, line)
        except UnicodeDecodeError:
            say(stdout, "error: unreadable input (not text)")
        except BadMove as e:
            say(stdout, f"error: {e}")


def say(stdout: TextIO, text: str) -> None:
    stdout.write(text if text.endswith("\n") else text + "\n")
    stdout.flush()


# -- the model --------------------------------------------------------------------------------


async def best_pointer(bus: Bus, game: str) -> BestPointer:
    """The registry's best model of `game`; NoBestModel before the first promotion."""
    entry = await bus.last(names.REGISTRY_BUCKET, names.best_key(game))
    if entry.value is None:
        raise NoBestModel(f"no best model for {game} yet")
    return decode(entry.value, BestPointer, subject=names.best_key(game))


async def best_checkpoint(cfg: BusConfig, game: str, cache_dir: Path) -> Path | None:
    """The best model's verified checkpoint file (None for the untrained bootstrap)."""
    bus = await NatsBus.connect(cfg)
    try:
        best = await best_pointer(bus, game)
        return await ModelStore(bus, cache_dir).path(best.sha256) if best.sha256 else None
    finally:
        await bus.close()


def search_agent(game: Game[Any], checkpoint: Path | None, sims: int) -> Agent:
    """The evaluation search over a checkpoint's network (uniform priors without one)."""
    from shared.learn.evaltypes import uniform_evaluator
    from shared.learn.search.agent import SearchAgent, checkpoint_agent  # torch loads only here

    if checkpoint is None:
        return SearchAgent("gen0-uniform", uniform_evaluator, sims)
    return checkpoint_agent(game, checkpoint, sims)


def load_agent(args: argparse.Namespace, game: Game[Any], cluster: BusConfig | None) -> Agent:
    """The model to play: `--checkpoint`, else the cluster's best; ValueError or NoBestModel."""
    sims = default_sims(game.name) if args.sims is None else args.sims
    if sims < 1:
        raise ValueError(f"--sims: must be at least 1, got {sims}")
    if args.checkpoint is not None:
        try:
            return search_agent(game, args.checkpoint, sims)
        except (OSError, ValueError) as e:
            raise ValueError(f"--checkpoint {str(args.checkpoint)!r}: {e}") from e
    if cluster is None:
        raise ValueError("no model: give --checkpoint FILE or --nats URL")
    cache = Path(args.cache_dir).absolute()
    return search_agent(game, asyncio.run(best_checkpoint(cluster, game.name, cache)), sims)


def play_main(
    args: argparse.Namespace, cluster: BusConfig | None, stdin: TextIO, stdout: TextIO
) -> int:
    """Play one game; 0 when it was played out, 1 if abandoned or no model yet, 2 on bad options."""
    try:
        game = get_game(args.game)
        agent = load_agent(args, game, cluster)
    except (UnknownGame, ValueError) as e:
        say(stdout, f"error: {e}")
        return EXIT_USAGE
    except NoBestModel as e:
        say(stdout, f"error: {e}")
        return EXIT_NOT_PLAYED
    say(stdout, f"{game.name} against {agent.name}")
    rng = np.random.default_rng(0)  # the search adds no noise: the model's moves are its best
    result = play(game, agent, side_index(args.side), stdin, stdout, rng)
    return EXIT_OK if result is not None else EXIT_NOT_PLAYED
