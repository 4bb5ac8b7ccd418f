"""Evaluation of N-player games: seat rotation, pairwise results, and the SPRT, tally and ratings
counting a game's pairs as one game (docs/evaluation-nplayer.md)."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pytest

from schemas.jobs import EvalResult, PlayerSpec, pairs_problem
from shared.learn.arena import (
    AgentPlayer,
    MatchGame,
    MatchOutcome,
    ModelPlayer,
    outcome_of,
    pair_results,
    play_match,
)
from shared.learn.baselines import make_agent
from shared.learn.games.base import Game
from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.mnk import FAMILY
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.inference import uniform_evaluator
from shared.loop.observe import _tally
from shared.loop.ratings import PairResult, fit
from shared.loop.sprt import SprtConfig, elo_interval, llr, sprt

TICTACMO = FAMILY["tictacmo"]  # 3 players
CONNECT3_4P = FAMILY["connect3-7x8-4p"]  # 4 players
RANDOM = AgentPlayer(make_agent("random"))
ONESTEP = AgentPlayer(make_agent("onestep"))


@dataclass(frozen=True)
class Extreme:
    """Always the lowest (or highest) legal action: who moved is readable from the moves."""

    highest: bool
    name: str = "extreme"

    def choose(self, game: Game[Any], state: Any, rng: np.random.Generator) -> int:
        legal = np.flatnonzero(game.legal_mask(state))
        return int(legal[-1] if self.highest else legal[0])


def _digest(outcome: MatchOutcome) -> tuple[str, tuple[int, int, int]]:
    rows = [(r.index, r.a_first, r.opening_plies, r.moves, r.score_a) for r in outcome.records]
    text = repr((outcome.wins_a, outcome.draws, outcome.wins_b, rows))
    return hashlib.sha256(text.encode()).hexdigest()[:16], (
        outcome.wins_a,
        outcome.draws,
        outcome.wins_b,
    )


# Captured from the two-player arena before it learnt N players: every game, move and score.
TWO_PLAYER_FIXTURE: dict[str, tuple[Callable[[], MatchOutcome], str, tuple[int, int, int]]] = {
    "ttt_random_onestep": (
        lambda: play_match(TICTACTOE, RANDOM, ONESTEP, 15, np.random.default_rng(11), concurrent=4),
        "6d727d51165f363c",
        (1, 2, 12),
    ),
    "c4_onestep_random": (
        lambda: play_match(CONNECT4, ONESTEP, RANDOM, 10, np.random.default_rng(12)),
        "e4066db419c5f336",
        (9, 0, 1),
    ),
    "ttt_model_random": (
        lambda: play_match(
            TICTACTOE,
            ModelPlayer(uniform_evaluator, 8),
            RANDOM,
            9,
            np.random.default_rng(13),
            opening_plies=1,
            concurrent=3,
        ),
        "e4e2a134311bb158",
        (3, 2, 4),
    ),
    "mnk_model_model": (
        lambda: play_match(
            FAMILY["tictactoe-mnk"],
            ModelPlayer(uniform_evaluator, 16),
            ModelPlayer(uniform_evaluator, 2),
            8,
            np.random.default_rng(14),
        ),
        "57d1bc623e94a4ad",
        (6, 0, 2),
    ),
}


@pytest.mark.parametrize("case", sorted(TWO_PLAYER_FIXTURE))
def test_two_player_matches_are_unchanged(case: str) -> None:
    play, digest, score = TWO_PLAYER_FIXTURE[case]
    outcome = play()
    assert _digest(outcome) == (digest, score)
    assert outcome.pairs_per_game == 1
    assert outcome.games == sum(score)
    assert all(r.a_seat == (0 if r.a_first else 1) for r in outcome.records)


@pytest.mark.parametrize(("game", "players"), [(TICTACMO, 3), (CONNECT3_4P, 4)])
def test_a_rotates_through_every_seat_from_shared_openings(game: Game[Any], players: int) -> None:
    outcome = play_match(game, RANDOM, RANDOM, 8 * players, np.random.default_rng(5))
    seats = [r.a_seat for r in outcome.records]
    assert seats == list(range(players)) * 8
    assert Counter(seats) == dict.fromkeys(range(players), 8)
    assert [r.a_first for r in outcome.records] == [s == 0 for s in seats]
    openings = [r.moves[:2] for r in outcome.records]
    for k in range(8):  # one opening per rotation, different rotations mostly differ
        assert len(set(openings[k * players : (k + 1) * players])) == 1
    assert len(set(openings)) > 1
    assert outcome.pairs_per_game == players - 1
    assert outcome.wins_a + outcome.draws + outcome.wins_b == 8 * players * (players - 1)


def test_a_moves_exactly_in_its_seat() -> None:
    low, high = AgentPlayer(Extreme(highest=False)), AgentPlayer(Extreme(highest=True))
    outcome = play_match(TICTACMO, low, high, 6, np.random.default_rng(0), opening_plies=0)
    for record in outcome.records:
        state = TICTACMO.initial()
        for action in record.moves:
            legal = np.flatnonzero(TICTACMO.legal_mask(state))
            a_moves = TICTACMO.to_play(state) == record.a_seat
            assert action == (legal[0] if a_moves else legal[-1])
            state = TICTACMO.apply(state, action)
        outcome_by_seat = TICTACMO.outcome(state)
        assert outcome_by_seat is not None
        assert record.score_a == outcome_by_seat[record.a_seat]


@pytest.mark.parametrize(
    ("score_a", "opponents", "pairs"),
    [
        (1.0, 1, (1, 0, 0)),
        (0.0, 1, (0, 1, 0)),
        (-1.0, 1, (0, 0, 1)),
        (1.0, 2, (2, 0, 0)),
        (0.0, 2, (0, 2, 0)),
        (-1.0, 2, (0, 1, 1)),
        (1.0, 3, (3, 0, 0)),
        (0.0, 3, (0, 3, 0)),
        (-1.0, 3, (0, 2, 1)),
    ],
)
def test_pairwise_results_of_one_game(
    score_a: float, opponents: int, pairs: tuple[int, int, int]
) -> None:
    assert pair_results(score_a, opponents) == pairs


def _game(index: int, score_a: float, seat: int = 0) -> MatchGame:
    return MatchGame(
        index=index, a_first=seat == 0, opening_plies=0, moves=(), score_a=score_a, a_seat=seat
    )


def test_outcome_sums_pairs_of_hand_made_games() -> None:
    records = [_game(2, -1.0, 2), _game(0, 1.0, 0), _game(1, 0.0, 1), _game(3, -1.0, 0)]
    outcome = outcome_of(records, pairs_per_game=2)
    assert (outcome.wins_a, outcome.draws, outcome.wins_b) == (2, 4, 2)
    assert [r.index for r in outcome.records] == [0, 1, 2, 3]
    assert (outcome.games, outcome.pairs_per_game) == (4, 2)
    assert pairs_problem(outcome.wins_a, outcome.draws, outcome.wins_b, 2) is None
    two = outcome_of(records)
    assert (two.wins_a, two.draws, two.wins_b, two.games) == (1, 1, 2, 4)


def test_a_stronger_searcher_scores_above_half_pairwise() -> None:
    strong, weak = ModelPlayer(uniform_evaluator, 64), ModelPlayer(uniform_evaluator, 1)
    outcome = play_match(TICTACMO, strong, weak, 30, np.random.default_rng(1))
    pairs = outcome.wins_a + outcome.draws + outcome.wins_b
    assert pairs == 60
    assert (outcome.wins_a + outcome.draws / 2) / pairs > 0.5


def _result(wins_a: int, draws: int, wins_b: int, pairs_per_game: int) -> EvalResult:
    return EvalResult(
        job_id="j1",
        game="tictacmo",
        kind="match",
        a=PlayerSpec("cand", sha256="c" * 64),
        b=PlayerSpec("best", sha256="b" * 64),
        wins_a=wins_a,
        draws=draws,
        wins_b=wins_b,
        term=1,
        finished_at=1.0,
        pairs_per_game=pairs_per_game,
    )


def test_eval_result_counts_games_and_refuses_impossible_pairs() -> None:
    assert _result(4, 3, 1, 2).games == 4  # 2 won, 1 lost, 1 drawn
    assert _result(5, 3, 1, 1).games == 9
    for counts in ((1, 3, 0), (2, 1, 0), (0, 0, 2)):  # odd wins, odd total, too few draws
        with pytest.raises(ValueError, match="pairs_per_game"):
            _result(*counts, pairs_per_game=2)


def test_tally_sums_pairs_from_the_candidate_view() -> None:
    as_a = _result(4, 3, 1, 2)
    swapped = _result(2, 4, 2, 2)
    as_b = msgspec.structs.replace(swapped, a=swapped.b, b=swapped.a)
    assert _tally([as_a, as_b], "c" * 64) == (6, 7, 3, 2)
    assert _tally([], "c" * 64) == (0, 0, 0, 1)


CFG = SprtConfig(elo0=-20.0, elo1=0.0, max_games=50)


def test_sprt_with_one_pair_a_game_is_the_two_player_test() -> None:
    for counts in ((30, 10, 20), (0, 0, 0), (3, 0, 40), (60, 0, 0)):
        assert sprt(*counts, CFG, pairs_per_game=1) == sprt(*counts, CFG)


def test_sprt_counts_a_three_player_game_as_one_unit() -> None:
    wins, draws, losses = 24, 30, 14
    two, three = sprt(wins, draws, losses, CFG), sprt(wins, draws, losses, CFG, pairs_per_game=2)
    assert three.llr == two.llr / 2 == llr(wins, draws, losses, CFG.elo0, CFG.elo1) / 2
    assert three.games == 34 and two.games == 68
    assert three.elo == two.elo
    _, lo, hi = elo_interval(wins, draws, losses, pairs_per_game=2)
    assert (three.elo_lo, three.elo_hi) == (lo, hi)
    assert lo < two.elo_lo and hi > two.elo_hi  # wider: half the evidence
    with pytest.raises(ValueError, match="pairs_per_game"):
        sprt(1, 1, 1, CFG, pairs_per_game=0)


def test_sprt_cap_counts_games_not_pairs() -> None:
    # Even scores: the LLR stays well inside the bounds, so only the cap can decide.
    short = sprt(32, 34, 32, CFG, pairs_per_game=2)  # 98 pairs: 49 games < 50
    assert (short.games, short.decision, short.truncated) == (49, "continue", False)
    capped = sprt(32, 36, 32, CFG, pairs_per_game=2)  # 100 pairs: 50 games
    assert (capped.games, capped.truncated) == (50, True)
    assert capped.decision == "accept_h1"


def test_ratings_weigh_a_game_s_pairs_as_one_game() -> None:
    paired = fit([PairResult(a="x", b="random", wins_a=12, draws=6, wins_b=4, pairs_per_game=2)])
    halved = fit([PairResult(a="x", b="random", wins_a=6, draws=3, wins_b=2)])
    assert paired["x"].games == halved["x"].games == 11
    for field in ("elo", "lo", "hi"):
        assert math.isclose(getattr(paired["x"], field), getattr(halved["x"], field))
    bad = PairResult(a="x", b="y", wins_a=1, draws=0, wins_b=0, pairs_per_game=0)
    assert "pairs_per_game" in (bad.problem() or "")
