"""NATS micro services: announcing a process, and finding every one that answers `$SRV.PING`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.service import Service, ServiceConfig

log = logging.getLogger("conclave.bus")

PING = "$SRV.PING"  # every NATS micro service answers it


@dataclass
class Registration:
    """A process announced as a micro service; `stop` withdraws it."""

    _service: Service

    async def stop(self) -> None:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._service.stop()


async def register(
    nc: Client, name: str, version: str, description: str, metadata: dict[str, str]
) -> Registration | None:
    """Announce a micro service (so `nats micro ls` and `$SRV.PING` see it); None, logged, when
    the server refuses it."""
    config = ServiceConfig(name=name, version=version, description=description, metadata=metadata)
    try:
        return Registration(await add_service(nc, config))
    except (nats.errors.Error, TimeoutError) as e:
        log.warning("not registered as a micro service: %r", e)
        return None


async def ping_metadata(nc: Client, wait_s: float) -> list[dict[str, Any]]:
    """The metadata of every micro service answering `$SRV.PING` within `wait_s`; answers
    that do not decode (anyone may answer) are skipped."""
    found: list[dict[str, Any]] = []

    async def collect(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, RecursionError):
            reply = msgspec.json.decode(msg.data, type=dict[str, Any])
            meta = reply.get("metadata") or {}
            if isinstance(meta, dict):
                found.append(meta)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(PING, b"", reply=inbox)
        await asyncio.sleep(wait_s)
    finally:
        await sub.unsubscribe()
    return found
