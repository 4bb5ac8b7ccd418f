"""The soak's view of a fleet order as it runs: per node, when it was ordered, took the order,
answered and was healthy again (`OrderWatch`), read from the same registry keys and status the
`conclave fleet` command follows, so the timelines do not depend on its printed lines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TypeVar

from schemas import names
from schemas.control import FleetOrder, FleetOrderAction, FleetReport, NodeStatus
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.cli.fleetorders import read_value
from shared.soak.record import OrderTimeline
from shared.work.fleet import order_state

WATCH_EVERY_S = 0.5
T = TypeVar("T")


class Seen:
    """What the harness has seen of one node's order so far."""

    def __init__(self, pids_before: list[int]) -> None:
        self.pids_before = pids_before
        self.order: FleetOrder | None = None
        self.report: FleetReport | None = None
        self.status: NodeStatus | None = None
        self.healthy_at: float | None = None


class OrderWatch:
    """Follows `action` orders issued at or after `since` to `nodes` while `running`."""

    def __init__(
        self, bus: Bus, action: FleetOrderAction, since: float, pids: dict[str, list[int]]
    ) -> None:
        self.bus, self.action, self.since = bus, action, since
        self.seen = {node: Seen(before) for node, before in sorted(pids.items())}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[OrderWatch]:
        task = asyncio.create_task(self._loop(), name="order-watch")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.look()  # the last answers, written just before the command returned

    async def _loop(self) -> None:
        while True:
            await self.look()
            await asyncio.sleep(WATCH_EVERY_S)

    async def look(self) -> None:
        for node, seen in self.seen.items():
            try:
                await self._look_at(node, seen)
            except BusError:  # the hub away for a moment: look again next time
                continue

    async def _look_at(self, node: str, seen: Seen) -> None:
        if seen.healthy_at is not None:
            return
        order = await read_value(
            self.bus, names.REGISTRY_BUCKET, names.fleet_order_key(node), FleetOrder
        )
        if order is None or order.action != self.action or order.at < self.since - 1.0:
            return
        seen.order = order
        report = await read_value(
            self.bus, names.REGISTRY_BUCKET, names.fleet_report_key(node), FleetReport
        )
        status = await read_value(self.bus, names.NODES_BUCKET, names.node_key(node), NodeStatus)
        if report is not None and report.order == order.id:
            seen.report = report
        state, _ = order_state(order, report, status, time.time())
        if state == "healthy":
            seen.healthy_at, seen.status = time.time(), status

    def timelines(self) -> list[OrderTimeline]:
        return [_timeline(node, seen) for node, seen in self.seen.items()]


def _timeline(node: str, seen: Seen) -> OrderTimeline:
    report, status = seen.report, seen.status
    answered = report is not None and report.outcome != "received"
    return OrderTimeline(
        node=node,
        ordered_at=seen.order.at if seen.order else None,
        received_at=report.since if report else None,
        done_at=report.at if report is not None and answered else None,
        healthy_at=seen.healthy_at,
        outcome=report.outcome if report else "",
        version=status.version if status else "",
        pids_before=seen.pids_before,
        pids_after=sorted(s.pid for s in status.services) if status else [],
        services_started_at=status.started_at if status else None,
    )
