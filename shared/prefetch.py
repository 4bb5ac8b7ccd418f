"""Fetch every newly promoted model into this node's cache as soon as it is announced, so a
worker switches to it without a stall (and the cache holds it once, verified)."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.jobs import ModelEvent
from shared.bus import Bus, BusError
from shared.models import ModelStore

log = logging.getLogger("conclave.prefetch")


async def prefetch_promoted(bus: Bus, store: ModelStore, stop: asyncio.Event) -> None:
    wanted: asyncio.Queue[str] = asyncio.Queue()

    async def on_event(msg: Msg) -> None:
        try:
            wanted.put_nowait(decode(msg.data, ModelEvent, subject=msg.subject).sha256)
        except BadMessage as e:
            log.warning("%s", e)

    sub = await bus.subscribe(names.model_event_subject("promoted"), on_event)
    try:
        while not stop.is_set():
            digest = await wanted.get()
            try:
                await store.path(digest)
            except BusError as e:
                log.warning("prefetch of %s failed: %s", digest[:12], e)
    finally:
        await sub.unsubscribe()
