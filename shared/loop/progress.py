"""Reading the trainers' progress reports (`events.train.progress.<game>` in the EVENTS stream)."""

from __future__ import annotations

import logging

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.jobs import TrainProgress
from shared.bus.ports import Bus

log = logging.getLogger("conclave.progress")


async def last_train_progress(bus: Bus, game: str) -> TrainProgress | None:
    """The newest progress report of `game`'s trainings; None if none (or it is unreadable)."""
    subject = names.train_progress_subject(game)
    raw = await bus.last_on(names.EVENTS_STREAM, subject)
    return None if raw is None else _decoded(raw.data, subject)


async def train_history(bus: Bus, game: str) -> list[TrainProgress]:
    """Every stored progress report of `game`'s trainings, oldest first; unreadable ones skipped."""
    subject = names.train_progress_subject(game)
    reports = [
        _decoded(msg.data, subject) for msg in await bus.read_all(names.EVENTS_STREAM, subject)
    ]
    return [report for report in reports if report is not None]


def _decoded(data: bytes, subject: str) -> TrainProgress | None:
    try:
        return decode(data, TrainProgress, subject=subject)
    except BadMessage as e:
        log.warning("%s", e)
        return None
