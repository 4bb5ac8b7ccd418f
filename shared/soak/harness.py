"""`conclave soak`: N nodes on a 3-server hub for a while, faults on a schedule, and a report.

    conclave soak --nodes 24 --duration 30m [--chaos] [--netns auto|on|off] --report DIR

The harness starts the hub and the nodes (`shared.soak.fleet`), waits until every node
heartbeats and a leader holds the lease, then watches for `--duration`: once a second the nodes
present in KV `nodes`, every leader term from `leader.validity`, and every PubAck of the games
stream and job submission seen on each hub server. With `--chaos` it injects one fault at a time
every `--fault-every` seconds, cycling through `--faults` (the fleet ones through the `conclave
fleet` command's own code, `shared.soak.chaosfleet`), and times its recovery. At the end it
checks every acknowledged game against the games stream and every checkpoint's replay window
against it, reads the job consumers (`shared.soak.audit`), stops everything and writes the
report (`shared.soak.files`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import msgspec

from schemas import names
from schemas.codec import decode
from schemas.control import NodeStatus
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import BusError
from shared.bus.message import Message
from shared.bus.ports import Bus
from shared.lease.audit import LeaseAudit
from shared.runtime.memory import rss_bytes
from shared.runtime.service import wait_or_stop
from shared.soak import netns
from shared.soak.audit import game_audit, job_counts, promotions
from shared.soak.chaosfleet import FleetFaults
from shared.soak.fleet import Fleet, plan_nodes, send
from shared.soak.netns import Namespaces
from shared.soak.record import (
    Fault,
    FaultKind,
    MemorySample,
    Sample,
    SoakRecord,
    TermSpan,
)
from shared.soak.wheel import upgrade_wheel

log = logging.getLogger("conclave.soak")
NetnsMode = Literal["auto", "on", "off"]
JOB_KINDS = ("selfplay", "train", "eval")
FAULT_KINDS: tuple[FaultKind, ...] = (
    "kill-service",
    "stop-service",
    "kill-node",
    "cut-network",
    "kill-server",
)
FLEET_FAULT_KINDS: tuple[FaultKind, ...] = (
    "rolling-restart",
    "drain",
    "kill-leader-node",
    "rolling-upgrade",
)
ALL_FAULT_KINDS = FAULT_KINDS + FLEET_FAULT_KINDS


class SoakOptions(msgspec.Struct, frozen=True):
    data_dir: str
    report_dir: str
    nodes: int = 24
    duration_s: float = 1800.0
    chaos: bool = False
    seed: int = 0
    fault_every_s: float = 30.0
    recovery_timeout_s: float = 90.0
    restart_delay_s: float = 5.0  # a killed node or server comes back after this
    pause_s: float = 10.0  # SIGSTOP of a service, cut of a node's link
    netns: NetnsMode = "auto"  # leaf nodes in network namespaces: a cut is a link set down
    leader_kills: float = 0.0  # share of node kills aimed at the leader's node
    warmup_timeout_s: float = 600.0
    memory_every_s: float = 15.0
    progress_every_s: float = 30.0
    faults: tuple[FaultKind, ...] = FAULT_KINDS  # the chaos cycles through these, in order
    upgrade_wheel: str = ""  # rolling-upgrade's wheel; "": one built a patch version up
    drain_bound_s: float = 60.0  # a drained node is resumed after this even if still busy

    def __post_init__(self) -> None:
        if not 0.0 <= self.leader_kills <= 1.0:
            raise ValueError(f"leader_kills must be a share from 0 to 1, got {self.leader_kills}")
        if not self.faults:
            raise ValueError("faults: name at least one fault kind")

    @property
    def upgrades(self) -> bool:
        return self.chaos and "rolling-upgrade" in self.faults


def parse_faults(text: str) -> tuple[FaultKind, ...]:
    """'kill-node,drain', 'all' (every kind) or 'default' (the five process and network
    faults); ValueError naming an unknown kind."""
    if text.strip() == "all":
        return ALL_FAULT_KINDS
    if text.strip() == "default":
        return FAULT_KINDS
    kinds: list[FaultKind] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        known = [k for k in ALL_FAULT_KINDS if k == word]
        if not known:
            raise ValueError(
                f"unknown fault kind {word!r}: choose from {', '.join(ALL_FAULT_KINDS)}, or all"
            )
        kinds.append(known[0])
    if not kinds:
        raise ValueError("--faults: name at least one fault kind")
    return tuple(kinds)


def parse_duration(text: str) -> float:
    """'90s', '5m', '1.5h' or plain seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ValueError(f"duration {text!r} must look like 90s, 5m or 1.5h") from None


class Sniffer:
    """One connection per hub server, so a server kill loses no observation: PubAcks of the
    games stream (acknowledged sequences) and job submissions (distinct message ids per kind)."""

    def __init__(self) -> None:
        self.acked: set[int] = set()
        self.jobs: dict[str, set[str]] = defaultdict(set)
        self.buses: list[Bus] = []

    async def start(self, urls: list[str]) -> None:
        for i, url in enumerate(urls):
            bus = await NatsBus.connect(BusConfig(servers=[url], name=f"soak-sniffer-{i}"))
            await bus.subscribe(names.under(names.INBOX_ROOT), self.on_reply)
            await bus.subscribe(names.all_jobs(), self.on_job)
            self.buses.append(bus)

    async def on_reply(self, msg: Message) -> None:
        if b'"stream":"GAMES"' not in msg.data:
            return
        try:
            ack = msgspec.json.decode(msg.data, type=dict[str, object])
        except (msgspec.DecodeError, RecursionError):
            return
        seq = ack.get("seq")
        if isinstance(seq, int) and "error" not in ack:
            self.acked.add(seq)

    async def on_job(self, msg: Message) -> None:
        msg_id = msg.msg_id
        if msg_id:
            self.jobs[msg.subject.split(".")[1]].add(msg_id)

    async def close(self) -> None:
        for bus in self.buses:
            await bus.close()


class Harness:
    def __init__(self, opts: SoakOptions, stop: asyncio.Event) -> None:
        self.opts, self.stop = opts, stop
        self.specs = plan_nodes(opts.nodes)
        self.fleet = Fleet(Path(opts.data_dir), self.specs, netns=namespaces(opts.netns))
        self.rng = random.Random(opts.seed)
        self.statuses: dict[str, NodeStatus] = {}
        self.samples: list[Sample] = []
        self.memory: list[MemorySample] = []
        self.faults: list[Fault] = []
        self.audit = LeaseAudit()
        self.sniffer = Sniffer()
        self.bus: Bus | None = None
        self.started_at = 0.0
        self.sample_gaps = 0
        self.wheel: Path | None = None  # rolling-upgrade's
        self.fleet_faults = FleetFaults(self)

    # -- run --------------------------------------------------------------------------------

    async def run(self) -> SoakRecord:
        try:
            if self.opts.upgrades:
                self.wheel = await asyncio.to_thread(self.upgrade_wheel)
            await asyncio.to_thread(self.fleet.start_hub)
            self.bus = await NatsBus.connect(
                BusConfig(servers=self.fleet.urls, name="soak", replicas=3)
            )
            await self.provision(self.bus)
            await self.audit.start(self.bus)
            await self.sniffer.start(self.fleet.urls)
            for node_id in self.fleet.nodes:
                await asyncio.to_thread(self.fleet.start_node, node_id)
            await self.warm_up()
            self.started_at = time.time()
            print(
                f"soak: {len(self.specs)} nodes up; watching for {self.opts.duration_s:.0f} s",
                flush=True,
            )
            async with asyncio.TaskGroup() as tg:
                watch = tg.create_task(self.watch(), name="watch")
                if self.opts.chaos:
                    tg.create_task(self.chaos(), name="chaos")
                await watch
            ended_at = time.time()
            # Nodes stop first, so every game acknowledged so far is in the stream when audited.
            await asyncio.to_thread(self.fleet.stop_nodes)
            return await self.finish(ended_at)
        finally:
            await self.close()

    def upgrade_wheel(self) -> Path:
        """The wheel given, or one built (once, before the nodes start: it takes a while) a
        patch version up into the report directory."""
        if self.opts.upgrade_wheel:
            return Path(self.opts.upgrade_wheel)
        out = Path(self.opts.report_dir) / "upgrade-wheel"
        shutil.rmtree(out, ignore_errors=True)
        print("soak: building the rolling upgrade's wheel", flush=True)
        wheel = upgrade_wheel(out)
        shutil.rmtree(out / "src", ignore_errors=True)
        return wheel

    async def provision(self, bus: Bus) -> None:
        """A new cluster elects its meta leader a moment after it reports healthy: retry."""
        deadline = time.monotonic() + 60.0
        while True:
            try:
                await bus.provision()
                return
            except BusError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self.audit.stop()
        await self.sniffer.close()
        if self.bus is not None:
            await self.bus.close()
        await asyncio.to_thread(self.fleet.stop)

    async def warm_up(self) -> None:
        deadline = time.monotonic() + self.opts.warmup_timeout_s
        while time.monotonic() < deadline and not self.stop.is_set():
            await self.refresh()
            healthy = sum(self.healthy(spec.node_id) for spec in self.specs)
            if healthy == len(self.specs) and self.audit.holder_at(time.time()):
                return
            await wait_or_stop(self.stop, 1.0)
        raise RuntimeError(
            f"warm-up: not every node healthy with a leader in {self.opts.warmup_timeout_s:.0f} s"
        )

    async def watch(self) -> None:
        """Sample once a second until the duration is over (or stop)."""
        end = self.started_at + self.opts.duration_s
        next_memory = next_progress = 0.0
        while time.time() < end and not self.stop.is_set():
            now = time.time()
            if await self.refresh():
                self.samples.append(Sample(now, sorted(self.statuses)))
            else:
                self.sample_gaps += 1
            if now >= next_memory:
                self.memory.append(MemorySample(now, self.rss()))
                next_memory = now + self.opts.memory_every_s
            if now >= next_progress:
                self.progress(now)
                next_progress = now + self.opts.progress_every_s
            await wait_or_stop(self.stop, max(0.0, 1.0 - (time.time() - now)))

    async def refresh(self) -> bool:
        """Read every node's status key; False (nothing changed) if the bus did not answer."""
        bus = self.bus
        assert bus is not None
        ids = sorted(self.fleet.nodes)
        try:
            entries = await asyncio.gather(*(bus.last(names.NODES_BUCKET, i) for i in ids))
        except BusError as e:
            log.warning("nodes not read: %s", e)
            return False
        statuses = {}
        for node_id, entry in zip(ids, entries, strict=True):
            if entry.value is None:
                continue
            try:
                statuses[node_id] = decode(entry.value, NodeStatus, subject=node_id)
            except Exception:  # unreadable however it fails: the node counts as not healthy
                continue
        self.statuses = statuses
        return True

    def healthy(self, node_id: str) -> bool:
        status = self.statuses.get(node_id)
        return (
            status is not None and bool(status.services) and all(s.alive for s in status.services)
        )

    def service_pid(self, node_id: str, service: str) -> int:
        status = self.statuses.get(node_id)
        found = [s.pid for s in status.services if s.name == service] if status else []
        return found[0] if found else 0

    def rss(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        for node_id, node in self.fleet.nodes.items():
            pids[f"{node_id}/launcher"] = node.pid
            status = self.statuses.get(node_id)
            for service in status.services if status else []:
                pids[f"{node_id}/{service.name}"] = service.pid
            if node.spec.via_leaf:
                pids[f"{node_id}/leaf"] = self.fleet.leaf_server_pid(node_id) or 0
        for server in self.fleet.hub.servers:
            pids[f"hub/{server.spec.name}"] = server.process.pid if server.process else 0
        sizes = {label: rss_bytes(pid) if pid else None for label, pid in pids.items()}
        return {label: size for label, size in sizes.items() if size is not None}

    def progress(self, now: float) -> None:
        alive = len(self.statuses)
        term = self.audit.holder_at(now)
        leader = f"{term.node} term {term.term}" if term else "none"
        recovered = sum(f.recovered_at is not None for f in self.faults)
        minutes = (now - self.started_at) / 60
        faults = f"faults {len(self.faults)} ({recovered} recovered)"
        print(
            f"[{minutes:5.1f} min] nodes {alive}/{len(self.specs)}, leader {leader}, {faults}, "
            f"games acknowledged {len(self.sniffer.acked)}",
            flush=True,
        )

    # -- chaos ------------------------------------------------------------------------------

    async def chaos(self) -> None:
        end = self.started_at + self.opts.duration_s - self.opts.recovery_timeout_s / 2
        k = 0
        while not self.stop.is_set():
            await wait_or_stop(self.stop, self.opts.fault_every_s)
            if self.stop.is_set() or time.time() >= end:
                return
            kind = self.opts.faults[k % len(self.opts.faults)]
            k += 1
            fault = await self.inject(kind)
            if fault is not None:
                self.faults.append(fault)
                print(f"  fault {kind} {fault.target}: {recovery(fault)}", flush=True)

    async def inject(self, kind: FaultKind) -> Fault | None:
        injectors: dict[FaultKind, Callable[[], Awaitable[Fault | None]]] = {
            "kill-service": self.kill_service,
            "stop-service": self.stop_service,
            "kill-node": self.kill_node,
            "cut-network": self.cut_network,
            "kill-server": self.kill_server,
            "kill-leader-node": self.fleet_faults.kill_leader_node,
            "drain": self.fleet_faults.drain,
            "rolling-restart": self.fleet_faults.rolling_restart,
            "rolling-upgrade": self.fleet_faults.rolling_upgrade,
        }
        return await injectors[kind]()

    def pick_service(self) -> tuple[str, str, int] | None:
        candidates = [
            (node_id, s.name, s.pid)
            for node_id, status in sorted(self.statuses.items())
            for s in status.services
            if s.pid
        ]
        return self.rng.choice(candidates) if candidates else None

    async def kill_service(self) -> Fault | None:
        picked = self.pick_service()
        if picked is None:
            return None
        node_id, service, pid = picked
        at = time.time()
        send(pid, signal.SIGKILL)
        recovered = await self.until(lambda: self.service_back(node_id, service, pid))
        return Fault("kill-service", f"{node_id}/{service}", at, recovered, detail=f"pid {pid}")

    async def stop_service(self) -> Fault | None:
        picked = self.pick_service()
        if picked is None:
            return None
        node_id, service, pid = picked
        at = time.time()
        send(pid, signal.SIGSTOP)  # its launcher sees the silence and replaces it
        await wait_or_stop(self.stop, self.opts.pause_s)
        send(pid, signal.SIGCONT)
        recovered = await self.until(lambda: self.service_back(node_id, service, pid, any_pid=True))
        return Fault(
            "stop-service",
            f"{node_id}/{service}",
            at,
            recovered,
            detail=f"pid {pid}, {self.opts.pause_s:.0f} s",
        )

    def service_back(self, node_id: str, service: str, old_pid: int, any_pid: bool = False) -> bool:
        status = self.statuses.get(node_id)
        if status is None:
            return False
        for s in status.services:
            if s.name == service and s.alive and (any_pid or s.pid not in (0, old_pid)):
                return self.healthy(node_id)
        return False

    async def kill_node(self) -> Fault | None:
        node_id = self.pick_node()
        at = time.time()
        await self.kill_and_restart(node_id)
        started = time.time()
        recovered = await self.until(lambda: self.restarted(node_id, started))
        return Fault("kill-node", node_id, at, recovered, node=node_id)

    async def kill_and_restart(self, node_id: str) -> None:
        await asyncio.to_thread(self.fleet.kill_node, node_id)
        await wait_or_stop(self.stop, self.opts.restart_delay_s)
        await asyncio.to_thread(self.fleet.start_node, node_id)

    def pick_node(self) -> str:
        """A random node, or for a `leader_kills` share of picks the leader's (no extra draw
        when that share is 0, so a seed replays the same faults as before)."""
        if self.opts.leader_kills > 0 and self.rng.random() < self.opts.leader_kills:
            leader = self.audit.holder_at(time.time())
            if leader is not None:
                return leader.node
        return self.rng.choice(sorted(self.fleet.nodes))

    def restarted(self, node_id: str, after: float) -> bool:
        status = self.statuses.get(node_id)
        return status is not None and status.started_at >= after - 1.0 and self.healthy(node_id)

    async def cut_network(self) -> Fault | None:
        """A leaf node's one link to the hub goes dark for a while: its veth is set down (in a
        network namespace), or else its leaf server is stopped."""
        leafy = sorted(s.node_id for s in self.specs if s.via_leaf)
        node_id = self.rng.choice(leafy)
        netns = self.fleet.netns
        pid = self.fleet.leaf_server_pid(node_id)
        if netns is None and pid is None:
            return None
        at = time.time()
        if netns is not None:
            await asyncio.to_thread(netns.cut, node_id)
            await wait_or_stop(self.stop, self.opts.pause_s)
            await asyncio.to_thread(netns.mend, node_id)
            detail = f"veth {netns.host_end(node_id)} down {self.opts.pause_s:.0f} s"
        else:
            assert pid is not None
            send(pid, signal.SIGSTOP)
            await wait_or_stop(self.stop, self.opts.pause_s)
            send(pid, signal.SIGCONT)
            detail = f"leaf server pid {pid} stopped {self.opts.pause_s:.0f} s"
        resumed = time.time()
        recovered = await self.until(lambda: self.fresh(node_id, resumed))
        return Fault("cut-network", node_id, at, recovered, node=node_id, detail=detail)

    def fresh(self, node_id: str, after: float) -> bool:
        status = self.statuses.get(node_id)
        return status is not None and status.sent_at >= after and self.healthy(node_id)

    async def kill_server(self) -> Fault | None:
        server = self.rng.choice(self.fleet.hub.servers)
        at = time.time()
        await asyncio.to_thread(server.kill)
        await wait_or_stop(self.stop, self.opts.restart_delay_s)
        await asyncio.to_thread(server.start, 60.0)
        recovered = await self.until(lambda: all(self.healthy(s.node_id) for s in self.specs))
        return Fault("kill-server", f"hub/{server.spec.name}", at, recovered)

    async def until(self, check: Callable[[], bool], timeout_s: float = 0.0) -> float | None:
        """When `check` (over the latest samples) first holds, or None after the timeout
        (`timeout_s`, by default the recovery timeout)."""
        deadline = time.monotonic() + (timeout_s or self.opts.recovery_timeout_s)
        while time.monotonic() < deadline and not self.stop.is_set():
            if check():
                return time.time()
            await asyncio.sleep(0.25)
        return None

    # -- the end ----------------------------------------------------------------------------

    async def finish(self, ended_at: float) -> SoakRecord:
        assert self.bus is not None
        await asyncio.sleep(2.0)  # the last PubAcks in flight reach the sniffers
        return SoakRecord(
            started_at=self.started_at,
            ended_at=ended_at,
            nodes=self.specs,
            chaos=self.opts.chaos,
            samples=self.samples,
            terms=self.terms(),
            faults=self.faults,
            memory=self.memory,
            jobs=[await job_counts(self.bus, kind, self.sniffer.jobs[kind]) for kind in JOB_KINDS],
            games=await game_audit(self.bus, self.sniffer.acked),
            generations=await promotions(self.bus),
            sample_gaps=self.sample_gaps,
        )

    def terms(self) -> list[TermSpan]:
        return [TermSpan(t.term, t.node, t.valid_from, t.valid_until) for t in self.audit.ordered()]


def namespaces(mode: NetnsMode) -> Namespaces | None:
    """Namespaces for the leaf nodes: always ("on", failing if impossible), never, or when the
    machine allows ("auto")."""
    if mode == "off" or (mode == "auto" and not netns.available()):
        return None
    return Namespaces()


def recovery(fault: Fault) -> str:
    if fault.recovered_at is None:
        return "NOT recovered"
    return f"recovered in {fault.recovered_at - fault.at:.1f} s"


async def soak_main(opts: SoakOptions) -> int:
    from shared.soak.files import write_report

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    record = await Harness(opts, stop).run()
    rep = await asyncio.to_thread(write_report, record, Path(opts.report_dir))
    print(
        f"soak report: {opts.report_dir}/report.md ({'PASSED' if rep.passed else 'FAILED'})",
        flush=True,
    )
    for check, ok in rep.checks.items():
        print(f"  {'ok ' if ok else 'NOT'} {check}", flush=True)
    return 0 if rep.passed else 1
