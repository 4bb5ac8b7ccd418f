"""Whether a decoded game record is one self-play could have produced (pure).

Self-play nodes hold valid credentials, so a broken or hostile one can publish anything the
schema decodes. A record is checked against its game's rules before the trainer learns from it:
targets finite and in range, every move legal when replayed from the initial position, policy
targets distributions over the legal moves, the outcome the one the moves produce, and a
resignation only where the job allowed resigning and the record's values do not contradict it.
The first fault raises `RejectedRecord` naming the field, e.g. `moves[12]: illegal action 7`.

Records carry no opening: every game is replayed from `game.initial()`. A record whose moves
do not end the game is accepted only as a resignation (self-play drops unfinished games).

`players` must be the game's. A game of more than two players is checked by seat: `outcomes`
is `game.outcome` of the final position (and `outcome` its seat 0 entry), every entry of
`root_vectors` is a value, and nobody resigns (resigning is two-player only). Two-player
records are otherwise checked exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.game import GameRecord, policy_targets
from shared.learn.games.base import FloatArray, Game, IllegalMove, num_players

POLICY_TOLERANCE = 1e-3  # float32 targets summed over a row, and mass allowed off the legal moves


class RejectedRecord(ValueError):
    """A game record the trainer will not use; `field` names the part at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class Replayed:
    """A checked record's positions: `states[i]` before ply i, its mover, and the final one."""

    states: list[Any]
    movers: list[int]
    final: Any
    policies: FloatArray  # (plies, num_actions)


def check_record(
    game: Game[Any], record: GameRecord, resign_threshold: float | None = None
) -> Replayed:
    """Check `record` against `game`'s rules; return its replay or raise RejectedRecord.

    `resign_threshold` is the threshold the record's model was given to self-play with (None:
    that model's games were never allowed to resign).
    """
    check_fields(game, record, resign_threshold)
    policies = checked_policies(record)
    replayed = replay(game, record, policies)
    check_ending(game, record, replayed, resign_threshold)
    return replayed


def check_fields(game: Game[Any], record: GameRecord, resign_threshold: float | None) -> None:
    """The checks that need no replay: identity, shapes, value ranges, resignation flags."""
    if record.game != game.name:
        raise RejectedRecord("game", f"record is for {record.game!r}, not {game.name!r}")
    if record.num_actions != game.num_actions:
        raise RejectedRecord("num_actions", f"{record.num_actions} != {game.num_actions}")
    check_shapes(record)
    if record.outcome not in (-1.0, 0.0, 1.0):
        raise RejectedRecord("outcome", f"{record.outcome} is not -1, 0 or 1")
    for ply, value in enumerate(record.root_values):
        if not -1.0 <= value <= 1.0:  # False for nan too
            raise RejectedRecord(f"root_values[{ply}]", f"{value} is not in [-1, 1]")
    check_seats(game, record)
    if record.would_resign not in (None, 0, 1):
        raise RejectedRecord("would_resign", f"{record.would_resign} is not a player")
    if record.resigned and not record.resign_enabled:
        raise RejectedRecord("resigned", "the game resigned but resigning was disabled for it")
    if record.would_resign is not None and record.resign_enabled:
        raise RejectedRecord("would_resign", "recorded in a game that was allowed to resign")
    if resign_threshold is None and (field := resign_flag(record)):
        model = f"model {record.model_sha256[:12]!r}" if record.model_sha256 else "the bootstrap"
        raise RejectedRecord(field, f"{model} was given no resign threshold")


def check_seats(game: Game[Any], record: GameRecord) -> None:
    """The by-seat fields: the game's player count, and for more than two players, lengths
    agreeing with `plies`, values in range and no resignation flag (self-play sets none)."""
    players = num_players(game)
    if record.players != players:
        raise RejectedRecord("players", f"{record.players}, but {game.name} has {players}")
    if players == 2:
        return
    if len(record.outcomes) != players:
        raise RejectedRecord("outcomes", f"{len(record.outcomes)} entries for {players} players")
    if len(record.root_vectors) != record.plies * players:
        raise RejectedRecord(
            "root_vectors", f"{len(record.root_vectors)} entries for {record.plies} plies"
        )
    for i, value in enumerate(record.root_vectors):
        if not -1.0 <= value <= 1.0:  # False for nan too
            raise RejectedRecord(f"root_vectors[{i}]", f"{value} is not in [-1, 1]")
    if field := resign_flag(record):
        raise RejectedRecord(field, f"resigning is two-player only ({game.name}: {players})")


def resign_flag(record: GameRecord) -> str:
    """The first resignation field set in `record` ("" if none): each needs a resign threshold,
    since self-play sets them only when its job had one."""
    if record.resigned:
        return "resigned"
    if record.would_resign is not None:
        return "would_resign"
    return "resign_enabled" if record.resign_enabled else ""


def check_shapes(record: GameRecord) -> None:
    """Lengths agree with `plies` (the schema checks them too; this check does not rely on it)."""
    for field, length in (("moves", len(record.moves)), ("root_values", len(record.root_values))):
        if length != record.plies:
            raise RejectedRecord(field, f"{length} entries for {record.plies} plies")
    if record.full_search and len(record.full_search) != record.plies:
        raise RejectedRecord("full_search", f"{len(record.full_search)} flags")
    expected = max(record.plies, 0) * record.num_actions * 4  # float32
    if len(record.policy) != expected:
        raise RejectedRecord("policy", f"{len(record.policy)} bytes, not {expected}")


def checked_policies(record: GameRecord) -> FloatArray:
    """The policy targets, each row finite, non-negative and summing to 1."""
    policies = policy_targets(record)
    finite = np.isfinite(policies).all(axis=1) & (policies >= 0).all(axis=1)
    if not finite.all():
        ply = int(np.argmin(finite))
        raise RejectedRecord(f"policy[{ply}]", "targets must be finite and non-negative")
    sums = policies.sum(axis=1)
    off = np.abs(sums - 1.0) > POLICY_TOLERANCE
    if off.any():
        ply = int(np.argmax(off))
        raise RejectedRecord(f"policy[{ply}]", f"sums to {sums[ply]:.4f}")
    return policies


def replay(game: Game[Any], record: GameRecord, policies: FloatArray) -> Replayed:
    """Play the moves from the initial position: each legal, no policy mass on illegal ones."""
    state = game.initial()
    states, movers = [], []
    for ply, move in enumerate(record.moves):
        if game.terminal_value(state) is not None:
            raise RejectedRecord(f"moves[{ply}]", "played after the game ended")
        legal = game.legal_mask(state)
        if not 0 <= move < game.num_actions or not legal[move]:
            raise RejectedRecord(f"moves[{ply}]", f"illegal action {move}")
        stray = float(policies[ply][~legal].sum())
        if stray > POLICY_TOLERANCE:
            raise RejectedRecord(f"policy[{ply}]", f"{stray:.4f} of the mass on illegal actions")
        states.append(state)
        movers.append(game.to_play(state))
        try:
            state = game.apply(state, move)
        except IllegalMove as e:
            raise RejectedRecord(f"moves[{ply}]", str(e)) from e
    return Replayed(states, movers, state, policies)


def check_ending(
    game: Game[Any], record: GameRecord, replayed: Replayed, resign_threshold: float | None
) -> None:
    """The outcome is the one the rules give, or a resignation consistent with the record."""
    value = game.terminal_value(replayed.final)
    if value is None:
        if not record.resigned:
            raise RejectedRecord("moves", "the moves do not end the game and nobody resigned")
        check_resignation(game, record, replayed, resign_threshold)
        return
    if record.resigned:
        raise RejectedRecord("resigned", "the moves already end the game")
    if num_players(game) > 2:
        check_outcomes(game, record, replayed.final)
        return
    first_player_view = value if game.to_play(replayed.final) == 0 else -value
    if first_player_view != record.outcome:
        raise RejectedRecord("outcome", f"{record.outcome} but the moves give {first_player_view}")


def check_outcomes(game: Game[Any], record: GameRecord, final: Any) -> None:
    """`outcomes` is the rules' outcome by seat at the end, and `outcome` its seat 0 entry."""
    given = tuple(record.outcomes)
    expected = game.outcome(final)
    if expected is None:  # terminal_value said the game is over: the game is broken, not the record
        raise RejectedRecord("moves", f"{game.name} gives no outcome where the game ends")
    if given != tuple(expected):
        raise RejectedRecord("outcomes", f"{list(given)} but the moves give {list(expected)}")
    if record.outcome != expected[0]:
        raise RejectedRecord("outcome", f"{record.outcome} but seat 0's outcome is {expected[0]}")


def check_resignation(
    game: Game[Any], record: GameRecord, replayed: Replayed, resign_threshold: float | None
) -> None:
    """The player to move resigned, so lost; the opponent's last searched value must not say
    the opponent was itself lost (at or below the threshold) one move before.

    The resigning move's Q is not recorded, so this is the strongest test the record allows.
    """
    resigner = game.to_play(replayed.final)
    lost = -1.0 if resigner == 0 else 1.0
    if record.outcome != lost:
        raise RejectedRecord("outcome", f"{record.outcome} but player {resigner} resigned")
    if resign_threshold is None:  # check_fields refused it already; this narrows the type
        raise RejectedRecord("resigned", "the record's model was given no resign threshold")
    for ply in range(len(replayed.movers) - 1, -1, -1):
        if replayed.movers[ply] != resigner:
            value = record.root_values[ply]
            if value <= resign_threshold:
                raise RejectedRecord(
                    f"root_values[{ply}]",
                    f"player {replayed.movers[ply]} saw {value}, at or below the resign "
                    f"threshold {resign_threshold}, yet player {resigner} resigned",
                )
            return
