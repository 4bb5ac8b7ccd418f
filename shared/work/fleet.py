"""Fleet control, the node's side: its standing fleet command (registry `fleet.node.<node>`,
written only by admin with `conclave fleet drain|resume`) and what it means for taking work.

A draining node's workers finish the job they hold and take no new one; a job fetched just as
the drain came is handed back at once, with the reason, for another worker. The command stands
in the registry, so a node that was away finds it when it comes back, and `resume` lifts it.
Decisions are pure (`is_draining`, `may_pull`); `Standing` is the one read.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import FleetCommand, FleetOrder, FleetReport, NodeStatus
from shared.bus.errors import BusError
from shared.bus.ports import KV, Clock, SystemClock
from shared.runtime.once import Warn, WarnOnce

log = logging.getLogger("conclave.fleet")


def is_draining(command: FleetCommand | None) -> bool:
    return command is not None and command.action == "drain"


def drain_text(command: FleetCommand) -> str:
    """Who drained the node and when, for logs and the reason a job is handed back with."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(command.at))
    why = f": {command.reason}" if command.reason else ""
    return f"node {command.node} is draining (by {command.issued_by} at {when}{why})"


def may_pull(refusal: str | None, command: FleetCommand | None) -> str | None:
    """Why a worker takes no job now, None if it may: its protocol is refused (`refusal`,
    shared.bus.compat) or its node is draining (`command`, its standing fleet command)."""
    if refusal is not None:
        return refusal
    if command is not None and is_draining(command):
        return drain_text(command)
    return None


async def read_standing(bus: KV, node: str, warn: Warn) -> FleetCommand | None:
    """`node`'s standing fleet command, None if it has none. One that does not decode (a newer
    build's action, say) or names another node is warned about and counts as none: a broken
    key must not stop a node's work."""
    key = names.fleet_key(node)
    entry = await bus.last(names.REGISTRY_BUCKET, key)
    if entry.value is None:
        return None
    try:
        command = decode(entry.value, FleetCommand, subject=key)
    except BadMessage as e:
        warn(f"fleet command ignored: {e}")
        return None
    if command.node != node:
        warn(f"fleet command ignored: {key} names node {command.node!r}")
        return None
    return command


class Standing:
    """A node's standing fleet command as last read (`read`, one KV get), and how long that
    read took: the round trip to the hub's stream leader, through any leaf link. While the bus
    is away the last command stands (a drain outlives a partition) and the round trip is None."""

    def __init__(self, bus: KV, node: str, clock: Clock | None = None) -> None:
        self.bus, self.node = bus, node
        self.clock = clock or SystemClock()
        self.command: FleetCommand | None = None
        self.round_trip_s: float | None = None
        self.warn = WarnOnce(log)

    async def read(self) -> FleetCommand | None:
        """The command now (no read without a node: a worker that names none never drains)."""
        if not self.node:
            return None
        started = self.clock.monotonic()
        try:
            command = await read_standing(self.bus, self.node, self.warn)
        except BusError as e:
            if self.round_trip_s is not None:
                log.warning("fleet command not read: %s", e)
            self.round_trip_s = None
            return self.command
        self.round_trip_s = self.clock.monotonic() - started
        if is_draining(command) != is_draining(self.command):
            if command is not None and is_draining(command):
                log.warning("%s: taking no new jobs", drain_text(command))
            else:
                log.warning("node %s resumed: taking jobs again", self.node)
        self.command = command
        return command

    @property
    def draining(self) -> bool:
        return is_draining(self.command)


OrderStep = Literal["carry out", "already done", "started since", "refuse upgrade"]


def order_step(
    order: FleetOrder, handled: str, started_at: float, remote_upgrade: bool
) -> OrderStep:
    """What a launcher does with the order it finds under its key (pure): each order id once
    (`handled`, the last it answered, kept across its restarts); a restart issued before the
    launcher started is done already (its services are newer); upgrades only if allowed."""
    if order.id == handled:
        return "already done"
    if order.action == "restart" and order.at < started_at:
        return "started since"
    if order.action == "upgrade" and not remote_upgrade:
        return "refuse upgrade"
    return "carry out"


OrderState = Literal["waiting", "healthy", "refused"]


def order_state(
    order: FleetOrder, report: FleetReport | None, status: NodeStatus | None, now: float
) -> tuple[OrderState, str]:
    """How far `order` has got on its node (pure), with a line for people: `healthy` once the
    node answered `done` and its status is fresh, written by services started after it took the
    order, every one alive (and, for an upgrade, at the wheel's version); `refused` when it
    answered so (or failed). The status's times are the node's own clock, like the report's."""
    if report is None or report.order != order.id:
        return "waiting", "the order is not yet taken"
    if report.outcome in ("refused", "failed"):
        return "refused", f"{report.outcome}: {report.reason}"
    if report.outcome != "done":
        return "waiting", "taken, carrying it out"
    if status is None or status.sent_at < report.at or status.started_at < report.since:
        return "waiting", "done; waiting for the new services' status"
    down = [s.name for s in status.services if not s.alive]
    if down:
        return "waiting", f"done; waiting for {', '.join(down)}"
    if order.wheel is not None and status.version != order.wheel.version:
        return "refused", f"runs {status.version}, not {order.wheel.version}, after the upgrade"
    return "healthy", f"healthy at {status.version}"
