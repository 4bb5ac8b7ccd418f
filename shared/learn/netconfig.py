"""Network and training configuration, and checkpoint errors: importable without torch."""

from __future__ import annotations

import math
from typing import Literal

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


def size_label(config: NetConfig) -> str:
    """A network's size as status and placement name it: blocks x channels, e.g. "4x64"."""
    return f"{config.blocks}x{config.channels}"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used."""


class WrongGame(CheckpointError):
    """A checkpoint trained for another game."""


class BadDigest(CheckpointError):
    """Weights whose sha256 differs from the one recorded in the checkpoint."""


class MalformedCheckpoint(CheckpointError):
    """Bytes that are not a Conclave checkpoint (or not one this code can read)."""


class TrainSettings(msgspec.Struct, frozen=True):
    """Gradient steps. The learning rate of a training job ramps up over `warmup_steps`, then
    stays (`constant`) or follows a cosine down to `lr_final_factor` of itself by the job's last
    step (`cosine`): each job continues from the previous net, so it starts high again."""

    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    value_weight: float = 1.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_final_factor: float = 0.1
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.lr_final_factor <= 1.0:
            raise ValueError(
                f"TrainSettings.lr_final_factor must be in [0, 1], got {self.lr_final_factor}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"TrainSettings.warmup_steps must be >= 0, got {self.warmup_steps}")


def lr_factor(step: int, steps: int, settings: TrainSettings) -> float:
    """The learning rate at `step` (0-based) of a `steps`-step job, as a factor of the base."""
    warm = min(1.0, (step + 1) / settings.warmup_steps) if settings.warmup_steps else 1.0
    if settings.lr_schedule == "constant" or steps <= 1:
        return warm
    done = min(1.0, step / (steps - 1))
    final = settings.lr_final_factor
    return warm * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * done)))
