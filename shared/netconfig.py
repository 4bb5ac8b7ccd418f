"""Network and training configuration, and checkpoint errors: importable without torch."""

from __future__ import annotations

import msgspec


class NetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Architecture: `blocks` residual blocks of `channels` 3x3 convolutions."""

    blocks: int = 4
    channels: int = 64
    policy_channels: int = 2
    value_channels: int = 1
    value_hidden: int = 64

    def __post_init__(self) -> None:
        for field in self.__struct_fields__:
            value = getattr(self, field)
            low = 0 if field == "blocks" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"NetConfig.{field} must be an int >= {low}, got {value!r}")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used."""


class WrongGame(CheckpointError):
    """A checkpoint trained for another game."""


class BadDigest(CheckpointError):
    """Weights whose sha256 differs from the one recorded in the checkpoint."""


class MalformedCheckpoint(CheckpointError):
    """Bytes that are not a Conclave checkpoint (or not one this code can read)."""


class TrainSettings(msgspec.Struct, frozen=True):
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    value_weight: float = 1.0
