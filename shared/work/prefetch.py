"""Fetch every newly promoted model into this node's cache as soon as it is announced, so a
worker switches to it without a stall (and the cache holds it once, verified)."""

from __future__ import annotations

import asyncio
import logging

from schemas import names
from schemas.codec import decode
from schemas.jobs import ModelEvent
from shared.archive.layout import check_sha256
from shared.bus.errors import BusError
from shared.bus.message import Message
from shared.bus.ports import Bus
from shared.work.models import ModelStore

log = logging.getLogger("conclave.prefetch")


async def prefetch_promoted(bus: Bus, store: ModelStore, stop: asyncio.Event) -> None:
    wanted: asyncio.Queue[str] = asyncio.Queue()

    async def on_event(msg: Message) -> None:
        try:
            event = decode(msg.data, ModelEvent, subject=msg.subject)
            wanted.put_nowait(check_sha256(event.sha256))  # it names a cache file
        except Exception as e:  # BadMessage, a malformed digest: nothing to fetch
            log.warning("promotion event skipped: %r", e)

    sub = await bus.subscribe(names.model_event_subject("promoted"), on_event)
    try:
        while not stop.is_set():
            digest = await wanted.get()
            try:
                await store.path(digest)
            except (BusError, OSError) as e:
                log.warning("prefetch of %s failed: %s", digest[:12], e)
    finally:
        await sub.unsubscribe()
