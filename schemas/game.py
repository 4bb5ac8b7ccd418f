"""The finished self-play game record: what self-play workers publish and the trainer reads.

`policy` is bulk data: the improved-policy targets as little-endian float32 bytes of shape
(plies, num_actions), row-major; use `pack_policy` / `policy_targets`. Records travel as
msgpack (`encode_record` / `decode_record`); a new layout gets a new `type` tag.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import Meta

from schemas.codec import (
    BadMessage,
    Count,
    GameValue,
    Ident,
    NonNegative,
    Sha256,
    Timestamp,
    Token,
    rejection,
)
from schemas.jobs import Sims

_F32 = np.dtype("<f4")
MAX_PLIES = 4096  # far beyond any game we play; bounds the per-ply lists before they are read
MAX_ACTIONS = 65536
MAX_PLAYERS = 4

PerPly = Meta(max_length=MAX_PLIES)


class GameRecord(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="conclave.game.v1"
):
    """One finished game of self-play.

    `outcome` is from the first player's view (+1 win, 0 draw, -1 loss); `root_values[i]` is the
    search's value at ply i from the view of the player to move there. A game of more than two
    players also has `outcomes`, one per seat (the winner +1, every other -1; a draw all 0:
    `outcome` is seat 0's), and `root_vectors`, per ply the search's value by seat (flattened,
    plies x players). `would_resign` is the
    player (0/1) who first fell below the resign threshold in a game where resigning was
    disabled (None if nobody did) — a false resign when that player did not lose.
    """

    game: Token
    game_id: Ident
    model_sha256: Sha256
    generation: Count
    moves: Annotated[list[Count], PerPly]
    policy: bytes
    root_values: Annotated[list[GameValue], PerPly]
    outcome: GameValue
    plies: Annotated[int, Meta(ge=0, le=MAX_PLIES)]
    num_actions: Annotated[int, Meta(ge=1, le=MAX_ACTIONS)]
    search: Token
    sims_per_move: Sims
    resigned: bool = False
    resign_enabled: bool = False
    would_resign: Annotated[int, Meta(ge=0, le=1)] | None = None
    started_at: Timestamp = 0.0
    seconds: NonNegative = 0.0
    nn_evals: Count = 0  # network rows spent on this game's searches
    cache_hits: Count = 0  # leaves answered by the game's evaluation cache
    terminal_visits: Count = 0  # simulations that ended in a finished position
    job_id: Ident = ""  # the self-play job that played it ("" for games not played by a job)
    max_depth: Count = 0  # deepest simulation, in plies from a root
    # Playout cap randomisation: per ply, whether it had the full search (a training target);
    # empty means every ply did. Cheap plies were searched with `cheap_sims` and only played.
    full_search: Annotated[list[bool], PerPly] = []
    cheap_sims: Sims = 0
    players: Annotated[int, Meta(ge=2, le=MAX_PLAYERS)] = 2
    outcomes: Annotated[list[GameValue], Meta(max_length=MAX_PLAYERS)] = []
    root_vectors: Annotated[list[GameValue], Meta(max_length=MAX_PLIES * MAX_PLAYERS)] = []

    def __post_init__(self) -> None:
        if len(self.moves) != self.plies:
            raise ValueError(f"GameRecord.moves has {len(self.moves)} moves, plies={self.plies}")
        if len(self.root_values) != self.plies:
            raise ValueError(f"GameRecord.root_values has {len(self.root_values)} values")
        if len(self.policy) != self.plies * self.num_actions * _F32.itemsize:
            raise ValueError(f"GameRecord.policy has {len(self.policy)} bytes")
        targets = np.frombuffer(self.policy, dtype=_F32)
        if not ((targets >= 0) & (targets <= 1)).all():  # NaN fails both
            raise ValueError("GameRecord.policy has a target that is not a probability")
        if self.outcome not in (-1.0, 0.0, 1.0):
            raise ValueError(f"GameRecord.outcome must be -1, 0 or 1, got {self.outcome}")
        if any(not 0 <= m < self.num_actions for m in self.moves):
            raise ValueError("GameRecord.moves has an action out of range")
        if self.full_search and len(self.full_search) != self.plies:
            raise ValueError(f"GameRecord.full_search has {len(self.full_search)} flags")
        self._check_players()

    def _check_players(self) -> None:
        if self.players == 2 and not self.outcomes and not self.root_vectors:
            return
        if len(self.outcomes) != self.players:
            raise ValueError(f"GameRecord.outcomes has {len(self.outcomes)} of {self.players}")
        if sorted(self.outcomes) not in ([0.0] * self.players, [-1.0] * (self.players - 1) + [1.0]):
            raise ValueError("GameRecord.outcomes must be one +1 and the rest -1, or all 0")
        if self.outcome != self.outcomes[0]:
            raise ValueError("GameRecord.outcome must be seat 0's entry of outcomes")
        if len(self.root_vectors) != self.plies * self.players:
            raise ValueError(f"GameRecord.root_vectors has {len(self.root_vectors)} values")


def trained_plies(record: GameRecord) -> list[int]:
    """The plies whose targets are trained on: those searched in full."""
    if not record.full_search:
        return list(range(record.plies))
    return [ply for ply, full in enumerate(record.full_search) if full]


def simulations(record: GameRecord) -> int:
    """Search simulations spent on the game's moves."""
    full = len(trained_plies(record))
    return full * record.sims_per_move + (record.plies - full) * record.cheap_sims


def seat_outcomes(record: GameRecord) -> tuple[float, ...]:
    """The outcome by seat: `outcomes`, or [outcome, -outcome] for a two-player record."""
    return tuple(record.outcomes) or (record.outcome, -record.outcome)


def pack_policy(policy: npt.NDArray[np.float32]) -> bytes:
    """(plies, num_actions) float array -> little-endian float32 bytes."""
    return np.ascontiguousarray(policy, dtype=_F32).tobytes()


def policy_targets(record: GameRecord) -> npt.NDArray[np.float32]:
    """The (plies, num_actions) improved-policy targets of `record`."""
    flat = np.frombuffer(record.policy, dtype=_F32).astype(np.float32)
    return flat.reshape(record.plies, record.num_actions)


MAX_RECORD_BYTES = 4 * 1024 * 1024  # a long game's record is tens of kilobytes
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(GameRecord)


def encode_record(record: GameRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes, *, subject: str = "games") -> GameRecord:
    """Decode msgpack bytes strictly; raise BadMessage naming the field (e.g. `$.moves[3]`)."""
    if len(data) > MAX_RECORD_BYTES:
        raise BadMessage(subject, "$", f"{len(data)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        # Only skipping an unknown field recurses (every known field is flat), so the decoder's
        # own RecursionError bounds nesting as cheaply as a scan would; `rejection` names it.
        return _decoder.decode(data)
    except Exception as e:
        raise rejection(subject, e, "msgpack") from e


WIRE_MESSAGES = (GameRecord,)
