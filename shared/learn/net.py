"""Residual policy-value network and its tensor-only checkpoints.

A checkpoint is `torch.save` of a dict of plain values (format tag, game name, architecture,
player count, generation, sha256 of the weights) plus the state dict, and is read back with
`torch.load(weights_only=True)`, so loading never runs pickled code. A checkpoint whose weights
or buffers hold a NaN or an infinity is neither written nor loaded. Checkpoints written before
the player count was recorded are two-player ones.
"""

from __future__ import annotations

import copy
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import msgspec
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from shared.learn.netconfig import (
    BadDigest,
    CheckpointError,
    MalformedCheckpoint,
    NetConfig,
    WrongGame,
)

CHECKPOINT_FORMAT = "conclave.checkpoint.v1"
MIN_PLAYERS, MAX_PLAYERS = 2, 4


class NonFiniteWeights(CheckpointError):
    """A network whose parameters or buffers hold a NaN or an infinity."""


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1: nn.Module = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2: nn.Module = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class PolicyValueNet(nn.Module):
    """(B, C, H, W) float32 -> (policy logits (B, A), values in [-1, 1]), from the mover's view.

    Values are (B,) for two players and (B, P) for `players` P > 2, in turn order from the
    mover: entry j is the value of the player j seats after the mover (entry 0 the mover's).
    """

    def __init__(
        self,
        config: NetConfig,
        encoding_shape: tuple[int, int, int],
        num_actions: int,
        players: int = 2,
    ) -> None:
        super().__init__()
        if not MIN_PLAYERS <= players <= MAX_PLAYERS:
            raise ValueError(f"players must be {MIN_PLAYERS}..{MAX_PLAYERS}, got {players}")
        planes, height, width = encoding_shape
        ch = config.channels
        self.config = config
        self.encoding_shape = encoding_shape
        self.num_actions = num_actions
        self.players = players
        self.stem_conv = nn.Conv2d(planes, ch, 3, padding=1, bias=False)
        self.stem_bn: nn.Module = nn.BatchNorm2d(ch)
        self.tower = nn.Sequential(*(_ResidualBlock(ch) for _ in range(config.blocks)))
        pc, vc = config.policy_channels, config.value_channels
        self.policy_conv = nn.Conv2d(ch, pc, 1, bias=False)
        self.policy_bn: nn.Module = nn.BatchNorm2d(pc)
        self.policy_fc = nn.Linear(pc * height * width, num_actions)
        self.value_conv = nn.Conv2d(ch, vc, 1, bias=False)
        self.value_bn: nn.Module = nn.BatchNorm2d(vc)
        self.value_fc1 = nn.Linear(vc * height * width, config.value_hidden)
        # Two players need one value (the other is its negation): the layout of every older net.
        self.value_fc2 = nn.Linear(config.value_hidden, 1 if players == 2 else players)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.tower(F.relu(self.stem_bn(self.stem_conv(x))))
        p = F.relu(self.policy_bn(self.policy_conv(h))).flatten(1)
        v = F.relu(self.value_bn(self.value_conv(h))).flatten(1)
        v = torch.tanh(self.value_fc2(F.relu(self.value_fc1(v))))
        return self.policy_fc(p), v.squeeze(1) if self.players == 2 else v


def inference_copy(net: PolicyValueNet) -> PolicyValueNet:
    """An eval-mode copy with every batch norm folded into the convolution before it."""
    fused = copy.deepcopy(net).eval()
    fused.stem_conv, fused.stem_bn = _fold(fused.stem_conv, fused.stem_bn)
    fused.policy_conv, fused.policy_bn = _fold(fused.policy_conv, fused.policy_bn)
    fused.value_conv, fused.value_bn = _fold(fused.value_conv, fused.value_bn)
    for block in fused.tower:
        if isinstance(block, _ResidualBlock):
            block.conv1, block.bn1 = _fold(block.conv1, block.bn1)
            block.conv2, block.bn2 = _fold(block.conv2, block.bn2)
    return fused


def _fold(conv: nn.Conv2d, bn: nn.Module) -> tuple[nn.Conv2d, nn.Module]:
    if not isinstance(bn, nn.BatchNorm2d):
        return conv, bn
    return fuse_conv_bn_eval(conv, bn), nn.Identity()


def weights_sha256(net: nn.Module) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every state-dict tensor, in name order."""
    return _digest(net.state_dict())


def _digest(state: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, Tensor):
            raise MalformedCheckpoint(f"checkpoint weight {name!r} is not a tensor")
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A loaded network with its provenance."""

    game: str
    config: NetConfig
    generation: int
    sha256: str
    net: PolicyValueNet


def check_finite(state: dict[str, Any]) -> None:
    """Raise NonFiniteWeights naming the first floating-point tensor with a non-finite value."""
    for name in sorted(state):
        tensor = state[name]
        if isinstance(tensor, Tensor) and tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise NonFiniteWeights(f"checkpoint weight {name!r} has {bad} non-finite values")


def checkpoint_bytes(net: PolicyValueNet, game: str, generation: int) -> bytes:
    """Serialise `net` for `game` at `generation`; raise NonFiniteWeights if it holds a NaN or
    an infinity."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    check_finite(state)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "game": game,
        "config": msgspec.structs.asdict(net.config),
        "encoding_shape": list(net.encoding_shape),
        "num_actions": net.num_actions,
        "players": net.players,
        "generation": generation,
        "sha256": _digest(state),
        "state_dict": state,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, net: PolicyValueNet, game: str, generation: int) -> str:
    """Write a checkpoint file atomically; return the weights' sha256."""
    data = checkpoint_bytes(net, game, generation)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return weights_sha256(net)


def load_checkpoint(source: bytes | Path, game: str, players: int | None = None) -> Checkpoint:
    """Read a checkpoint for `game` (and `players` players, unless None); raise WrongGame,
    BadDigest, MalformedCheckpoint or NonFiniteWeights."""
    data = source.read_bytes() if isinstance(source, Path) else source
    payload = _unpickle(data)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise MalformedCheckpoint(f"checkpoint format is {payload.get('format')!r}")
    if payload.get("game") != game:
        raise WrongGame(f"checkpoint is for game {payload.get('game')!r}, expected {game!r}")
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise MalformedCheckpoint("checkpoint has no state_dict")
    digest = _digest(state)
    if digest != payload.get("sha256"):
        raise BadDigest(f"weights sha256 {digest} != recorded {payload.get('sha256')!r}")
    check_finite(state)
    net = _build(payload, state)
    if players is not None and net.players != players:
        raise WrongGame(f"checkpoint is for {net.players} players, expected {players}")
    return Checkpoint(
        game=game, config=net.config, generation=int(payload["generation"]), sha256=digest, net=net
    )


def _unpickle(data: bytes) -> dict[str, Any]:
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as e:
        raise MalformedCheckpoint(f"not a readable checkpoint: {e}") from e
    if not isinstance(payload, dict):
        raise MalformedCheckpoint(f"checkpoint is a {type(payload).__name__}, not a dict")
    return payload


def _build(payload: dict[str, Any], state: dict[str, Tensor]) -> PolicyValueNet:
    players = _players(payload)
    try:
        config = msgspec.convert(payload["config"], NetConfig)
        c, h, w = (int(x) for x in payload["encoding_shape"])
        net = PolicyValueNet(config, (c, h, w), int(payload["num_actions"]), players)
        net.load_state_dict(state)
        int(payload["generation"])
    except (KeyError, ValueError, TypeError, RuntimeError, msgspec.ValidationError) as e:
        raise MalformedCheckpoint(f"checkpoint does not describe a network: {e}") from e
    return net.eval()


def _players(payload: dict[str, Any]) -> int:
    """The recorded player count; 2 for checkpoints written before it was recorded."""
    players = payload.get("players", 2)
    # bool is an int, and int("3") would accept text: neither is a count this code wrote.
    if type(players) is not int or not MIN_PLAYERS <= players <= MAX_PLAYERS:
        raise MalformedCheckpoint(f"checkpoint players is {players!r}")
    return players


__all__ = [
    "BadDigest",
    "Checkpoint",
    "CheckpointError",
    "MalformedCheckpoint",
    "NetConfig",
    "NonFiniteWeights",
    "PolicyValueNet",
    "WrongGame",
    "check_finite",
    "checkpoint_bytes",
    "inference_copy",
    "load_checkpoint",
    "save_checkpoint",
    "weights_sha256",
]
