import argparse
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from shared.cli.bestmove import add_arguments, run
from shared.learn.baselines import Agent
from shared.learn.games import Game

S = TypeVar("S")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="conclave bestmove")
    add_arguments(parser)
    return parser.parse_args(argv)


def bestmove(argv: list[str], text: str, **kwargs: Any) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run(parse(*argv), io.StringIO(text), out, **kwargs)
    return code, out.getvalue().splitlines()


@dataclass(frozen=True)
class HighestLegal:
    """A stand-in for the network search: plays the highest-numbered legal action."""

    name: str = "highest"

    def choose(self, game: Game[S], state: S, rng: np.random.Generator) -> int:
        return int(np.flatnonzero(game.legal_mask(state))[-1])


def test_answers_good_lines() -> None:
    code, lines = bestmove(["--agent", "onestep"], "121212\n12121\n")
    assert (code, lines) == (0, ["1", "1"])


def test_bad_lines_get_errors_and_the_rest_are_answered() -> None:
    text = "4444444\n121212\n1212121\n48\n" + "446323116125713546635334125521577677446722\n12121\n"
    code, lines = bestmove(["--game", "connect4", "--agent", "onestep"], text)
    assert code == 1
    assert lines == [
        "error: position '4444444': column 4 is full at move 7",
        "1",
        "error: position '1212121': the game is over (won by the player who made move 7)",
        "error: position '48': bad character '8' at move 2",
        "error: position '446323116125713546635334125521577677446722': the game is over (drawn)",
        "1",
    ]


def test_empty_line_is_the_empty_board_and_trailing_fields_are_ignored() -> None:
    code, lines = bestmove(["--agent", "mcts:50"], "\n121212 21\n")
    assert code == 0
    assert lines[0] in set("1234567") and lines[1] == "1"


def test_other_games_answer_in_their_own_notation() -> None:
    assert bestmove(["--game", "tictactoe", "--agent", "onestep"], "152\n155\n") == (
        1,
        ["3", "error: position '155': cell 5 is occupied at move 3"],
    )


def test_same_seed_same_answers() -> None:
    text = "\n4\n44\n444\n"
    assert bestmove(["--agent", "random", "--seed", "5"], text) == bestmove(
        ["--agent", "random", "--seed", "5"], text
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--agent", "mcts:x"], "error: --agent: agent spec 'mcts:x' is not one of"),
        (["--game", "chess", "--agent", "random"], "error: --game: unknown game 'chess'; known:"),
        (["--agent", "random", "--sims", "5"], "error: --sims: only used with --checkpoint"),
        (["--checkpoint", "net.ckpt", "--sims", "0"], "error: --sims: must be at least 1, got 0"),
    ],
)
def test_bad_options(argv: list[str], message: str) -> None:
    code, lines = bestmove(argv, "4\n")
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(message)


def test_agent_or_checkpoint_is_required() -> None:
    with pytest.raises(SystemExit):
        parse("--game", "connect4")
    with pytest.raises(SystemExit):
        parse("--agent", "random", "--checkpoint", "x")


def test_checkpoint_uses_the_injected_loader() -> None:
    calls: list[tuple[str, Path, int]] = []

    def load(game: Game[Any], path: Path, sims: int) -> Agent:
        calls.append((game.name, path, sims))
        return HighestLegal()

    argv = ["--checkpoint", "net.ckpt", "--sims", "64"]
    assert bestmove(argv, "4\n777777\n", load_checkpoint=load) == (0, ["7", "6"])
    assert calls == [("connect4", Path("net.ckpt"), 64)]


def test_checkpoint_load_errors_name_the_file() -> None:
    def load(game: Game[Any], path: Path, sims: int) -> Agent:
        raise FileNotFoundError(f"no such file: {path}")

    code, lines = bestmove(["--checkpoint", "gone.ckpt"], "4\n", load_checkpoint=load)
    assert (code, lines) == (2, ["error: --checkpoint 'gone.ckpt': no such file: gone.ckpt"])


def test_checkpoint_searches_with_a_real_network(tmp_path: Path) -> None:
    from shared.learn.games import get_game
    from shared.learn.net import NetConfig, PolicyValueNet, save_checkpoint

    game = get_game("connect4")
    net = PolicyValueNet(NetConfig(blocks=1, channels=8), game.encoding_shape, game.num_actions)
    save_checkpoint(tmp_path / "net.ckpt", net, "connect4", generation=3)
    argv = ["--checkpoint", str(tmp_path / "net.ckpt"), "--sims", "16"]
    code, lines = bestmove(argv, "\n4453\n4444444\n")
    assert code == 1
    assert lines[0] in set("1234567") and lines[1] in set("1234567")
    assert lines[2] == "error: position '4444444': column 4 is full at move 7"


def test_unusable_checkpoints_are_named(tmp_path: Path) -> None:
    from shared.learn.games import get_game
    from shared.learn.net import NetConfig, PolicyValueNet, save_checkpoint

    game = get_game("tictactoe")
    net = PolicyValueNet(NetConfig(blocks=0, channels=4), game.encoding_shape, game.num_actions)
    save_checkpoint(tmp_path / "ttt.ckpt", net, "tictactoe", generation=1)
    code, lines = bestmove(["--checkpoint", str(tmp_path / "ttt.ckpt")], "4\n")
    assert code == 2
    assert lines[0].startswith(f"error: --checkpoint '{tmp_path / 'ttt.ckpt'}': checkpoint is for")
    code, lines = bestmove(["--checkpoint", str(tmp_path / "missing.ckpt")], "4\n")
    assert code == 2
    assert lines[0].startswith(f"error: --checkpoint '{tmp_path / 'missing.ckpt'}': ")
