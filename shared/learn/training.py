"""Gradient steps on replay batches: policy cross-entropy plus value mean squared error.

With P > 2 players the value is a vector (one tanh per player, in turn order from the mover) and
its loss is the mean squared error over all its entries: the mean over a vector's entries keeps
the loss on the two-player scale (a two-player target v is the vector [v, -v], whose mean squared
error is v's), so `value_weight` balances policy and value alike for any player count, where a
sum over the entries would weigh the value P times as much.

A step whose loss or gradients are not finite is skipped: no optimizer step, gradients zeroed,
batch-norm statistics put back, so one poisoned batch cannot turn the net into NaNs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shared.learn.device import CPU, Compute
from shared.learn.games.base import Game, num_players
from shared.learn.net import PolicyValueNet
from shared.learn.netconfig import NetConfig, TrainSettings, lr_factor
from shared.learn.replay import Batch, ReplayWindow, augment

log = logging.getLogger("conclave.training")


class NonFiniteTraining(ValueError):
    """A training none of whose steps had a finite loss and finite gradients."""


@dataclass(frozen=True, kw_only=True)
class TrainReport:
    steps: int  # steps taken
    positions: int
    policy_loss: float
    value_loss: float
    skipped: int = 0  # steps not taken: their loss or gradients were not finite
    first_fault: str = ""  # what was not finite in the first skipped step


@dataclass(frozen=True, kw_only=True)
class StepsDone:
    """Progress handed to `train`'s callback: the steps since its previous call."""

    step: int  # steps taken so far
    positions: int  # positions trained on since the previous call
    policy_loss: float  # means over the steps since the previous call
    value_loss: float
    learning_rate: float = 0.0  # of the last step
    skipped: int = 0  # steps skipped so far (non-finite loss or gradients)


ProgressCallback = Callable[[StepsDone], None]


def new_net(game: Game[Any], config: NetConfig) -> PolicyValueNet:
    """A freshly initialised network for `game` (a value per player when it has more than 2)."""
    players = num_players(game)
    return PolicyValueNet(config, game.encoding_shape, game.num_actions, players)


def train(
    net: PolicyValueNet,
    game: Game[Any],
    window: ReplayWindow,
    steps: int,
    settings: TrainSettings,
    rng: np.random.Generator,
    on_progress: ProgressCallback | None = None,
    progress_every: int = 1,
    compute: Compute = CPU,
) -> TrainReport:
    """Run up to `steps` AdamW steps on augmented batches; stops early when the window is used
    up. A step whose loss or gradients are not finite is skipped and counted (`skipped`).
    `net` is moved to `compute`'s device and trained at its precision (autocast, and loss
    scaling for fp16); it stays there.

    `on_progress` (called in this thread) hears every `progress_every` taken steps and after
    the last. Raise ValueError if `net` was built for another player count than `game`'s.
    """
    players = num_players(game)
    if net.players != players:
        raise ValueError(f"the net is for {net.players} players, {game.name} has {players}")
    net.to(compute.device)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    step = _Stepper(net, optimizer, compute, settings.value_weight)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps, settings)
    )
    net.train()
    policy_losses: list[float] = []
    value_losses: list[float] = []
    seen, skipped, first_fault = 0, 0, ""
    progress = _Progress(on_progress, progress_every)
    for _ in range(steps):
        batch = window.sample(settings.batch_size, rng)
        if batch is None:
            break
        rate = float(optimizer.param_groups[0]["lr"])
        losses = step(augment(game, batch, rng))
        if isinstance(losses, str):
            if not skipped:
                first_fault = losses
                log.warning("training step skipped: %s", losses)
            skipped += 1
            progress.skip()
            continue
        schedule.step()
        policy_losses.append(losses[0])
        value_losses.append(losses[1])
        seen += len(batch.values)
        progress.add(len(batch.values), losses[0], losses[1], rate)
    progress.flush()
    net.eval()
    if skipped:
        log.warning("%d training steps skipped: loss or gradients not finite", skipped)
    return TrainReport(
        steps=len(policy_losses),
        positions=seen,
        policy_loss=_mean(policy_losses),
        value_loss=_mean(value_losses),
        skipped=skipped,
        first_fault=first_fault,
    )


class _Stepper:
    """One optimizer step at a time on `compute`; a step returns its (policy, value) losses, or
    what was not finite (no step taken, gradients zeroed, batch-norm statistics restored)."""

    def __init__(
        self,
        net: PolicyValueNet,
        optimizer: torch.optim.Optimizer,
        compute: Compute,
        value_weight: float,
    ) -> None:
        self.net, self.optimizer, self.compute = net, optimizer, compute
        self.value_weight = value_weight
        self.scaler = compute.scaler()

    def __call__(self, batch: Batch) -> tuple[float, float] | str:
        net, optimizer, device = self.net, self.optimizer, self.compute.device
        saved = [b.detach().clone() for b in net.buffers()]
        with self.compute.autocast():
            logits, values = net(torch.from_numpy(batch.encodings).to(device))
        targets = torch.from_numpy(batch.policies).to(device)
        policy_loss = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
        value_targets = torch.from_numpy(batch.values).to(device)
        # (B,) for two players (as ever), (B, P) beyond: the mean over every entry (module doc).
        value_loss = F.mse_loss(values.float().reshape(value_targets.shape), value_targets)
        optimizer.zero_grad()
        fault = _loss_fault(policy_loss.item(), value_loss.item())
        if fault is None:
            loss = policy_loss + self.value_weight * value_loss
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            self.scaler.unscale_(optimizer)
            fault = _gradient_fault(net)
        if fault is not None:
            optimizer.zero_grad()
            if self.scaler.is_enabled():
                self.scaler.update()  # an fp16 overflow: the next step scales the loss less
            with torch.no_grad():
                for buffer, old in zip(net.buffers(), saved, strict=True):
                    buffer.copy_(old)
            return fault
        self.scaler.step(optimizer)
        self.scaler.update()
        return policy_loss.item(), value_loss.item()


def _loss_fault(policy_loss: float, value_loss: float) -> str | None:
    if math.isfinite(policy_loss) and math.isfinite(value_loss):
        return None
    return f"policy loss {policy_loss}, value loss {value_loss}"


def _gradient_fault(net: PolicyValueNet) -> str | None:
    for name, parameter in net.named_parameters():
        grad = parameter.grad
        if grad is not None and not bool(torch.isfinite(grad).all()):
            return f"gradient of {name} not finite"
    return None


class _Progress:
    """Hands `on_progress` the steps since its previous call, every `every` steps."""

    def __init__(self, on_progress: ProgressCallback | None, every: int) -> None:
        self.on_progress, self.every = on_progress, max(every, 1)
        self.step, self.positions, self.skipped = 0, 0, 0
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

    def skip(self) -> None:
        self.skipped += 1

    def flush(self) -> None:
        if self.on_progress is None or not self.policy_losses:
            return
        policy, value = _mean(self.policy_losses), _mean(self.value_losses)
        self.on_progress(
            StepsDone(
                step=self.step,
                positions=self.positions,
                policy_loss=policy,
                value_loss=value,
                learning_rate=self.learning_rate,
                skipped=self.skipped,
            )
        )
        self.positions = 0
        self.policy_losses.clear()
        self.value_losses.clear()


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


__all__ = [
    "NonFiniteTraining",
    "ProgressCallback",
    "StepsDone",
    "TrainReport",
    "TrainSettings",
    "new_net",
    "train",
]
