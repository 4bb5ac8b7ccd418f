"""Gradient steps on replay batches: policy cross-entropy plus value mean squared error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from shared.games.base import Game
from shared.net import PolicyValueNet
from shared.netconfig import NetConfig, TrainSettings, lr_factor
from shared.replay import ReplayWindow, augment


@dataclass(frozen=True)
class TrainReport:
    steps: int
    positions: int
    policy_loss: float
    value_loss: float


class StepsDone(NamedTuple):
    """Progress handed to `train`'s callback: the steps since its previous call."""

    step: int  # steps taken so far
    positions: int  # positions trained on since the previous call
    policy_loss: float  # means over the steps since the previous call
    value_loss: float
    learning_rate: float = 0.0  # of the last step


ProgressCallback = Callable[[StepsDone], None]


def new_net(game: Game[Any], config: NetConfig) -> PolicyValueNet:
    return PolicyValueNet(config, game.encoding_shape, game.num_actions)


def train(
    net: PolicyValueNet,
    game: Game[Any],
    window: ReplayWindow,
    steps: int,
    settings: TrainSettings,
    rng: np.random.Generator,
    on_progress: ProgressCallback | None = None,
    progress_every: int = 1,
) -> TrainReport:
    """Run up to `steps` Adam steps on augmented batches; stops early when the window is used up.

    `on_progress` (called in this thread) hears every `progress_every` steps and after the last.
    """
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps, settings)
    )
    net.train()
    policy_losses: list[float] = []
    value_losses: list[float] = []
    seen, done = 0, 0
    progress = _Progress(on_progress, progress_every)
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
        rate = float(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
        policy_losses.append(policy_loss.item())
        value_losses.append(value_loss.item())
        seen += len(batch.values)
        done += 1
        progress.add(len(batch.values), policy_losses[-1], value_losses[-1], rate)
    progress.flush()
    net.eval()
    return TrainReport(done, seen, _mean(policy_losses), _mean(value_losses))


class _Progress:
    """Hands `on_progress` the steps since its previous call, every `every` steps."""

    def __init__(self, on_progress: ProgressCallback | None, every: int) -> None:
        self.on_progress, self.every = on_progress, max(every, 1)
        self.step, self.positions = 0, 0
        self.learning_rate = 0.0
        self.policy_losses: list[float] = []
        self.value_losses: list[float] = []

    def add(
        self, positions: int, policy_loss: float, value_loss: float, learning_rate: float
    ) -> None:
        self.step += 1
        self.learning_rate = learning_rate
        self.positions += positions
        self.policy_losses.append(policy_loss)
        self.value_losses.append(value_loss)
        if self.step % self.every == 0:
            self.flush()

    def flush(self) -> None:
        if self.on_progress is None or not self.policy_losses:
            return
        policy, value = _mean(self.policy_losses), _mean(self.value_losses)
        self.on_progress(StepsDone(self.step, self.positions, policy, value, self.learning_rate))
        self.positions = 0
        self.policy_losses.clear()
        self.value_losses.clear()


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


__all__ = ["ProgressCallback", "StepsDone", "TrainReport", "TrainSettings", "new_net", "train"]
