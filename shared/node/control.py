"""A launcher's fleet orders: `conclave fleet restart|upgrade` reach it over the bus.

The launcher watches its registry key `fleet.order.<node>` (written only by admin) with its own
connection (the node's identity, as its heartbeat's), carries out each order once and answers
under `fleet.report.<node>`: `received`, then `done` or `refused` with the reason. A restart
stops every service gracefully (the leader releases its lease, so leadership moves at once,
not after the lease expires) and starts them again; an upgrade first prepares the wheel beside
the running installation (shared.node.upgrade) and switches the services to it only if its
self-test passes. The last order answered is kept on disk, so a restarted launcher does not
carry it out again. Nothing here blocks: the services keep running while the bus is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import FleetOrder, FleetOutcome, FleetReport
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import BusError
from shared.bus.ports import Bus, SystemClock
from shared.runtime.service import VERSION
from shared.work.fleet import order_step

log = logging.getLogger("conclave.launcher")

RECONNECT_S = 2.0  # between attempts to reach the hub at start
Restart = Callable[[str | None], Awaitable[None]]  # restart the services (on this python)
Prepare = Callable[[Bus, FleetOrder], Awaitable[str]]  # an upgrade's new python, or raise


class ControlOptions(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    bus: BusConfig
    state_dir: str  # the last order answered, and upgrades (shared.node.upgrade)
    remote_upgrade: bool = True  # `--no-remote-upgrade`: refuse upgrades


class Control:
    """One launcher's side of fleet orders: `run` until stop."""

    def __init__(
        self, opts: ControlOptions, restart: Restart, prepare: Prepare, version: str = VERSION
    ) -> None:
        self.opts, self.restart, self.prepare = opts, restart, prepare
        self.version = version  # what the services run
        self.handled_path = Path(opts.state_dir) / "last-order"
        self.started_at = SystemClock().time()  # a restart ordered before is done already

    async def run(self, stop: asyncio.Event) -> None:
        """Take orders until `stop` (which also cuts short a connection attempt)."""
        session = asyncio.create_task(self._session(stop), name="fleet-orders")
        try:
            await stop.wait()
        finally:
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session

    async def _session(self, stop: asyncio.Event) -> None:
        bus = await self._connect()
        try:
            await self._follow(bus, stop)
        finally:
            await bus.close()

    async def _connect(self) -> Bus:
        while True:
            try:
                return await NatsBus.connect(self.opts.bus)
            except BusError as e:
                log.warning("fleet orders: hub not reached (%s); trying again", e)
                await asyncio.sleep(RECONNECT_S)

    async def _follow(self, bus: Bus, stop: asyncio.Event) -> None:
        """Watch the key; after a broken watch (the hub away), watch again."""
        key = names.fleet_order_key(self.opts.node_id)
        while not stop.is_set():
            try:
                async with bus.watch(names.REGISTRY_BUCKET, key) as watch:
                    async for entry in watch:
                        if entry is not None and entry.value is not None:
                            await self.take(bus, entry.value)
            except BusError as e:
                log.warning("fleet orders: watch broken (%s); watching again", e)
                await bus.clock.sleep(RECONNECT_S)

    async def take(self, bus: Bus, data: bytes) -> None:
        """Carry out one order found under the key (once), answering it."""
        try:
            order = decode(data, FleetOrder, subject=names.fleet_order_key(self.opts.node_id))
        except BadMessage as e:
            log.warning("fleet order ignored: %s", e)
            return
        if order.node != self.opts.node_id:
            log.warning("fleet order ignored: it names node %r", order.node)
            return
        step = order_step(order, self.handled(), self.started_at, self.opts.remote_upgrade)
        if step == "already done":
            return
        since = bus.clock.time()
        if step == "started since":
            await self.answer(bus, order, "done", since, "the node started after the order")
        elif step == "refuse upgrade":
            why = "this node was started with --no-remote-upgrade"
            await self.answer(bus, order, "refused", since, why)
        else:
            await self.answer(bus, order, "received", since)
            outcome, reason = await self.carry_out(bus, order)
            await self.answer(bus, order, outcome, since, reason)
        await asyncio.to_thread(self._remember, order.id)

    async def carry_out(self, bus: Bus, order: FleetOrder) -> tuple[FleetOutcome, str]:
        log.warning("fleet %s from %s: carrying it out", order.action, order.issued_by)
        python = None
        if order.action == "upgrade":
            if order.wheel is None:
                return "refused", "the upgrade order names no wheel"
            try:
                python = await self.prepare(bus, order)
            except Exception as e:  # whatever went wrong, the node keeps running what it ran
                log.error("fleet upgrade refused: %s", e)
                return "refused", str(e) or type(e).__name__
            self.version = order.wheel.version
        await self.restart(python)
        return "done", ""

    async def answer(
        self, bus: Bus, order: FleetOrder, outcome: FleetOutcome, since: float, reason: str = ""
    ) -> None:
        report = FleetReport(
            order=order.id,
            action=order.action,
            node=self.opts.node_id,
            outcome=outcome,
            version=self.version,
            since=since,
            at=bus.clock.time(),
            reason=reason[:4000],
        )
        key = names.fleet_report_key(order.node)
        try:
            await bus.write(names.REGISTRY_BUCKET, key, encode(report))
        except BusError as e:  # the order is still carried out; the issuer sees no answer
            log.warning("fleet report not written: %s", e)

    def handled(self) -> str:
        try:
            return self.handled_path.read_text().strip()
        except OSError:
            return ""

    def _remember(self, order_id: str) -> None:
        self.handled_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.handled_path.with_suffix(".tmp")
        tmp.write_text(order_id)
        os.replace(tmp, self.handled_path)
