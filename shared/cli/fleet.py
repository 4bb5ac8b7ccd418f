"""`conclave fleet`: the fleet over the bus.

`ls` lists every node: roles, version, protocol, devices, uptime, the round trip from the node to
the hub (its heartbeat's last read there: the reachability view) and its state. `drain NODE`
and `resume NODE` record the command's audit event (`events.fleet.<action>.<node>`, in EVENTS)
and then make it the node's standing state (registry `fleet.node.<node>`), which the node's
heartbeat and workers read (shared.work.fleet): a node that is away finds it when it comes back.
Only admin may issue them (shared.auth.permissions): the server refuses both writes to anyone
else, so nothing takes effect unaudited.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import FleetAction, FleetCommand, FleetReport, NodeStatus
from shared.bus.client import BusConfig, NatsBus
from shared.bus.compat import accepted_range
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.cli.status import NodeInfo, node_info, running_jobs, unreadable
from shared.work.fleet import drain_text, is_draining

CONFIRM_EVERY_S = 0.25
STALE_AFTER_S = 5.0  # a status older than this is from a node that is gone (the TTL)

Noded = TypeVar("Noded", FleetCommand, FleetReport)
FleetVerb = Literal["ls", "drain", "resume", "restart", "upgrade"]


class NotIssued(BusError):
    """A fleet command the server did not take: not admin, or no answer."""


class FleetRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One `conclave fleet` command, from the command line."""

    verb: FleetVerb
    node: str = ""
    reason: str = ""
    issued_by: str = ""
    as_json: bool = False
    wait_s: float = 10.0  # drain/resume: how long to wait for the node to confirm


class FleetNode(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `conclave fleet ls`: a node with a status, a standing command, or both."""

    node: str
    state: str  # working, idle, draining, drained, no work, offline
    roles: list[str] = []
    version: str = ""
    protocol: int | None = None
    hostname: str = ""
    devices: list[str] = []
    uptime_s: float | None = None
    rtt_ms: float | None = None  # the node's round trip to the hub, as its heartbeat measured
    last_seen_s: float | None = None
    jobs: int = 0  # jobs its workers are on now
    unsupported: str = ""  # why it gets no work (below the hard minimum)
    upgrade: str = ""  # below the announced next minimum: works, should upgrade
    command: FleetCommand | None = None  # its standing fleet command
    order: FleetReport | None = None  # its answer to its last order (restart, upgrade)


def node_state(info: NodeInfo | None, command: FleetCommand | None) -> str:
    """What a node is doing, for people: gone, refused, draining (or done draining), or at work."""
    if info is None or not info.alive:
        return "offline, draining" if is_draining(command) else "offline"
    if info.unsupported:
        return "no work"
    jobs = running_jobs(info)
    if info.draining:
        return f"draining ({jobs} jobs left)" if jobs else "drained"
    if is_draining(command):
        return "drain not yet seen"  # the node has not read it yet, or its build predates it
    return f"working ({jobs} jobs)" if jobs else "idle"


def fleet_node(
    node: str, status: NodeStatus | None, info: NodeInfo | None, command: FleetCommand | None
) -> FleetNode:
    """A row from what the bus holds about `node` (pure)."""
    state = node_state(info, command)
    if status is None or info is None:
        return FleetNode(node=node, state=state, command=command)
    return FleetNode(
        node=node,
        state=state,
        roles=status.roles,
        version=status.version,
        protocol=status.protocol,
        hostname=status.hostname,
        devices=info.compute.devices if info.compute else [],
        uptime_s=round(max(0.0, status.sent_at - status.started_at), 1),
        rtt_ms=status.rtt_ms if info.alive else None,
        last_seen_s=info.last_seen_s,
        jobs=running_jobs(info),
        unsupported=info.unsupported,
        upgrade=info.upgrade,
        command=command,
    )


async def statuses(bus: Bus, problems: list[str]) -> dict[str, NodeStatus]:
    found: dict[str, NodeStatus] = {}
    for key, entry in (await bus.snapshot(names.NODES_BUCKET)).items():
        try:
            found[key] = decode(entry.value or b"", NodeStatus, subject=key)
        except Exception as e:  # a node writes its own key: whatever it holds, show the rest
            problems.append(f"node {key}: unreadable: {unreadable(e)}")
    return found


async def standing_commands(bus: Bus, problems: list[str]) -> dict[str, FleetCommand]:
    """Every node's standing fleet command, by node."""
    return await by_node(bus, names.fleet_key, FleetCommand, problems)


async def last_reports(bus: Bus, problems: list[str]) -> dict[str, FleetReport]:
    """Every node's answer to its last fleet order (restart, upgrade), by node."""
    return await by_node(bus, names.fleet_report_key, FleetReport, problems)


async def by_node(
    bus: Bus, key: Callable[[str], str], kind: type[Noded], problems: list[str]
) -> dict[str, Noded]:
    """The newest value under each node's registry key `key(node)`, one naming its own node."""
    bucket = names.REGISTRY_BUCKET
    found: dict[str, Noded] = {}
    for msg in await bus.read_all(
        names.kv_stream(bucket), names.kv_subject(bucket, key(names.ANY))
    ):
        if msg.headers.get("KV-Operation") in ("DEL", "PURGE"):
            continue
        try:
            value = decode(msg.data, kind, subject=msg.subject)
        except BadMessage as e:
            problems.append(f"{msg.subject}: unreadable: {unreadable(e)}")
            continue
        if not under_its_key(msg.subject, key, value.node):
            problems.append(f"{msg.subject}: names node {value.node!r}: ignored")
            continue
        found[value.node] = value  # oldest first: the last one stands
    return found


def under_its_key(subject: str, key: Callable[[str], str], node: str) -> bool:
    """Whether a value read from `subject` is filed under the node it names."""
    try:
        return subject == names.kv_subject(names.REGISTRY_BUCKET, key(node))
    except names.BadName:
        return False


async def gather(bus: Bus, problems: list[str]) -> list[FleetNode]:
    """Every node with a status or a standing command, by id."""
    now = bus.clock.time()
    found = await statuses(bus, problems)
    commands = await standing_commands(bus, problems)
    reports = await last_reports(bus, problems)
    accepted = await accepted_range(bus)
    rows = []
    for node in sorted(set(found) | set(commands)):
        status = found.get(node)
        info = None if status is None else node_info(status, now, accepted, STALE_AFTER_S)
        row = fleet_node(node, status, info, commands.get(node))
        rows.append(msgspec.structs.replace(row, order=reports.get(node)))
    return rows


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def render(rows: list[FleetNode], problems: list[str]) -> str:
    """`fleet ls` as a table, with each node's reasons and standing command below it."""
    header = ("NODE", "ROLES", "VERSION", "PROTO", "DEVICES", "UP", "RTT", "STATE")
    table: list[tuple[str, ...]] = [header]
    for r in rows:
        rtt = "-" if r.rtt_ms is None else f"{r.rtt_ms:.1f}ms"
        proto = "-" if r.protocol is None else str(r.protocol)
        devices = ", ".join(r.devices) or "-"
        row = (r.node, ",".join(r.roles) or "-", r.version or "-", proto, devices)
        table.append((*row, duration_text(r.uptime_s), rtt, r.state))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for i, line in enumerate(table):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if i:
            lines += notes(rows[i - 1])
    lines += [f"problem: {p}" for p in problems]
    return "\n".join(line.rstrip() for line in lines)


def notes(row: FleetNode) -> list[str]:
    out = []
    if row.unsupported:
        out.append(f"    NO WORK: {row.unsupported}")
    if row.upgrade:
        out.append(f"    UPGRADE: {row.upgrade}")
    if row.command is not None and is_draining(row.command):
        out.append(f"    {drain_text(row.command)}")
    if row.order is not None:
        out.append(f"    {order_text(row.order)}")
    return out


def order_text(report: FleetReport) -> str:
    """A node's answer to its last order, for people."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.at))
    why = f": {report.reason}" if report.reason else ""
    return f"last order: {report.action} {report.outcome} at {when} ({report.version}){why}"


def confirmation(status: NodeStatus | None, action: FleetAction, now: float) -> str | None:
    """What the node shows about `action` (pure): a line once it shows the command taken or is
    away (it reads the command when it comes back), None while it has not yet."""
    if status is None or now - status.sent_at > STALE_AFTER_S:
        return "the node is offline: the command stands until it comes back"
    if status.draining != (action == "drain"):
        return None
    if action == "resume":
        return "the node takes jobs again"
    jobs = sum(1 for s in status.services if s.alive and s.doing)
    return f"draining: {jobs} jobs left" if jobs else "drained: no job left running"


async def confirm(bus: Bus, node: str, action: FleetAction, wait_s: float) -> str | None:
    """Wait up to `wait_s` for the node to show the command taken; its line, or None."""
    deadline = bus.clock.monotonic() + wait_s
    while True:
        entry = await bus.last(names.NODES_BUCKET, names.node_key(node))
        status = None
        if entry.value is not None:
            try:
                status = decode(entry.value, NodeStatus, subject=node)
            except BadMessage:
                status = None
        shown = confirmation(status, action, bus.clock.time())
        if shown is not None or bus.clock.monotonic() >= deadline:
            return shown
        await bus.clock.sleep(CONFIRM_EVERY_S)


async def issue(bus: Bus, command: FleetCommand) -> None:
    """Record `command`'s audit event, then make it the node's standing state. NotIssued when
    the server refuses (any identity but admin) or does not answer: then neither took effect,
    or (the second write failing) the audit shows a command to issue again."""
    data = encode(command)
    what = f"fleet {command.action} {command.node}"
    try:
        await bus.publish_durable(names.fleet_event_subject(command.action, command.node), data)
        await bus.write(names.REGISTRY_BUCKET, names.fleet_key(command.node), data)
    except BusError as e:
        raise NotIssued(
            f"{what} not recorded: only admin may issue fleet commands (--creds admin.nk), "
            f"or the hub did not answer ({e})"
        ) from e


def issuer(creds: str | None, user: str, host: str) -> str:
    """Who issues a command: the local user and host, and the public key it connects with."""
    who = f"{user}@{host}"
    if creds is None:
        return who
    from shared.auth.identities import public_key

    try:
        return f"{who} ({public_key(Path(creds).read_bytes())})"
    except (OSError, ValueError):  # the connection will say what is wrong with the seed
        return who


async def fleet_main(cfg: BusConfig, request: FleetRequest) -> int:
    bus = await NatsBus.connect(cfg)
    try:
        if request.verb == "ls":
            return await list_fleet(bus, request.as_json)
        action: FleetAction = "drain" if request.verb == "drain" else "resume"
        return await command_node(bus, request, action)
    finally:
        await bus.close()


async def list_fleet(bus: Bus, as_json: bool) -> int:
    problems: list[str] = []
    rows = await gather(bus, problems)
    if as_json:
        print(msgspec.json.encode({"nodes": rows, "problems": problems}).decode())
    else:
        print(render(rows, problems))
    return 0


async def command_node(bus: Bus, request: FleetRequest, action: FleetAction) -> int:
    node = names.node_key(request.node)
    command = FleetCommand(
        action=action,
        node=node,
        issued_by=request.issued_by,
        at=bus.clock.time(),
        reason=request.reason,
    )
    await issue(bus, command)
    print(f"fleet {action} {node}: recorded ({command.issued_by})")
    shown = await confirm(bus, node, action, request.wait_s) if request.wait_s > 0 else None
    if shown is not None:
        print(f"  {shown}")
    elif request.wait_s > 0:
        print(
            f"  {node} has not shown it within {request.wait_s:g}s: its build may predate "
            "fleet commands (see `conclave fleet ls`)",
            file=sys.stderr,
        )
    return 0
