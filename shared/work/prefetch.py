"""Fetch every newly promoted model into this node's cache soon after it is announced, so a
worker switches to it without a stall (and the cache holds it once, verified).

Each fetcher waits its own delay first, hashed from who it is and the model over `window_s`, so
a fleet of hundreds does not fetch from the model store at once (katago-server staggers its
clients the same way). A job that needs the model sooner fetches it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
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

ADOPT_WINDOW_S = 30.0


def stagger_delay(who: str, digest: str, window_s: float) -> float:
    """`who`'s wait before fetching `digest`: uniform over [0, window_s) across fetchers, the
    same on every restart (no clock or randomness in it)."""
    if window_s <= 0:
        return 0.0
    h = hashlib.sha256(f"{who}\n{digest}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 * window_s


async def prefetch_promoted(
    bus: Bus, store: ModelStore, stop: asyncio.Event, who: str = "", window_s: float = 0.0
) -> None:
    """Until `stop`: each promoted model is fetched `stagger_delay(who, digest, window_s)`
    after its announcement."""
    wanted: asyncio.Queue[str] = asyncio.Queue()

    async def on_event(msg: Message) -> None:
        try:
            event = decode(msg.data, ModelEvent, subject=msg.subject)
            wanted.put_nowait(check_sha256(event.sha256))  # it names a cache file
        except Exception as e:  # BadMessage, a malformed digest: nothing to fetch
            log.warning("promotion event skipped: %r", e)

    pending: set[str] = set()  # an announcement repeated while its fetch waits is one fetch
    sub = await bus.subscribe(names.model_event_subject("promoted"), on_event)
    try:
        async with asyncio.TaskGroup() as fetches:
            while not stop.is_set():
                digest = await wanted.get()
                if digest not in pending:
                    pending.add(digest)
                    delay = stagger_delay(who, digest, window_s)
                    fetch = _fetch_after(bus, store, digest, delay, pending)
                    fetches.create_task(fetch, name="prefetch")
    finally:
        await sub.unsubscribe()


async def _fetch_after(
    bus: Bus, store: ModelStore, digest: str, delay_s: float, pending: set[str]
) -> None:
    await bus.clock.sleep(delay_s)
    try:
        await store.path(digest)
    except (BusError, OSError) as e:
        log.warning("prefetch of %s failed: %s", digest[:12], e)
    except Exception as e:  # a blob that fails verification: the job that needs it will say
        log.warning("prefetch of %s refused: %r", digest[:12], e)
    finally:
        pending.discard(digest)
