"""The loop's phase per game, as status shows it (pure)."""

from __future__ import annotations

import msgspec

from shared.loop.phase import TrainingPhase, phase_of
from shared.loop.policy import GameSnapshot, GameState, LoopConfig, MatchScore
from shared.loop.sprt import SprtConfig

CFG = LoopConfig(games=("tictactoe",), games_per_generation=400, sprt=SprtConfig(max_games=200))


def test_before_the_first_network_it_is_bootstrap() -> None:
    assert phase_of(GameState(), GameSnapshot(), CFG).now == "bootstrap"


def test_collecting_counts_games_since_the_last_training() -> None:
    state = GameState(generation=2, best="b", trainings=3, games_at_last_train=1000)
    phase = phase_of(state, GameSnapshot(games_total=1250), CFG)
    assert (phase.now, phase.games, phase.games_needed, phase.generation) == (
        "collecting",
        250,
        400,
        2,
    )
    assert phase.match is None and phase.training is None


def test_training_carries_the_trainers_progress() -> None:
    state = GameState(generation=2, best="b", trainings=3, training_in_progress=True)
    progress = TrainingPhase(step=120, steps=300, policy_loss=1.2, value_loss=0.4)
    phase = phase_of(state, GameSnapshot(), CFG, training=progress)
    assert phase.now == "training"
    assert phase.training == progress


def test_a_match_shows_games_played_and_the_sprt() -> None:
    state = GameState(generation=2, best="b", trainings=3, pending_eval="c", match_games=60)
    score = MatchScore(candidate="c", wins=30, draws=4, losses=6)
    phase = phase_of(state, GameSnapshot(match=score), CFG)
    assert phase.now == "match" and phase.match is not None
    m = phase.match
    assert (m.games, m.scheduled, m.max_games) == (40, 60, 200)
    assert (m.wins, m.draws, m.losses) == (30, 4, 6)
    assert m.lower < 0 < m.upper
    assert m.llr > 0 and m.elo > 0


def test_a_score_of_another_candidate_is_not_shown_as_this_match() -> None:
    state = GameState(generation=2, best="b", trainings=3, pending_eval="c", match_games=20)
    phase = phase_of(state, GameSnapshot(match=MatchScore(candidate="old", wins=9)), CFG)
    assert phase.match is not None
    assert (phase.match.games, phase.match.llr) == (0, 0.0)


def test_the_llr_trace_grows_with_the_match_and_restarts_with_a_new_candidate() -> None:
    state = GameState(generation=2, best="b", trainings=3, pending_eval="c", match_games=60)
    first = phase_of(
        state, GameSnapshot(match=MatchScore(candidate="c", wins=12, draws=2, losses=6)), CFG
    )
    same = phase_of(
        state,
        GameSnapshot(match=MatchScore(candidate="c", wins=12, draws=2, losses=6)),
        CFG,
        previous=first,
    )
    more = phase_of(
        state,
        GameSnapshot(match=MatchScore(candidate="c", wins=26, draws=4, losses=10)),
        CFG,
        previous=same,
    )
    assert more.match is not None and first.match is not None
    assert [games for games, _ in more.match.trace] == [20, 40]
    assert more.match.trace[0] == (20, first.match.llr)
    other = msgspec.structs.replace(state, pending_eval="d")
    fresh = phase_of(
        other, GameSnapshot(match=MatchScore(candidate="d", wins=1)), CFG, previous=more
    )
    assert fresh.match is not None and fresh.match.trace == [(1, fresh.match.llr)]
