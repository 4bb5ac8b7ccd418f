"""The baselines in games of 3 and 4 players, and the two-player moves pinned bit for bit
(tests/data/baselines_golden.json, written by tests/baselines_golden.py)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.learn.arena import AgentPlayer, ModelPlayer, play_match
from shared.learn.baselines import (
    MctsAgent,
    NoLegalMove,
    OneStepAgent,
    RandomAgent,
    make_agent,
    opponent_can_win,
    rollout,
    rollout_outcome,
    wins_at_once,
)
from shared.learn.evaltypes import uniform_evaluator
from shared.learn.games.base import Game, finished
from shared.learn.games.mnk import FAMILY, MnkState
from shared.learn.strength import Rung
from tests.baselines_golden import GAMES, GOLDEN, choose_move

TICTACMO = FAMILY["tictacmo"]  # 3 players, 3x5, three in a row; cells row-major from 0
CONNECT3_3P = FAMILY["connect3-6x7-3p"]
CONNECT3_4P = FAMILY["connect3-7x8-4p"]
SEEDS = range(8)


def choices(agent: Any, game: Game[Any], moves: str) -> set[int]:
    state = game.parse(moves)
    return {agent.choose(game, state, np.random.default_rng(seed)) for seed in SEEDS}


def legal(game: Game[Any], state: Any) -> list[int]:
    return [int(a) for a in np.flatnonzero(game.legal_mask(state))]


def winner(game: Game[Any], state: Any) -> int | None:
    outcome = game.outcome(state)
    return None if outcome is None else next((p for p, v in enumerate(outcome) if v > 0), None)


@cache
def maxn_outcomes(state: MnkState) -> frozenset[tuple[float, ...]]:
    """Every outcome max^n play can reach from `state`, whichever way each player breaks ties:
    a child's outcome is reachable if the mover's value in it is at least what the mover is sure
    to get from every other child."""
    done = TICTACMO.outcome(state)
    if done is not None:
        return frozenset([done])
    mover = TICTACMO.to_play(state)
    children = [maxn_outcomes(TICTACMO.apply(state, a)) for a in legal(TICTACMO, state)]
    sure = max(min(v[mover] for v in child) for child in children)
    return frozenset(v for child in children for v in child if v[mover] >= sure)


def maxn_best(state: MnkState) -> int | None:
    """The move max^n plays however ties are broken, or None if that depends on tie-breaks."""
    mover = TICTACMO.to_play(state)
    values = {a: maxn_outcomes(TICTACMO.apply(state, a)) for a in legal(TICTACMO, state)}
    worst = {a: min(v[mover] for v in vs) for a, vs in values.items()}
    best = {a: max(v[mover] for v in vs) for a, vs in values.items()}
    return next((a for a in values if all(worst[a] > best[b] for b in values if b != a)), None)


# -- onestep -----------------------------------------------------------------------------------

# Player 0 has cells 0 and 1 (wins on 2), player 1 has 5 and 6 (wins on 7), player 2 has
# 12 and 13 (wins on 11 or 14); player 0 is to move.
EVERYONE_THREATENS = "1,6,13,2,7,14"
# As above but player 0 has 0 and 9 (no line) and player 2 has 10 and 11 (wins on 12).
NEXT_AND_LAST_THREATEN = "1,6,11,10,7,12"


def test_onestep_wins_in_one_in_tictacmo() -> None:
    state = TICTACMO.parse(EVERYONE_THREATENS)
    picked = choices(OneStepAgent(), TICTACMO, EVERYONE_THREATENS)
    assert picked == {a for a in legal(TICTACMO, state) if wins_at_once(TICTACMO, state, a)}
    assert all(winner(TICTACMO, TICTACMO.apply(state, a)) == 0 for a in picked)


def test_onestep_blocks_the_next_players_immediate_win() -> None:
    state = TICTACMO.parse(NEXT_AND_LAST_THREATEN)
    assert not any(wins_at_once(TICTACMO, state, a) for a in legal(TICTACMO, state))
    picked = choices(OneStepAgent(), TICTACMO, NEXT_AND_LAST_THREATEN)
    assert picked == {7}  # the cell completing player 1's row
    after = TICTACMO.apply(state, 7)
    assert not opponent_can_win(TICTACMO, after)
    # Player 2's threat (cell 12) is left to player 1, who moves before player 2.
    assert wins_at_once(TICTACMO, TICTACMO.apply(after, 14), 12)


@st.composite
def positions(draw: st.DrawFn, game: Game[Any]) -> Any:
    """An unfinished position of `game` reached by random moves."""
    state = game.initial()
    for _ in range(draw(st.integers(0, game.num_actions - 1))):
        moves = legal(game, state)
        after = game.apply(state, draw(st.sampled_from(moves)))
        if game.outcome(after) is not None:
            break
        state = after
    return state


NPLAYER_GAMES = st.sampled_from([TICTACMO, CONNECT3_3P, CONNECT3_4P])


@settings(max_examples=60, deadline=None)
@given(st.data(), NPLAYER_GAMES, st.integers(0, 2**32 - 1))
def test_onestep_wins_if_it_can_else_leaves_the_next_player_no_win(
    data: st.DataObject, game: Game[Any], seed: int
) -> None:
    state = data.draw(positions(game))
    mover = game.to_play(state)
    action = OneStepAgent().choose(game, state, np.random.default_rng(seed))
    after = game.apply(state, action)
    can_win = any(winner(game, game.apply(state, a)) == mover for a in legal(game, state))
    if can_win:
        assert winner(game, after) == mover
        return
    if any(not opponent_can_win(game, game.apply(state, a)) for a in legal(game, state)):
        assert not opponent_can_win(game, after)


# -- mcts (max^n) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "moves",
    [
        # Player 0 takes cell 1 and threatens three lines at once (cells 2, 7 and 11); its two
        # opponents get one move each before it moves again, so they can block only two.
        "7,9,5,14,6,1,4,13,11",
        "14,6,2,5,12,13,8,15,11",
        "1,9,3,6,8,11,5,13,10,7",
    ],
)
def test_mcts_picks_the_move_max_n_plays(moves: str) -> None:
    state = TICTACMO.parse(moves)
    best = maxn_best(state)
    assert best is not None, "the position must have one max^n move, however ties break"
    assert not any(wins_at_once(TICTACMO, state, a) for a in legal(TICTACMO, state))
    assert choices(OneStepAgent(), TICTACMO, moves) != {best}, "one-ply tactics would do"
    assert choices(MctsAgent(500), TICTACMO, moves) == {best}


@settings(max_examples=30, deadline=None)
@given(st.data(), NPLAYER_GAMES, st.integers(0, 2**32 - 1))
def test_rollouts_end_in_a_finished_outcome(
    data: st.DataObject, game: Game[Any], seed: int
) -> None:
    state = data.draw(positions(game))
    result = rollout_outcome(game, state, np.random.default_rng(seed))
    players = game.num_players
    assert result in {finished(players, w) for w in (None, *range(players))}
    assert rollout(game, state, np.random.default_rng(seed)) == result[game.to_play(state)]


@pytest.mark.parametrize("spec", ["random", "onestep", "mcts:10"])
def test_agents_refuse_finished_nplayer_positions(spec: str) -> None:
    won = TICTACMO.parse("1,6,11,2,7,12,3")  # player 0 completes the top row
    assert winner(TICTACMO, won) == 0
    with pytest.raises(NoLegalMove, match="the game is over"):
        make_agent(spec).choose(TICTACMO, won, np.random.default_rng(0))


# -- matches: seat-rotated, baselines in every other seat ---------------------------------------


def test_mcts_beats_its_fair_share_against_random_in_tictacmo() -> None:
    games = 12  # four rotations of the three seats
    outcome = play_match(
        TICTACMO, AgentPlayer(MctsAgent(200)), AgentPlayer(RandomAgent()), games,
        np.random.default_rng(3),
    )  # fmt: skip
    assert [r.a_seat for r in outcome.records] == [i % 3 for i in range(games)]
    assert Rung(200, outcome.wins_a, outcome.draws, outcome.wins_b).beats_fair_share
    assert sum(r.score_a > 0 for r in outcome.records) > games / 3


@pytest.mark.parametrize("game", [TICTACMO, CONNECT3_4P], ids=lambda g: g.name)
def test_a_model_plays_a_baseline_in_every_other_seat(game: Game[Any]) -> None:
    players = game.num_players
    outcome = play_match(
        game, ModelPlayer(uniform_evaluator, 4), AgentPlayer(MctsAgent(8)), players,
        np.random.default_rng(1),
    )  # fmt: skip
    assert outcome.pairs_per_game == players - 1
    assert outcome.wins_a + outcome.draws + outcome.wins_b == players * (players - 1)
    for record in outcome.records:
        state = game.initial()
        for action in record.moves:
            state = game.apply(state, action)
        final = game.outcome(state)
        assert final is not None
        assert record.score_a == final[record.a_seat]


# -- two players: the moves of the golden file, bit for bit ------------------------------------


def test_two_player_agents_reproduce_the_golden_moves_and_draws() -> None:
    records = json.loads(GOLDEN.read_text())
    assert {r["game"] for r in records} == set(GAMES)
    assert {r["agent"] for r in records} == {"random", "onestep", "mcts:50", "mcts:200"}
    changed = [
        r
        for r in records
        if choose_move(GAMES[r["game"]], r["position"], r["agent"], r["seed"])
        != (r["move"], r["next_draw"])
    ]
    assert not changed, f"{len(changed)} of {len(records)} differ, first: {changed[0]}"
