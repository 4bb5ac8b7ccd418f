"""Matches: colour-swapped pairs, shared openings, scoring from A's view, batched model search."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from shared.learn.arena import (
    AgentPlayer,
    MatchOutcome,
    MatchStopped,
    ModelPlayer,
    play_match,
    random_opening,
)
from shared.learn.baselines import make_agent
from shared.learn.games.base import BoolArray, FloatArray, Game, IllegalMove, Symmetry
from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.inference import uniform_evaluator

RANDOM = AgentPlayer(make_agent("random"))
ONESTEP = AgentPlayer(make_agent("onestep"))


class OneMove:
    """A one-ply game: the first player wins by playing 1 and loses by playing 0."""

    name = "onemove"
    num_actions = 2
    encoding_shape = (1, 1, 2)

    def initial(self) -> tuple[int, ...]:
        return ()

    def legal_mask(self, state: tuple[int, ...]) -> BoolArray:
        return np.full(2, not state, dtype=np.bool_)

    def apply(self, state: tuple[int, ...], action: int) -> tuple[int, ...]:
        if state or action not in (0, 1):
            raise IllegalMove(f"{action} in {state}")
        return (action,)

    def terminal_value(self, state: tuple[int, ...]) -> float | None:
        return None if not state else (-1.0 if state[0] == 1 else 1.0)

    def to_play(self, state: tuple[int, ...]) -> int:
        return len(state) % 2

    def ply(self, state: tuple[int, ...]) -> int:
        return len(state)

    def key(self, state: tuple[int, ...]) -> Hashable:
        return state

    def encode(self, state: tuple[int, ...]) -> FloatArray:
        return np.zeros(self.encoding_shape, dtype=np.float32)

    def symmetries(self) -> tuple[Symmetry, ...]:
        return (Symmetry("identity", lambda x: x, np.arange(2)),)

    def notation(self, state: tuple[int, ...]) -> str:
        return "".join(map(str, state))

    def parse(self, text: str) -> tuple[int, ...]:
        return tuple(int(c) for c in text)

    def action_name(self, action: int) -> str:
        return str(action)


@dataclass(frozen=True)
class Always:
    action: int
    name: str = "always"

    def choose(self, game: Game[Any], state: Any, rng: np.random.Generator) -> int:
        return self.action


@dataclass
class Perfect:
    """Memoised negamax; a uniformly random choice among the optimal moves."""

    name: str = "perfect"
    memo: dict[Hashable, float] = field(default_factory=dict)

    def value(self, game: Game[Any], state: Any) -> float:
        key = game.key(state)
        if key not in self.memo:
            terminal = game.terminal_value(state)
            legal = np.flatnonzero(game.legal_mask(state)).tolist()
            self.memo[key] = (
                terminal
                if terminal is not None
                else max(-self.value(game, game.apply(state, a)) for a in legal)
            )
        return self.memo[key]

    def choose(self, game: Game[Any], state: Any, rng: np.random.Generator) -> int:
        legal = np.flatnonzero(game.legal_mask(state)).tolist()
        scores = [-self.value(game, game.apply(state, a)) for a in legal]
        best = [a for a, s in zip(legal, scores, strict=True) if s == max(scores)]
        return int(best[int(rng.integers(len(best)))])


class CountingEvaluator:
    """The uniform evaluator, counting calls and rows."""

    def __init__(self) -> None:
        self.calls = 0
        self.batch_sizes: list[int] = []

    def __call__(self, encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        self.calls += 1
        self.batch_sizes.append(len(masks))
        return uniform_evaluator(encodings, masks)


def total(outcome: MatchOutcome) -> int:
    return outcome.wins_a + outcome.draws + outcome.wins_b


def test_a_player_that_always_wins_first_scores_half_over_pairs() -> None:
    winner = AgentPlayer(Always(1))
    outcome = play_match(OneMove(), winner, winner, 10, np.random.default_rng(0), opening_plies=0)
    assert (outcome.wins_a, outcome.draws, outcome.wins_b) == (5, 0, 5)
    assert [r.a_first for r in outcome.records] == [True, False] * 5
    assert [r.score_a for r in outcome.records] == [1.0, -1.0] * 5


def test_scores_are_from_a_view_in_both_colours() -> None:
    outcome = play_match(
        OneMove(), AgentPlayer(Always(1)), AgentPlayer(Always(0)), 6, np.random.default_rng(0)
    )
    assert (outcome.wins_a, outcome.draws, outcome.wins_b) == (6, 0, 0)
    assert [r.moves for r in outcome.records] == [(1,), (0,)] * 3


def test_both_games_of_a_pair_share_a_random_opening() -> None:
    outcome = play_match(TICTACTOE, RANDOM, RANDOM, 20, np.random.default_rng(3), opening_plies=3)
    openings = [r.moves[:3] for r in outcome.records]
    assert all(r.opening_plies == 3 for r in outcome.records)
    assert openings[0::2] == openings[1::2]
    assert len(set(openings)) > 1
    assert total(outcome) == 20


def test_an_opening_never_ends_the_game() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        moves = random_opening(TICTACTOE, 9, rng)
        state = TICTACTOE.initial()
        for action in moves:
            state = TICTACTOE.apply(state, action)
        assert TICTACTOE.terminal_value(state) is None
        assert 5 <= len(moves) < 9


@pytest.mark.parametrize(("game", "min_share"), [(TICTACTOE, 0.6), (CONNECT4, 0.9)])
def test_onestep_beats_random(game: Game[Any], min_share: float) -> None:
    outcome = play_match(game, ONESTEP, RANDOM, 40, np.random.default_rng(1))
    assert total(outcome) == 40
    assert outcome.wins_a >= min_share * 40
    assert outcome.wins_b <= 0.1 * 40


def test_perfect_tictactoe_against_itself_draws_every_game() -> None:
    perfect = AgentPlayer(Perfect())
    outcome = play_match(TICTACTOE, perfect, perfect, 20, np.random.default_rng(2), opening_plies=1)
    assert outcome.draws == 20
    assert len({r.moves for r in outcome.records}) > 2


def test_model_against_model_batches_every_game_into_one_call_per_simulation() -> None:
    sims, games, max_plies = 8, 16, 9
    batched, one_at_a_time = CountingEvaluator(), CountingEvaluator()
    for evaluator, concurrent in ((batched, games), (one_at_a_time, 1)):
        model = ModelPlayer(evaluator, sims)
        play_match(TICTACTOE, model, model, games, np.random.default_rng(4), concurrent=concurrent)
    # Each move step runs at most one search per side, each at most sims + 1 calls (root + sims).
    assert batched.calls <= 2 * (sims + 1) * max_plies
    assert max(batched.batch_sizes) >= games // 2
    assert one_at_a_time.calls > 4 * batched.calls


def test_a_searched_model_beats_random() -> None:
    model = ModelPlayer(uniform_evaluator, 32)
    outcome = play_match(TICTACTOE, model, RANDOM, 20, np.random.default_rng(0))
    assert outcome.wins_a >= 10
    assert outcome.wins_b <= 4


def test_models_play_deterministically() -> None:
    model_a = ModelPlayer(uniform_evaluator, 16)
    model_b = ModelPlayer(uniform_evaluator, 4)
    first, second = (
        play_match(CONNECT4, model_a, model_b, 8, np.random.default_rng(5), opening_plies=0)
        for _ in range(2)
    )
    assert first == second
    assert first.records[0].moves == first.records[2].moves  # same empty opening, same play


def test_a_fixed_seed_gives_the_same_match_at_any_concurrency() -> None:
    outcomes = [
        play_match(CONNECT4, ONESTEP, RANDOM, 12, np.random.default_rng(9), concurrent=c)
        for c in (1, 5, 32)
    ]
    assert outcomes[0] == outcomes[1] == outcomes[2]
    other = play_match(CONNECT4, ONESTEP, RANDOM, 12, np.random.default_rng(10))
    assert other.records != outcomes[0].records


def test_a_stop_request_ends_the_match() -> None:
    with pytest.raises(MatchStopped, match="0 of 4"):
        play_match(TICTACTOE, RANDOM, RANDOM, 4, np.random.default_rng(0), stop=lambda: True)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"games": 0}, "games"),
        ({"opening_plies": -1}, "opening_plies"),
        ({"concurrent": 0}, "concurrent"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, int], name: str) -> None:
    args: dict[str, Any] = {"games": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        play_match(TICTACTOE, RANDOM, RANDOM, rng=np.random.default_rng(0), **args)


def test_a_model_needs_at_least_one_simulation() -> None:
    with pytest.raises(ValueError, match="sims"):
        ModelPlayer(uniform_evaluator, 0)
