"""`conclave fleet restart|upgrade`: one-off orders to nodes' launchers, one node at a time or all.

Each order is audited first (`events.fleet.<action>.<node>`), then written under the node's key
`fleet.order.<node>` (admin only, like drain), which its launcher watches (shared.node.control).
The command then follows each node until it is healthy again: it answered `done`, and its
status comes from services started after it took the order, all alive (for an upgrade, at the
wheel's version). `--rolling` orders the next node only once the previous one is healthy, the
leader's node last, and stops at the first node that refuses or does not come back in time.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import TypeVar

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import FleetOrder, FleetOrderAction, FleetReport, Lease, NodeStatus, WheelRef
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.cli.fleet import STALE_AFTER_S, NotIssued
from shared.work.fleet import OrderState, order_state

FOLLOW_EVERY_S = 0.5
T = TypeVar("T")


class OrderRequest(msgspec.Struct, frozen=True, kw_only=True):
    action: FleetOrderAction
    nodes: list[str] = []  # by name; none: every live node (with `role`, if given)
    role: str = ""
    rolling: bool = False
    wheel: str = ""  # upgrade: the wheel file
    reason: str = ""
    issued_by: str = ""
    timeout_s: float = 300.0  # for each node to be healthy again


class NoTargets(ValueError):
    """The order names no live node, or a node that is not live."""


def targets(
    live: dict[str, NodeStatus], nodes: list[str], role: str, leader: str | None
) -> list[str]:
    """The nodes to order, in order (pure): those named (each must be live), else every live
    node with `role` (any role when none); the leader's node last, so leadership moves once."""
    if nodes:
        gone = [n for n in nodes if n not in live]
        if gone:
            raise NoTargets(f"not live (see `conclave fleet ls`): {', '.join(gone)}")
        chosen = list(dict.fromkeys(nodes))
    else:
        chosen = sorted(n for n, s in live.items() if not role or role in s.roles)
        if not chosen:
            raise NoTargets(f"no live node has role {role}" if role else "no live node")
    return sorted(chosen, key=lambda n: n == leader)


async def live_statuses(bus: Bus) -> dict[str, NodeStatus]:
    now = bus.clock.time()
    live: dict[str, NodeStatus] = {}
    for key, entry in (await bus.snapshot(names.NODES_BUCKET)).items():
        try:
            status = decode(entry.value or b"", NodeStatus, subject=key)
        except BadMessage:
            continue
        if now - status.sent_at <= STALE_AFTER_S:
            live[key] = status
    return live


async def leader_node(bus: Bus) -> str | None:
    entry = await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)
    if entry.value is None:
        return None
    try:
        return decode(entry.value, Lease, subject=names.LEADER_KEY).node
    except BadMessage:
        return None


def new_order(
    request: OrderRequest, node: str, at: float, wheel: WheelRef | None = None
) -> FleetOrder:
    return FleetOrder(
        id=f"{int(at)}-{uuid.uuid4().hex[:12]}",
        action=request.action,
        node=node,
        issued_by=request.issued_by,
        at=at,
        wheel=wheel,
        reason=request.reason,
    )


async def issue_order(bus: Bus, order: FleetOrder) -> None:
    """Audit, then order; NotIssued when the server refuses (not admin) or does not answer."""
    data = encode(order)
    try:
        await bus.publish_durable(names.fleet_event_subject(order.action, order.node), data)
        await bus.write(names.REGISTRY_BUCKET, names.fleet_order_key(order.node), data)
    except BusError as e:
        raise NotIssued(
            f"fleet {order.action} {order.node} not recorded: only admin may issue fleet "
            f"commands (--creds admin.nk), or the hub did not answer ({e})"
        ) from e


async def progress(bus: Bus, order: FleetOrder) -> tuple[OrderState, str]:
    """How far `order` has got, from its node's report and status."""
    report_key = names.fleet_report_key(order.node)
    report = await read_value(bus, names.REGISTRY_BUCKET, report_key, FleetReport)
    status = await read_value(bus, names.NODES_BUCKET, names.node_key(order.node), NodeStatus)
    return order_state(order, report, status, bus.clock.time())


async def read_value(bus: Bus, bucket: str, key: str, kind: type[T]) -> T | None:
    """The value under `key` as `kind`, None when there is none or it does not decode."""
    entry = await bus.last(bucket, key)
    if entry.value is None:
        return None
    try:
        return decode(entry.value, kind, subject=key)
    except BadMessage:
        return None


async def follow(bus: Bus, order: FleetOrder, timeout_s: float) -> tuple[OrderState, str]:
    """Wait until `order`'s node is healthy or refused it (or `timeout_s` passes), saying
    each step once."""
    deadline = bus.clock.monotonic() + timeout_s
    said = ""
    while True:
        state, line = await progress(bus, order)
        if line != said:
            print(f"  {order.node}: {line}", flush=True)
            said = line
        if state != "waiting":
            return state, line
        if bus.clock.monotonic() >= deadline:
            return "waiting", f"not healthy within {timeout_s:g}s ({line})"
        await bus.clock.sleep(FOLLOW_EVERY_S)


async def order_main(bus: Bus, request: OrderRequest) -> int:
    wheel = await _upload(bus, request.wheel) if request.action == "upgrade" else None
    chosen = targets(await live_statuses(bus), request.nodes, request.role, await leader_node(bus))
    how = "one at a time" if request.rolling else "all at once"
    print(f"fleet {request.action}: {', '.join(chosen)} ({how})", flush=True)
    orders = []
    failed: list[str] = []
    for node in chosen:
        order = new_order(request, node, bus.clock.time(), wheel)
        await issue_order(bus, order)
        orders.append(order)
        if request.rolling:
            state, line = await follow(bus, order, request.timeout_s)
            if state != "healthy":
                print(f"fleet {request.action}: stopped at {node}: {line}", file=sys.stderr)
                return 1
    if not request.rolling:
        for order in orders:
            state, line = await follow(bus, order, request.timeout_s)
            if state != "healthy":
                failed.append(f"{order.node}: {line}")
    for line in failed:
        print(f"fleet {request.action}: {line}", file=sys.stderr)
    return 1 if failed else 0


async def run_orders(cfg: BusConfig, request: OrderRequest) -> int:
    bus = await NatsBus.connect(cfg)
    try:
        return await order_main(bus, request)
    finally:
        await bus.close()


async def _upload(bus: Bus, wheel: str) -> WheelRef:
    from shared.node.upgrade import upload_wheel

    ref = await upload_wheel(bus, Path(wheel))
    print(f"wheel {ref.name} ({ref.version}, sha256 {ref.digest[:12]}) stored", flush=True)
    return ref
