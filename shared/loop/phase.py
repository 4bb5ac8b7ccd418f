"""What the loop is doing for one game, for people: collecting games, training, or a match.

The scheduler derives it each tick (pure, from its state and observation) and keeps it in the
loop record, so `conclave status`, the dashboard and metrics all show the same phase.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.loop.policy import GameSnapshot, GameState, LoopConfig, MatchScore
from shared.loop.sprt import sprt

PhaseName = Literal["bootstrap", "collecting", "training", "match"]


class TrainingPhase(msgspec.Struct, frozen=True, kw_only=True):
    """The running training job's last progress report."""

    step: int
    steps: int
    policy_loss: float | None = None
    value_loss: float | None = None
    samples_per_s: float = 0.0


class MatchPhase(msgspec.Struct, frozen=True, kw_only=True):
    """The candidate's promotion match so far, with the SPRT's log-likelihood ratio."""

    candidate: str
    games: int
    scheduled: int
    max_games: int
    wins: int
    draws: int
    losses: int
    llr: float
    lower: float
    upper: float
    elo: float
    trace: list[tuple[int, float]] = []  # (games, LLR) each time more games were in


class GauntletOpponent(msgspec.Struct, frozen=True, kw_only=True):
    opponent: str
    wins: int
    draws: int
    losses: int
    settled: bool  # enough games (or one-sided enough) that no more are scheduled


class GauntletPhase(msgspec.Struct, frozen=True):
    """The newest best's games against the baselines (background work, below matches)."""

    generation: int
    opponents: list[GauntletOpponent]


class Phase(msgspec.Struct, frozen=True):
    """`now`: bootstrap (no net yet), collecting (self-play until `games_needed` new games),
    training, or match; the gauntlet of the newest best runs alongside in the background."""

    now: PhaseName
    generation: int
    games: int  # new self-play games since the last training started
    games_needed: int
    training: TrainingPhase | None = None
    match: MatchPhase | None = None
    gauntlet: GauntletPhase | None = None


def phase_of(
    state: GameState,
    observed: GameSnapshot,
    cfg: LoopConfig,
    training: TrainingPhase | None = None,
    gauntlet: GauntletPhase | None = None,
    previous: Phase | None = None,
) -> Phase:
    """The phase of a game after this tick's actions were applied to `state`; the match's LLR
    trace continues `previous`'s."""
    now: PhaseName = "bootstrap" if state.best is None else "collecting"
    if state.pending_eval is not None:
        now = "match"
    elif state.training_in_progress:
        now = "training"
    return Phase(
        now,
        generation=state.generation,
        games=max(0, observed.games_total - state.games_at_last_train),
        games_needed=cfg.games_per_generation,
        training=training if now == "training" else None,
        match=match_phase(state, observed.match, cfg, previous) if now == "match" else None,
        gauntlet=gauntlet,
    )


def match_phase(
    state: GameState, score: MatchScore | None, cfg: LoopConfig, previous: Phase | None = None
) -> MatchPhase:
    candidate = state.pending_eval or ""
    if score is None or score.candidate != candidate:
        score = MatchScore(candidate=candidate)
    result = sprt(
        score.wins, score.draws, score.losses, cfg.sprt, pairs_per_game=score.pairs_per_game
    )
    llr = round(result.llr, 3)
    trace = _trace(previous, candidate)
    if score.finished > (trace[-1][0] if trace else 0):
        trace = [*trace, (score.finished, llr)]
    return MatchPhase(
        candidate=candidate,
        games=score.finished,
        scheduled=state.match_games - score.lost,
        max_games=cfg.sprt.max_games,
        wins=score.wins,
        draws=score.draws,
        losses=score.losses,
        llr=llr,
        lower=round(result.lower, 3),
        upper=round(result.upper, 3),
        elo=round(result.elo, 1),
        trace=trace,
    )


def _trace(previous: Phase | None, candidate: str) -> list[tuple[int, float]]:
    if previous is None or previous.match is None or previous.match.candidate != candidate:
        return []
    return list(previous.match.trace)
