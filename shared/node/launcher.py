"""`conclave node` and `conclave up`: run a node's services as supervised child processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

import msgspec

from schemas import names
from schemas.codec import encode
from schemas.control import FleetOrder
from services.evaluator import EvaluatorConfig
from services.heartbeat import HeartbeatConfig
from services.leader import LeaderConfig
from services.scheduler import SchedulerConfig
from services.selfplay import SelfplayGame, SelfplayWorkerConfig
from services.syncer import SyncerConfig
from shared.archive import S3Config
from shared.auth.identities import node_roles, node_seed_path
from shared.auth.permissions import ROLES, Role
from shared.bus.client import BusConfig, identity_inbox
from shared.bus.ports import Bus
from shared.bus.server import HUB_DOMAIN
from shared.lease.quorum import LeaseParams
from shared.loop.evalplan import EvalBudget
from shared.loop.presets import Preset, preset, tuned
from shared.node.control import Control, ControlOptions
from shared.node.leaf import LocalLeaf
from shared.runtime.service import ProcessConfig
from shared.runtime.supervisor import Child, ChildSpec, KillRecord, Limits, python_module_argv

log = logging.getLogger("conclave.launcher")

# Services each role runs; every node also runs `heartbeat`.
ROLE_SERVICES: dict[str, tuple[str, ...]] = {
    "coordinator": ("leader", "scheduler"),
    "selfplay": ("selfplay",),
    "trainer": ("trainer",),
    "evaluator": ("evaluator",),
    "syncer": ("syncer",),
    "control": ("leader",),  # leadership without the training loop (`up --no-train`)
}
LOOP_ROLES = ("coordinator", "selfplay", "trainer", "evaluator", "syncer")
SELFPLAY_NICE = 5
ALL_ROLES = tuple(ROLE_SERVICES)


class UnknownRole(ValueError):
    pass


class NodeOptions(msgspec.Struct, frozen=True):
    """Everything a node needs, parsed once from the command line."""

    node_id: str
    roles: list[str]
    nats_urls: list[str]
    lease: LeaseParams = LeaseParams()
    limits_stall_s: float = 5.0
    replicas: int = 1
    log_dir: str | None = None
    log_level: str = "info"
    game: str = "connect4"
    preset: str | None = None  # shared/loop/presets.py name; default: the game's own
    cache_dir: str = "conclave-cache"
    threads: int = 1
    device: str = "auto"  # where networks run (shared.learn.device)
    precision: str = "auto"
    tier: str = "auto"  # the job tier workers pull first (schemas.names.TIERS); auto: by device
    memory_budget_mb: float | None = None  # each self-play worker's; None: a share of the node
    archive: str = "conclave-archive"  # s3://bucket/prefix, or a local directory
    s3_endpoint: str | None = None
    creds: str | None = None  # a seed file for all services, or a directory with the node identity
    tls_ca: str | None = None  # the hub's CA (`conclave auth init --tls`)
    via_leaf: list[str] = []  # hub leaf URLs: run a local leaf server and connect through it
    domain: str | None = None  # the hub's JetStream domain, when connected through a leaf
    inbox_prefix: str | None = None  # through a leaf: the link identity's (`shared.bus.client`)
    eval_budget: float = EvalBudget().budget  # most of the workers' CPU evaluation may use
    selfplay_workers: int | None = None  # self-play processes; None: one per usable core
    tune: list[str] = []  # `section.name=value` changes to the preset (shared.loop.presets.tuned)
    # The configurations to train, each with its settings (`--config`, shared.loop.configfile);
    # none: `game` alone, with `preset` and `tune`.
    configs: dict[str, Preset] = {}
    weights: dict[str, float] = {}  # each configuration's base weight in the self-play allocation
    remote_upgrade: bool = True  # `--no-remote-upgrade`: refuse `conclave fleet upgrade`


def parse_roles(text: str) -> list[str]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    for role in roles:
        if role not in ROLE_SERVICES:
            raise UnknownRole(f"unknown role {role!r}; known roles: {', '.join(ALL_ROLES)}")
    return roles


def default_node_id() -> str:
    host = socket.gethostname().split(".")[0]
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in host)
    return cleaned[:64] or "node"


def services_for(roles: list[str], selfplay_workers: int = 1) -> list[str]:
    """The node's service processes; self-play may run as several (`selfplay`, `selfplay-2`)."""
    chosen = ["heartbeat"]
    for role in roles:
        chosen += [s for s in ROLE_SERVICES[role] if s not in chosen]
    if "selfplay" in chosen:
        at = chosen.index("selfplay") + 1
        chosen[at:at] = [f"selfplay-{k}" for k in range(2, selfplay_workers + 1)]
    return chosen


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under `taskset`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def selfplay_workers(opts: NodeOptions, cores: int) -> int:
    """Self-play processes for this node: as set, else one per usable core (a trainer or an
    evaluator on the same node outranks them: they run niced, `selfplay_nice`)."""
    if opts.selfplay_workers is not None:
        return opts.selfplay_workers
    return max(1, cores)


def selfplay_nice(roles: list[str]) -> int:
    """Self-play yields the CPU to the loop's critical path (training, matches) on its node."""
    return SELFPLAY_NICE if {"trainer", "evaluator", "coordinator"} & set(roles) else 0


def node_services(opts: NodeOptions) -> list[str]:
    return services_for(opts.roles, selfplay_workers(opts, usable_cores()))


def service_config(service: str, opts: NodeOptions) -> msgspec.Struct:
    if service == "heartbeat":
        return HeartbeatConfig(opts.node_id, opts.roles, node_services(opts))
    if service == "leader":
        return LeaderConfig(opts.node_id, opts.lease)
    return loop_service_config(service, opts, node_presets(opts))


def node_presets(opts: NodeOptions) -> dict[str, Preset]:
    """The settings of each configuration this node's services work for."""
    if opts.configs:
        return opts.configs
    one = tuned(preset(opts.preset or opts.game), opts.tune)
    return {one.loop.games[0]: one}


def loop_service_config(
    instance: str, opts: NodeOptions, presets: dict[str, Preset]
) -> msgspec.Struct:
    """`instance`'s configuration: the first configuration's settings, and with several
    configurations each one's own besides."""
    cache = str(Path(opts.cache_dir) / opts.node_id / instance)
    service = names.service_kind(instance)
    p = next(iter(presets.values()))
    several = len(presets) > 1
    if service == "scheduler":
        return scheduler_config(opts, presets)
    if service == "selfplay":
        return SelfplayWorkerConfig(
            opts.node_id,
            cache,
            opts.threads,
            concurrent_games=p.selfplay_concurrency,
            device=opts.device,
            precision=opts.precision,
            tier=opts.tier,
            engine=p.selfplay,
            nice=selfplay_nice(opts.roles),
            memory_budget_mb=opts.memory_budget_mb,
            node_workers=selfplay_workers(opts, usable_cores()),
            calibrate=True,
            per_game={
                name: SelfplayGame(q.selfplay_concurrency, q.selfplay)
                for name, q in presets.items()
                if several
            },
        )
    if service == "trainer":
        # Imported only where a trainer runs: its module loads torch, which other launchers skip.
        from services.trainer import TrainerConfig, TrainerGame

        return TrainerConfig(
            opts.node_id,
            cache,
            opts.threads,
            window_games=p.window_games,
            max_reuse=p.max_reuse,
            net=p.net,
            train=p.train,
            device=opts.device,
            precision=opts.precision,
            tier=opts.tier,
            per_game={
                name: TrainerGame(q.window_games, q.max_reuse, q.net, q.train)
                for name, q in presets.items()
                if several
            },
        )
    if service == "evaluator":
        return EvaluatorConfig(
            opts.node_id,
            cache,
            opts.threads,
            device=opts.device,
            precision=opts.precision,
            tier=opts.tier,
        )
    if service == "syncer":
        return syncer_config(opts, cache)
    raise UnknownRole(f"no configuration for service {service!r}")


def scheduler_config(opts: NodeOptions, presets: dict[str, Preset]) -> SchedulerConfig:
    """The loop over every configuration: the first one's settings by default, each one's own
    for it (when there are several)."""
    p = next(iter(presets.values()))
    budget = msgspec.structs.replace(p.budget, budget=opts.eval_budget)
    if len(presets) == 1:
        return SchedulerConfig(opts.node_id, loop=p.loop, effects=p.effects, budget=budget)
    loop = msgspec.structs.replace(
        p.loop,
        games=tuple(presets),
        per_game={name: q.loop for name, q in presets.items()},
        weights={name: w for name, w in opts.weights.items() if name in presets},
    )
    by_game = {name: q.effects for name, q in presets.items()}
    return SchedulerConfig(
        opts.node_id, loop=loop, effects=p.effects, effects_by_game=by_game, budget=budget
    )


def bus_config(service: str, opts: NodeOptions) -> BusConfig:
    return BusConfig(
        servers=opts.nats_urls,
        name=f"{opts.node_id}/{service}",
        replicas=opts.replicas,
        domain=opts.domain,
        nkey_seed=creds_for(service, opts),
        tls_ca=opts.tls_ca,
        inbox_prefix=opts.inbox_prefix,
    )


def child_spec(service: str, opts: NodeOptions, python: str | None = None) -> ChildSpec:
    """`service`'s process, on `python` (default: this interpreter)."""
    proc = ProcessConfig(opts.node_id, service, bus_config(service, opts), log_level=opts.log_level)
    config = encode(service_config(service, opts)).decode()
    module = f"services.{names.service_kind(service)}"

    def argv(fd: int) -> list[str]:
        with_fd = encode(msgspec.structs.replace(proc, pulse_fd=fd)).decode()
        return python_module_argv(module, "--process", with_fd, "--config", config, python=python)

    log_path = Path(opts.log_dir) / f"{opts.node_id}-{service}.log" if opts.log_dir else None
    return ChildSpec(service, argv, log_path, restarts_told=True)


class MissingIdentity(ValueError):
    """The credentials directory has no identity for this node, or one without a role that one
    of its services needs."""


# The role a service's work needs its node's identity to carry (the heartbeat needs none).
SERVICE_ROLE: dict[str, Role] = {
    "leader": "coordinator",
    "scheduler": "coordinator",
    "selfplay": "selfplay",
    "trainer": "trainer",
    "evaluator": "evaluator",
    "syncer": "syncer",
}


def identity_roles(roles: list[str]) -> tuple[Role, ...]:
    """The roles the identity of a node running `roles` must carry (`conclave auth node`)."""
    kinds = {names.service_kind(s) for s in services_for(roles)}
    needed = {SERVICE_ROLE[kind] for kind in kinds if kind in SERVICE_ROLE}
    return tuple(role for role in ROLES if role in needed)


def creds_for(service: str, opts: NodeOptions) -> str | None:
    """The seed `service` connects with: one `--creds` file for all, or from a directory the
    node's own identity (`nodes/<node>.nk`), which must carry the service's role. There is no
    fallback to a shared role seed: a node without its identity, or whose identity lacks the
    role, is refused by name."""
    if opts.creds is None:
        return None
    path = Path(opts.creds)
    if not path.is_dir():
        return str(path)
    seed = node_seed_path(path, opts.node_id)
    if not seed.exists():
        raise MissingIdentity(f"no identity for node {opts.node_id} in {path}: {_fix(path, opts)}")
    role = SERVICE_ROLE.get(names.service_kind(service))
    if role is not None and role not in node_roles(path, opts.node_id):
        raise MissingIdentity(
            f"node {opts.node_id}'s identity in {path} does not carry role {role}, which its "
            f"service {service} needs: {_fix(path, opts, keep_key=True)}"
        )
    return str(seed)


def _fix(directory: Path, opts: NodeOptions, *, keep_key: bool = False) -> str:
    roles = ",".join(identity_roles(opts.roles))
    command = f"conclave auth node --out {directory} {opts.node_id}"
    command += (f" --roles {roles}" if roles else "") + (" --keep-key" if keep_key else "")
    return f"run `{command}` and reload the servers"


def check_identity(opts: NodeOptions) -> None:
    """Refuse to start a node any of whose services would have no identity to connect with."""
    for service in node_services(opts):
        creds_for(service, opts)


def syncer_config(opts: NodeOptions, cache: str) -> SyncerConfig:
    if not opts.archive.startswith("s3://"):
        return SyncerConfig(opts.node_id, cache, local_dir=str(Path(opts.archive).absolute()))
    bucket, _, prefix = opts.archive.removeprefix("s3://").partition("/")
    s3 = S3Config(
        bucket=bucket, prefix=prefix.strip("/") or "conclave", endpoint_url=opts.s3_endpoint
    )
    return SyncerConfig(opts.node_id, cache, s3=s3)


def build_children(opts: NodeOptions, python: str | None = None) -> list[Child]:
    """One supervised child per service; the processes of one kind (self-play's) share their
    kill record, so jobs of that kind dying on this node mark them all."""
    limits = Limits(stall_s=opts.limits_stall_s)
    records: dict[str, KillRecord] = {}
    return [
        Child(
            child_spec(s, opts, python),
            limits,
            record=records.setdefault(names.service_kind(s), KillRecord()),
        )
        for s in node_services(opts)
    ]


async def supervise(children: list[Child], stop: asyncio.Event) -> None:
    """Keep every child running until `stop`, then stop them all."""
    async with asyncio.TaskGroup() as tg:
        for child in children:
            tg.create_task(child.run(stop), name=f"supervise-{child.spec.name}")


class NodeServices:
    """The node's services, run as one generation of children after another: `restart` stops
    them all gracefully (the leader releases its lease) and starts new ones, on a new python
    after an upgrade."""

    def __init__(self, opts: NodeOptions, python: str | None) -> None:
        self.opts, self.python = opts, python
        self.children: list[Child] = []  # of every generation, for their history
        self._restart = asyncio.Event()
        self._started = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            current = build_children(self.opts, self.python)
            self.children += current
            self._restart.clear()
            generation = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_set_on_first(generation, stop, self._restart), name="generation")
                self._started.set()
                await supervise(current, generation)

    async def restart(self, python: str | None = None) -> None:
        """Stop every service and start them again (on `python`, if given); return once the
        new ones are spawned."""
        if python is not None:
            self.python = python
        self._started.clear()
        self._restart.set()
        await self._started.wait()


async def _set_on_first(target: asyncio.Event, *events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    target.set()


def fleet_state_dir(opts: NodeOptions) -> Path:
    """Where the launcher keeps its last fleet order and its upgrades."""
    return Path(opts.cache_dir) / opts.node_id / "fleet"


def control_for(opts: NodeOptions, services: NodeServices) -> Control:
    state = fleet_state_dir(opts)

    async def prepare(bus: Bus, order: FleetOrder) -> str:
        from shared.node import upgrade  # only when upgrading: it runs pip and a venv

        assert order.wheel is not None  # Control refuses an upgrade without one
        python = await upgrade.prepare(bus, order.wheel, state)
        await asyncio.to_thread(upgrade.record_switch, state, python)
        return python

    cfg = ControlOptions(
        node_id=opts.node_id,
        bus=bus_config("launcher", opts),
        state_dir=str(state),
        remote_upgrade=opts.remote_upgrade,
    )
    return Control(cfg, services.restart, prepare)


async def run_node(opts: NodeOptions, stop: asyncio.Event) -> list[Child]:
    """Supervise the node's services until `stop`, taking fleet orders (restart, upgrade)
    meanwhile; returns the children of every generation (for their history)."""
    if opts.log_dir:
        await asyncio.to_thread(Path(opts.log_dir).mkdir, parents=True, exist_ok=True)
    from shared.node.upgrade import current_python

    services = NodeServices(opts, await asyncio.to_thread(current_python, fleet_state_dir(opts)))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(control_for(opts, services).run(stop), name="fleet-control")
        await services.run(stop)
    return services.children


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def node_main(opts: NodeOptions) -> int:
    check_identity(opts)
    stop = asyncio.Event()
    stop_on_signals(stop)
    if not opts.via_leaf:
        _print_node(opts, ", ".join(opts.nats_urls))
        await run_node(opts, stop)
        return 0
    # Every service's traffic crosses the one link as the node's own identity (as it would
    # connect directly); replies come to that identity's inbox.
    link = creds_for("heartbeat", opts)
    leaf = LocalLeaf(
        opts.node_id,
        Path(opts.cache_dir) / opts.node_id / "leaf",
        opts.via_leaf,
        nkey_seed=link,
        ca_file=opts.tls_ca,
    )
    await leaf.start()
    opts = msgspec.structs.replace(
        opts,
        nats_urls=[leaf.url],
        domain=HUB_DOMAIN,
        creds=None,
        tls_ca=None,
        inbox_prefix=identity_inbox(link) if link else None,
    )
    _print_node(opts, f"{leaf.url}, a leaf server linked to {', '.join(opts.via_leaf)}")
    leaf_stop = asyncio.Event()  # the leaf outlives the services, so their goodbyes get out
    async with asyncio.TaskGroup() as tg:
        tg.create_task(leaf.keep_running(leaf_stop), name="leaf")
        try:
            await run_node(opts, stop)
        finally:
            leaf_stop.set()
    return 0


def _print_node(opts: NodeOptions, where: str) -> None:
    roles = ", ".join(opts.roles) or "-"
    print(f"node {opts.node_id}: roles {roles}; NATS {where}", flush=True)
