"""Durable work consumers as Conclave describes them, whatever bus carries them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkConsumer:
    """A durable explicit-ack consumer's settings."""

    durable: str
    subjects: str
    ack_wait_s: float | None = None
    max_deliver: int | None = None
    max_ack_pending: int | None = None


@dataclass(frozen=True)
class ConsumerCounts:
    """A consumer's progress: deliveries made, messages waiting, deliveries not yet acked."""

    delivered: int
    pending: int
    ack_pending: int
