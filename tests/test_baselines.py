from typing import Any

import numpy as np
import pytest

from shared.learn.baselines import (
    Agent,
    BadAgentSpec,
    MctsAgent,
    NoLegalMove,
    OneStepAgent,
    RandomAgent,
    make_agent,
    rollout,
)
from shared.learn.games.base import Game
from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.tictactoe import GAME as TICTACTOE

SEEDS = range(8)


def choices(agent: Agent, game: Game[Any], moves: str) -> set[int]:
    state = game.parse(moves)
    return {agent.choose(game, state, np.random.default_rng(seed)) for seed in SEEDS}


def play_game(first: Agent, second: Agent, rng: np.random.Generator) -> float:
    """The result for `first`: 1 win, 0 draw, -1 loss."""
    state, agents = CONNECT4.initial(), (first, second)
    while (value := CONNECT4.terminal_value(state)) is None:
        agent = agents[CONNECT4.to_play(state)]
        state = CONNECT4.apply(state, agent.choose(CONNECT4, state, rng))
    return value if CONNECT4.to_play(state) == 0 else -value


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("random", RandomAgent()), ("onestep", OneStepAgent()), ("mcts:25", MctsAgent(25))],
)
def test_make_agent(spec: str, expected: Agent) -> None:
    agent = make_agent(spec)
    assert agent == expected
    assert agent.name == spec


@pytest.mark.parametrize(
    "spec",
    # a search without end (a job names its agents): at most MAX_SIMS simulations
    [
        "",
        "greedy",
        "mcts",
        "mcts:",
        "mcts:0",
        "mcts:-3",
        "mcts:1e3",
        "mcts:100001",
        "mcts:" + "9" * 30,
    ],
)
def test_make_agent_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(BadAgentSpec, match=f"agent spec '{spec}' is not one of"):
        make_agent(spec)


@pytest.mark.parametrize("spec", ["random", "onestep", "mcts:10"])
def test_agents_refuse_finished_positions(spec: str) -> None:
    with pytest.raises(NoLegalMove, match="position '1212121': the game is over"):
        make_agent(spec).choose(CONNECT4, CONNECT4.parse("1212121"), np.random.default_rng(0))


def test_random_plays_every_legal_move_and_is_reproducible() -> None:
    seen = choices(RandomAgent(), CONNECT4, "444444")
    assert seen <= {0, 1, 2, 4, 5, 6} and len(seen) >= 4
    state = CONNECT4.initial()
    first = [RandomAgent().choose(CONNECT4, state, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(first)) == 1


@pytest.mark.parametrize(
    ("game", "moves", "expected", "why"),
    [
        (CONNECT4, "121212", {0}, "wins rather than blocks column 2"),
        (CONNECT4, "12121", {0}, "blocks the vertical threat"),
        (TICTACTOE, "152", {2}, "blocks the top row"),
        (TICTACTOE, "1524", {2}, "wins on the top row rather than blocks the middle one"),
    ],
)
def test_onestep(game: Game[Any], moves: str, expected: set[int], why: str) -> None:
    assert choices(OneStepAgent(), game, moves) <= expected, why


def test_onestep_does_not_play_under_a_threat() -> None:
    # O has columns 1, 2 and 4 of the second row; column 3 is empty, so X must leave it alone.
    assert 2 not in choices(OneStepAgent(), CONNECT4, "71412412")


def test_onestep_beats_random() -> None:
    rng = np.random.default_rng(0)
    results = [play_game(OneStepAgent(), RandomAgent(), rng) for _ in range(20)]
    assert sum(r == 1.0 for r in results) >= 16


def test_rollout_of_a_finished_game_is_its_value() -> None:
    state = CONNECT4.parse("1212121")
    assert rollout(CONNECT4, state, np.random.default_rng(0)) == -1.0


def test_mcts_takes_an_immediate_win() -> None:
    assert choices(MctsAgent(50), CONNECT4, "121212") == {0}


def test_mcts_finds_a_forced_win() -> None:
    # X on the bottom of columns 3 and 4: playing 2 or 5 makes an open three, two threats at once.
    assert choices(MctsAgent(200), CONNECT4, "3344") <= {1, 4}


def test_mcts_blocks_in_tictactoe() -> None:
    assert choices(MctsAgent(200), TICTACTOE, "152") == {2}
