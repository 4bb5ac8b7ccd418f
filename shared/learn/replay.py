"""The trainer's sliding window of self-play positions: validated, deduplicated, reuse-capped.

Every record is checked against the game's rules (`shared.learn.recordcheck`) before its positions
are kept, so an illegal move, an outcome the moves do not produce, a non-finite value or a malformed
policy target is rejected with the field at fault.

Value targets are from the view of the player to move: a scalar for two players, and for P > 2
players a vector in turn order from the mover (entry j: the player j seats after the mover), the
layout the network's value head has.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.game import GameRecord, seat_outcomes, trained_plies
from shared.learn.games.base import FloatArray, Game, num_players
from shared.learn.recordcheck import RejectedRecord, check_record
from shared.learn.resign import ResignReport, ResignSettings, lowest_values
from shared.learn.resign import report as resign_report


@dataclass(kw_only=True)
class GamePositions:
    """One game's training positions: inputs, targets, and how often each was sampled."""

    game_id: str
    seq: int
    encodings: FloatArray  # (plies, C, H, W)
    policies: FloatArray  # (plies, A)
    values: FloatArray  # (plies,) or (plies, P): the value target (`value_targets`)
    uses: npt.NDArray[np.int32]
    # For resignation: each non-losing player's lowest root value in a game played out, and
    # whether a player who would have resigned (resigning disabled) did not lose.
    lowest_values: list[float] = field(default_factory=list)
    false_resign: bool | None = None


def positions_of(
    game: Game[Any],
    record: GameRecord,
    seq: int = 0,
    root_value_weight: float = 0.0,
    resign_threshold: float | None = None,
) -> GamePositions:
    """Check `record` (`shared.learn.recordcheck`; raise RejectedRecord naming the field at fault)
    and return its training positions.

    Value targets are the outcome blended with the search's root value at each ply
    (`root_value_weight` of it; see `value_targets`): a sampled exploratory blunder late in a
    game then does not teach that every earlier position was lost. `resign_threshold` is the
    one the record's model self-played with (None: its games may not resign).
    """
    replayed = check_record(game, record, resign_threshold)
    kept = trained_plies(record)  # cheap-search plies are played, never trained on
    values = value_targets(game, record, replayed.movers, root_value_weight)
    encodings = [game.encode(replayed.states[ply]) for ply in kept]
    shape = (0, *game.encoding_shape)
    lowest, false_resign = _resign_evidence(record, replayed.movers)
    return GamePositions(
        game_id=record.game_id,
        seq=seq,
        encodings=np.stack(encodings) if encodings else np.zeros(shape, np.float32),
        policies=replayed.policies[kept],
        values=values[kept],
        uses=np.zeros(len(kept), dtype=np.int32),
        lowest_values=lowest,
        false_resign=false_resign,
    )


def value_targets(
    game: Game[Any], record: GameRecord, movers: list[int], root_value_weight: float = 0.0
) -> FloatArray:
    """Each ply's value target from its mover's view: (plies,) for two players, else (plies, P)
    in turn order from the mover; `(1 - root_value_weight)` of the outcome plus
    `root_value_weight` of the search's root value (`root_vectors` for P > 2)."""
    players = num_players(game)
    if record.players != players:
        raise RejectedRecord("players", f"{record.players}, but {game.name} has {players}")
    if players == 2:
        values = [
            (1.0 - root_value_weight) * (record.outcome if mover == 0 else -record.outcome)
            + root_value_weight * record.root_values[ply]
            for ply, mover in enumerate(movers)
        ]
        return np.asarray(values, dtype=np.float32)
    return _vector_targets(players, record, movers, root_value_weight)


def _vector_targets(
    players: int, record: GameRecord, movers: list[int], root_value_weight: float
) -> FloatArray:
    plies = len(movers)
    outcomes = np.asarray(seat_outcomes(record), dtype=np.float64)
    roots = np.asarray(record.root_vectors, dtype=np.float64).reshape(plies, players)
    # Seat order -> turn order from each ply's mover: column j is seat (mover + j) % P.
    seats = (np.asarray(movers, dtype=np.int64)[:, None] + np.arange(players)) % players
    mixed = (1.0 - root_value_weight) * outcomes[seats]
    mixed += root_value_weight * np.take_along_axis(roots, seats, axis=1)
    targets: FloatArray = mixed.astype(np.float32)
    return targets


def _resign_evidence(record: GameRecord, movers: list[int]) -> tuple[list[float], bool | None]:
    outcomes = list(seat_outcomes(record))  # each player's result
    played_out = not record.resigned and not record.resign_enabled
    lowest = lowest_values(record.root_values, movers, outcomes) if played_out else []
    would = record.would_resign
    false_resign = None
    if not record.resign_enabled and would in (0, 1):
        false_resign = outcomes[would] >= 0
    return lowest, false_resign


class ReplayWindow:
    """The last `window_games` games of one game kind, each position used at most `max_reuse`."""

    def __init__(self, window_games: int, max_reuse: int) -> None:
        if window_games < 1 or max_reuse < 1:
            raise ValueError("window_games and max_reuse must be >= 1")
        self.window_games, self.max_reuse = window_games, max_reuse
        self.games: OrderedDict[str, GamePositions] = OrderedDict()
        self.duplicates = 0
        # The trainer adds from its ingest thread while it samples in its training thread.
        self._lock = threading.Lock()

    def add(self, positions: GamePositions) -> bool:
        """Keep a game's positions; False (and counted) if that game id is already here."""
        with self._lock:
            return self._add(positions)

    def _add(self, positions: GamePositions) -> bool:
        if positions.game_id in self.games:
            self.duplicates += 1
            return False
        self.games[positions.game_id] = positions
        while len(self.games) > self.window_games:
            self.games.popitem(last=False)
        return True

    def __len__(self) -> int:
        with self._lock:
            return sum(len(g.values) for g in self.games.values())

    def resign_report(self, settings: ResignSettings) -> ResignReport:
        """Resignation calibrated on the window's played-out games, and its false resigns."""
        with self._lock:
            games = list(self.games.values())
        lowest = [v for g in games for v in g.lowest_values]
        checks = [g.false_resign for g in games if g.false_resign is not None]
        return resign_report(lowest, checks, settings)

    def seq_range(self) -> tuple[int, int]:
        with self._lock:
            seqs = [g.seq for g in self.games.values()]
        return (min(seqs), max(seqs)) if seqs else (0, 0)

    def sample(self, batch: int, rng: np.random.Generator) -> Batch | None:
        """A batch of positions not yet used `max_reuse` times (counts updated), or None."""
        with self._lock:
            return self._sample(batch, rng)

    def _sample(self, batch: int, rng: np.random.Generator) -> Batch | None:
        entries = list(self.games.values())
        lengths = np.array([len(g.values) for g in entries])
        uses = np.concatenate([g.uses for g in entries]) if entries else np.zeros(0, np.int32)
        fresh = np.flatnonzero(uses < self.max_reuse)
        if len(fresh) == 0:
            return None
        chosen = rng.choice(fresh, size=min(batch, len(fresh)), replace=False)
        owners = np.searchsorted(np.cumsum(lengths), chosen, side="right")
        offsets = chosen - (np.cumsum(lengths) - lengths)[owners]
        for owner, offset in zip(owners.tolist(), offsets.tolist(), strict=True):
            entries[owner].uses[offset] += 1
        return Batch(
            np.stack([entries[o].encodings[i] for o, i in zip(owners, offsets, strict=True)]),
            np.stack([entries[o].policies[i] for o, i in zip(owners, offsets, strict=True)]),
            np.array(
                [entries[o].values[i] for o, i in zip(owners, offsets, strict=True)], np.float32
            ),
        )


@dataclass(frozen=True)
class Batch:
    encodings: FloatArray  # (B, C, H, W)
    policies: FloatArray  # (B, A)
    values: FloatArray  # (B,), or (B, P) for P > 2 players (see `value_targets`)


def augment(game: Game[Any], batch: Batch, rng: np.random.Generator) -> Batch:
    """Apply a random board symmetry to each position (inputs and policy targets alike; value
    targets stay: a board symmetry keeps the turn order)."""
    symmetries = game.symmetries()
    picks = rng.integers(0, len(symmetries), size=len(batch.values))
    encodings = batch.encodings.copy()
    policies = batch.policies.copy()
    for k, sym in enumerate(symmetries):
        rows = np.flatnonzero(picks == k)
        if len(rows) == 0 or k == 0:
            continue
        encodings[rows] = sym.planes(batch.encodings[rows])
        mapped = np.zeros_like(batch.policies[rows])
        mapped[:, sym.actions] = batch.policies[rows]
        policies[rows] = mapped
    return Batch(encodings, policies, batch.values)


__all__ = [
    "Batch",
    "GamePositions",
    "RejectedRecord",
    "ReplayWindow",
    "augment",
    "positions_of",
    "value_targets",
]
