"""`conclave status`: who is alive, who leads, how the event loops are doing, and per node what
its workers compute on (device, tier, memory, self-test, positions/s)."""

from __future__ import annotations

import asyncio
import time

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import ClusterProtocol, DeviceReport, Lease, NodeStatus, ServiceState
from services.scheduler import STATE_KEY, LoopRecord, games_per_hour
from services.syncer import GAMES_CONSUMER, SyncStatus
from shared.bus.client import BusConfig, NatsBus
from shared.bus.compat import accepted_range, refusal, upgrade_warning
from shared.bus.errors import BusError
from shared.bus.message import Entry
from shared.bus.ports import Bus
from shared.lease.fencing import read_termed
from shared.loop.allocation import Allocation
from shared.loop.observe import count
from shared.loop.phase import GauntletPhase, Phase
from shared.loop.ratingjobs import game_ratings
from shared.work.compute import PASSED


class LeaderInfo(msgspec.Struct, frozen=True):
    node: str
    term: int
    since: float
    held_s: float


class ServiceInfo(msgspec.Struct, frozen=True):
    name: str
    alive: bool
    loop_lag_ms: float
    answers_ping: bool = False  # it answered $SRV.PING (micro discovery) just now
    counters: dict[str, float] = {}  # work done since the service started (games, simulations)
    doing: str = ""  # its current job
    compute: DeviceReport | None = None  # a worker's device, once chosen


class NodeCompute(msgspec.Struct, frozen=True):
    """A node's live workers together: what they run on, hold and do."""

    devices: list[str]  # each device once: "cuda:0 NVIDIA H100 80GB HBM3", "cpu <model>"
    tiers: list[str]  # fastest first
    rss_bytes: int  # all its workers' resident memory
    device_memory_bytes: int  # allocated by its workers on their devices (VRAM)
    device_memory_total: int  # each device's memory counted once
    self_test: str  # "passed" by every worker, "testing" while one still is, else "failed"
    failures: dict[str, str] = {}  # service -> why its self-test failed (it takes no jobs)
    positions_per_s: dict[str, float] = {}  # per network size, summed over its workers


class NodeInfo(msgspec.Struct, frozen=True):
    id: str
    roles: list[str]
    alive: bool
    loop_lag_ms: float
    services: list[ServiceInfo]
    last_seen_s: float
    cores: int
    memory_gb: float
    gpus: list[str]
    protocol: int = 1
    unsupported: str = ""  # why this node gets no work (version skew), "" if it may work
    compute: NodeCompute | None = None  # None when no live worker has reported a device
    games: list[str] = []  # installed on the node
    draining: bool = False  # `conclave fleet drain`: it finishes its jobs and takes no new ones
    upgrade: str = ""  # below the announced next minimum protocol: works, but should upgrade


class NatsInfo(msgspec.Struct, frozen=True):
    url: str
    servers: list[str]
    server_name: str
    version: str


class GameInfo(msgspec.Struct, frozen=True):
    game: str
    generation: int
    best_sha256: str
    best_elo: float | None
    best_elo_ci: float | None
    candidate: str | None
    games_total: int
    games_per_hour: float
    queues: dict[str, int]
    dead_letters: int
    phase: Phase | None = None  # what the loop is doing for this game
    # Evaluation's share of the workers' CPU over the scheduler's recent window (cluster-wide)
    evaluation_share: float | None = None
    queue_age_s: dict[str, float | None] = {}  # per queue (eval by lane): oldest job's age
    selfplay: Allocation | None = None  # self-play's target and actual share, and why
    selfplay_seconds: float = 0.0  # self-play worker-seconds so far (the allocation's measure)


class ArchiveInfo(msgspec.Struct, frozen=True):
    target: str
    node: str
    games_not_archived: int
    archived_through: dict[str, int]
    newest_model: str
    last_error: str
    last_error_age_s: float | None


class StatusReport(msgspec.Struct, frozen=True):
    leader: LeaderInfo | None
    nodes: list[NodeInfo]
    nodes_alive: int
    alive_by_role: dict[str, int]
    nats: NatsInfo
    problems: list[str]
    at: float
    games: list[GameInfo] = []
    archive: ArchiveInfo | None = None


def leader_info(entry: Entry, now: float) -> LeaderInfo | None:
    if entry.value is None:
        return None
    lease = decode(entry.value, Lease, subject=names.LEADER_KEY)
    term = lease.term or entry.revision
    return LeaderInfo(lease.node, term, lease.acquired_at, round(now - lease.acquired_at, 1))


def node_info(
    status: NodeStatus,
    now: float,
    accepted: ClusterProtocol | None = None,
    stale_after_s: float = 5.0,
    pinged: frozenset[tuple[str, str]] = frozenset(),
) -> NodeInfo:
    services = [
        ServiceInfo(
            name=s.name,
            alive=s.alive,
            loop_lag_ms=s.lag_max_ms,
            answers_ping=(status.node, s.name) in pinged,
            counters=s.counters,
            doing=s.doing,
            compute=s.compute,
        )
        for s in status.services
    ]
    age = now - status.sent_at
    return NodeInfo(
        id=status.node,
        roles=status.roles,
        alive=age <= stale_after_s,
        loop_lag_ms=max((s.loop_lag_ms for s in services), default=0.0),
        services=services,
        last_seen_s=round(age, 1),
        cores=status.resources.cores,
        memory_gb=round(status.resources.memory_bytes / 2**30, 1),
        gpus=status.resources.gpus,
        protocol=status.protocol,
        unsupported=refusal(status.protocol, accepted) or "",
        compute=node_compute(status.services),
        games=status.games,
        draining=status.draining,
        upgrade=upgrade_warning(status.protocol, accepted) or "",
    )


def node_compute(services: list[ServiceState]) -> NodeCompute | None:
    """The live workers' device reports summed up (pure); a dead worker's last report is stale."""
    reports = {s.name: s.compute for s in services if s.alive and s.compute is not None}
    if not reports:
        return None
    # Workers sharing a GPU each report its whole memory: count every device's total once.
    totals = {r.device: r.device_memory_total for r in reports.values()}
    failures = {n: r.self_test for n, r in reports.items() if r.self_test not in (PASSED, "")}
    testing = any(r.self_test == "" for r in reports.values())
    rates: dict[str, float] = {}
    for r in reports.values():
        for size, rate in r.positions_per_s.items():
            rates[size] = rates.get(size, 0.0) + rate
    return NodeCompute(
        devices=sorted({f"{r.device} {r.name}".strip() for r in reports.values()}),
        tiers=sorted({r.tier for r in reports.values()}, key=tier_rank),
        rss_bytes=sum(r.rss_bytes for r in reports.values()),
        device_memory_bytes=sum(r.device_memory_bytes for r in reports.values()),
        device_memory_total=sum(totals.values()),
        self_test="failed" if failures else "testing" if testing else "passed",
        failures=failures,
        positions_per_s={size: round(rate, 1) for size, rate in sorted(rates.items())},
    )


def tier_rank(tier: str) -> tuple[int, str]:
    """Known tiers fastest first, then any other (a newer build's) by name."""
    return (names.TIERS.index(tier) if tier in names.TIERS else len(names.TIERS), tier)


def by_role(nodes: list[NodeInfo]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        for role in node.roles if node.alive else ():
            counts[role] = counts.get(role, 0) + 1
    return counts


async def gather(bus: Bus) -> StatusReport:
    """Read the status keys and the lease once and summarise them."""
    now = time.time()
    problems: list[str] = []
    raw_nodes = await bus.snapshot(names.NODES_BUCKET)
    accepted = await accepted_range(bus)
    pinged = await discover(bus)
    nodes: list[NodeInfo] = []
    for key, entry in sorted(raw_nodes.items()):
        try:
            status = decode(entry.value or b"", NodeStatus, subject=key)
            nodes.append(node_info(status, now, accepted, pinged=pinged))
        except Exception as e:  # a node writes its own key: whatever it holds, show the rest
            problems.append(f"node {key}: unreadable: {unreadable(e)}")
    lease = await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)
    try:
        leader = leader_info(lease, now)
    except Exception as e:
        leader, problems = None, [*problems, f"lease: unreadable: {unreadable(e)}"]
    alive = [n for n in nodes if n.alive]
    games = await games_info(bus, problems)
    archive = await archive_info(bus, now, problems)
    return StatusReport(
        leader, nodes, len(alive), by_role(alive), nats_info(bus), problems, now, games, archive
    )


async def discover(bus: Bus, wait_s: float = 0.5) -> frozenset[tuple[str, str]]:
    """(node, service) of every service answering `$SRV.PING` within `wait_s` (NATS micro)."""
    return frozenset(
        (str(meta["node"]), str(meta["service"]))
        for meta in await bus.ping_services(wait_s)
        if "node" in meta and "service" in meta
    )


async def archive_info(bus: Bus, now: float, problems: list[str]) -> ArchiveInfo | None:
    """Archive lag: games the syncer has not yet stored (its consumer's backlog)."""
    entry = await bus.last(names.REGISTRY_BUCKET, names.SYNC_STATUS_KEY)
    if entry.value is None:
        return None
    try:
        sync = decode(entry.value, SyncStatus, subject=names.SYNC_STATUS_KEY)
    except Exception as e:
        problems.append(f"sync status: unreadable: {unreadable(e)}")
        return None
    try:
        counts = await bus.consumer_counts(names.GAMES_STREAM, GAMES_CONSUMER)
        lag = counts.pending + counts.ack_pending
    except Exception:
        lag = -1
    age = round(now - sync.last_error_at, 1) if sync.last_error else None
    return ArchiveInfo(
        sync.target, sync.node, lag, sync.archived_through, sync.newest_model, sync.last_error, age
    )


async def games_info(bus: Bus, problems: list[str]) -> list[GameInfo]:
    """Per game: best model and its rating, queues, dead letters and throughput."""
    try:
        record, _ = await read_termed(bus, names.LOOP_BUCKET, STATE_KEY, LoopRecord)
    except BadMessage as e:
        problems.append(f"loop state: unreadable: {unreadable(e)}")
        return []
    if record is None:
        return []
    now = time.time()
    games = []
    for name in sorted(record.state.games):
        try:
            games.append(await game_info(bus, record, name, now))
        except BusError:
            raise
        except Exception as e:  # e.g. a name no subject takes: the other games still show
            problems.append(f"game {name[:80]!r}: unreadable: {unreadable(e)}")
    return games


def unreadable(e: Exception) -> str:
    """Why a value could not be shown, naming the field when the decoder knows it."""
    if isinstance(e, BadMessage):
        return f"field {e.field}: {e.reason}"[:500]
    return repr(e)[:500]


async def game_info(bus: Bus, record: LoopRecord, game: str, now: float) -> GameInfo:
    state = record.state.game(game)
    ratings, _ = await game_ratings(bus, game)
    best = ratings.get(f"gen{state.generation}")
    queues = {
        kind: await count(bus, names.JOBS_STREAM, names.job_game_filter(kind, game))
        for kind in names.JOB_KINDS
    }
    return GameInfo(
        game=game,
        generation=state.generation,
        best_sha256=state.best or "",
        best_elo=round(best.elo, 1) if best else None,
        best_elo_ci=round((best.hi - best.lo) / 2, 1) if best else None,
        candidate=state.pending_eval,
        games_total=await count(bus, names.GAMES_STREAM, names.games_subject(game)),
        games_per_hour=round(games_per_hour(record.game_counts.get(game, [])), 1),
        queues=queues,
        dead_letters=await count(
            bus, names.DLQ_STREAM, names.dlq_subject(names.ANY, game, names.ANY)
        ),
        phase=record.phases.get(game),
        evaluation_share=record.evaluation_share,
        queue_age_s=await queue_ages(bus, game, now),
        selfplay=record.allocation.get(game),
        selfplay_seconds=record.selfplay_seconds.get(game, 0.0),
    )


async def queue_ages(bus: Bus, game: str, now: float) -> dict[str, float | None]:
    """Seconds the oldest job (queued or running) of each queue has waited; None when empty."""
    ages: dict[str, float | None] = {}
    for kind in names.JOB_KINDS:
        for lane in names.job_lanes(kind):
            first = await bus.first_time(names.JOBS_STREAM, names.job_game_filter(kind, game, lane))
            ages[f"{kind}.{lane}" if lane else kind] = (
                None if first is None else round(max(0.0, now - first), 1)
            )
    return ages


def nats_info(bus: Bus) -> NatsInfo:
    c = bus.connection()
    return NatsInfo(url=c.url, servers=c.servers, server_name=c.server_name, version=c.version)


def service_mark(s: ServiceInfo) -> str:
    if not s.alive:
        return "(down)"
    return "" if s.answers_ping else "(no ping)"


def render_text(report: StatusReport) -> str:
    lines = [f"NATS {report.nats.url} ({report.nats.server_name} v{report.nats.version})"]
    if report.leader is None:
        lines.append("leader: none")
    else:
        ld = report.leader
        lines.append(f"leader: {ld.node}  term {ld.term}  held {ld.held_s:.0f}s")
    roles = ", ".join(f"{r} {n}" for r, n in sorted(report.alive_by_role.items())) or "-"
    lines.append(f"nodes alive: {report.nodes_alive}/{len(report.nodes)}  ({roles})")
    for node in report.nodes:
        state = "alive" if node.alive else f"silent {node.last_seen_s:.0f}s"
        services = " ".join(f"{s.name}{service_mark(s)}" for s in node.services)
        skew = f"  NO WORK: {node.unsupported}" if node.unsupported else ""
        lines.append(
            f"  {node.id:<20} {state:<12} lag {node.loop_lag_ms:7.1f}ms  "
            f"[{','.join(node.roles)}]  {services}{skew}{fleet_text(node)}"
        )
        if node.compute is not None:
            lines.append(f"    {compute_text(node.compute)}")
    for g in report.games:
        elo = f"{g.best_elo:+.0f} ± {g.best_elo_ci:.0f}" if g.best_elo is not None else "-"
        queues = " ".join(f"{k} {v}" for k, v in g.queues.items())
        lines.append(
            f"{g.game}: best gen {g.generation} ({g.best_sha256[:12] or '-'}) Elo {elo}; "
            f"{g.games_total} games ({g.games_per_hour:.0f}/h); queued {queues}; "
            f"dead letters {g.dead_letters}"
        )
        if g.phase is not None:
            lines.append(f"  {phase_text(g.phase)}")
            if g.phase.gauntlet is not None:
                lines.append(f"  {gauntlet_text(g.phase.gauntlet)}")
        share = "-" if g.evaluation_share is None else f"{g.evaluation_share:.0%}"
        ages = " ".join(f"{q} {a:.0f}s" for q, a in g.queue_age_s.items() if a is not None)
        lines.append(f"  evaluation {share} of workers' CPU; oldest job waiting: {ages or '-'}")
        if g.selfplay is not None:
            lines.append(f"  {allocation_text(g.selfplay)}")
    if report.archive is not None:
        a = report.archive
        error = (
            f"; last error {a.last_error_age_s:.0f}s ago: {a.last_error}" if a.last_error else ""
        )
        lines.append(
            f"archive {a.target}: {a.games_not_archived} games not yet archived, "
            f"newest model {a.newest_model[:12] or '-'}{error}"
        )
    lines += [f"problem: {p}" for p in report.problems]
    return "\n".join(lines)


def running_jobs(node: NodeInfo) -> int:
    """Jobs its live services are working on (a draining node is drained at 0)."""
    return sum(1 for s in node.services if s.alive and s.doing)


def fleet_text(node: NodeInfo) -> str:
    """A node's drain state and the upgrade it is warned about, "" for neither."""
    text = ""
    if node.draining:
        left = running_jobs(node)
        text = f"  DRAINING ({left} jobs left)" if left else "  DRAINED"
    return text + (f"  UPGRADE: {node.upgrade}" if node.upgrade else "")


def allocation_text(a: Allocation) -> str:
    """Self-play's share: the target, the factors of its priority, and the actual share."""
    actual = "-" if a.actual is None else f"{a.actual:.0%}"
    return (
        f"self-play share: target {a.target:.0%} (weight {a.weight:g} x learning "
        f"{a.learning:.2f} x staleness {a.staleness:.2f}), actual {actual}"
    )


def compute_text(c: NodeCompute) -> str:
    """One line: devices, tiers, memory, self-test and positions/s of a node's workers."""
    parts = [", ".join(c.devices), f"tier {'/'.join(c.tiers)}", f"mem {size_text(c.rss_bytes)}"]
    if c.device_memory_total:
        used, total = size_text(c.device_memory_bytes), size_text(c.device_memory_total)
        parts.append(f"VRAM {used}/{total}")
    parts.append(self_test_text(c))
    if c.positions_per_s:
        rates = ", ".join(f"{size} {rate:.0f}" for size, rate in c.positions_per_s.items())
        parts.append(f"pos/s {rates}")
    return "; ".join(parts)


def self_test_text(c: NodeCompute) -> str:
    """Ok, running, or each failure's reason with the workers it hit (workers on one device
    usually fail alike: the reason is shown once)."""
    if c.self_test != "failed":
        return "self-test ok" if c.self_test == PASSED else "self-test running"
    by_reason: dict[str, list[str]] = {}
    for service, reason in sorted(c.failures.items()):
        by_reason.setdefault(reason, []).append(service)
    failed = "; ".join(f"{','.join(s)}: {clipped(r)}" for r, s in by_reason.items())
    return f"SELF-TEST FAILED, no jobs: {failed}"


def clipped(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def size_text(n: int) -> str:
    """Bytes as GB with one decimal, or whole MB below a GB."""
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def phase_text(phase: Phase) -> str:
    if phase.now == "bootstrap":
        return "phase: bootstrap (training the first network)"
    if phase.now == "collecting":
        return f"phase: collecting self-play games {phase.games}/{phase.games_needed}"
    if phase.now == "training":
        return f"phase: training generation {phase.generation + 1}, {training_text(phase)}"
    m = phase.match
    if m is None:
        return "phase: match"
    return (
        f"phase: match of generation {phase.generation + 1} ({m.candidate[:12]}): "
        f"{m.games}/{m.max_games} games {m.wins}-{m.draws}-{m.losses}, Elo {m.elo:+.0f}, "
        f"LLR {m.llr:.2f} in [{m.lower:.2f}, {m.upper:.2f}]"
    )


def training_text(phase: Phase) -> str:
    t = phase.training
    if t is None:
        return "waiting for the trainer's first report"
    loss = "-"
    if t.policy_loss is not None and t.value_loss is not None:
        loss = f"{t.policy_loss:.3f}+{t.value_loss:.3f}"
    return f"step {t.step}/{t.steps}, loss {loss}, {t.samples_per_s:.0f} samples/s"


def gauntlet_text(gauntlet: GauntletPhase) -> str:
    scores = ", ".join(
        f"{o.opponent} {o.wins}-{o.draws}-{o.losses}{' (done)' if o.settled else ''}"
        for o in gauntlet.opponents
    )
    return f"gauntlet of generation {gauntlet.generation}: {scores}"


async def status_main(cfg: BusConfig, as_json: bool, watch_s: float | None) -> int:
    bus = await NatsBus.connect(cfg)
    try:
        while True:
            report = await gather(bus)
            text = msgspec.json.encode(report).decode() if as_json else render_text(report)
            print(text, flush=True)
            if watch_s is None:
                return 0
            await asyncio.sleep(watch_s)
    finally:
        await bus.close()
