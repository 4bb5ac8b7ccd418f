"""Gradient steps on replay batches: policy cross-entropy plus value mean squared error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shared.games.base import Game
from shared.net import PolicyValueNet
from shared.netconfig import NetConfig, TrainSettings
from shared.replay import ReplayWindow, augment


@dataclass(frozen=True)
class TrainReport:
    steps: int
    positions: int
    policy_loss: float
    value_loss: float


def new_net(game: Game[Any], config: NetConfig) -> PolicyValueNet:
    return PolicyValueNet(config, game.encoding_shape, game.num_actions)


def train(
    net: PolicyValueNet,
    game: Game[Any],
    window: ReplayWindow,
    steps: int,
    settings: TrainSettings,
    rng: np.random.Generator,
) -> TrainReport:
    """Run up to `steps` Adam steps on augmented batches; stops early when the window is used up."""
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    net.train()
    policy_losses, value_losses, seen, done = [], [], 0, 0
    for _ in range(steps):
        batch = window.sample(settings.batch_size, rng)
        if batch is None:
            break
        batch = augment(game, batch, rng)
        logits, values = net(torch.from_numpy(batch.encodings))
        targets = torch.from_numpy(batch.policies)
        policy_loss = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        value_loss = F.mse_loss(values.view(-1), torch.from_numpy(batch.values))
        loss = policy_loss + settings.value_weight * value_loss
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        policy_losses.append(policy_loss.item())
        value_losses.append(value_loss.item())
        seen += len(batch.values)
        done += 1
    net.eval()
    return TrainReport(done, seen, _mean(policy_losses), _mean(value_losses))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


__all__ = ["TrainReport", "TrainSettings", "new_net", "train"]
