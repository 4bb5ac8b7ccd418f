"""`conclave up`: an embedded NATS server plus one node with every role, with live progress.

Everything lives in the data directory (the JetStream store, identities, run files), so `up` on
an existing one continues that run: the loop state, games, models and results are all there.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from schemas.codec import BadMessage
from shared.auth.identities import ACCOUNTS_FILE, add_node, init, seed_path
from shared.auth.permissions import Role
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import BusError
from shared.bus.server import NatsServer, ServerSpec
from shared.lease.quorum import LeaseParams
from shared.loop.evalplan import EvalBudget
from shared.loop.presets import Preset
from shared.node.console import Console, run_summary
from shared.node.launcher import LOOP_ROLES, NodeOptions, identity_roles, run_node, stop_on_signals


class UpOptions(msgspec.Struct, frozen=True):
    data_dir: str
    nats_port: int = 4222
    no_train: bool = False
    node_id: str = "local"
    lease: LeaseParams = LeaseParams()
    game: str = "connect4"
    generations: int | None = None
    threads: int = 1
    device: str = "auto"  # shared.learn.device
    precision: str = "auto"
    tier: str = "auto"  # schemas.names.TIERS
    memory_budget_mb: float | None = None
    progress_every_s: float = 10.0
    eval_budget: float = EvalBudget().budget
    selfplay_workers: int | None = None  # None: one per usable core
    tune: list[str] = []  # preset changes (shared.loop.presets.tuned)
    configs: dict[str, Preset] = {}  # `--config`: several configurations (shared.loop.configfile)
    weights: dict[str, float] = {}
    remote_upgrade: bool = True  # `--no-remote-upgrade`: refuse `conclave fleet upgrade`

    @property
    def games(self) -> list[str]:
        return list(self.configs) or [self.game]


async def up_main(opts: UpOptions) -> int:
    """Run until Ctrl-C, SIGTERM, or `generations` promotions; then stop everything."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    data = Path(opts.data_dir)
    roles = ["control"] if opts.no_train else list(LOOP_ROLES)
    carried = identity_roles(roles)
    auth = await asyncio.to_thread(local_identities, data / "auth", opts.node_id, carried)
    spec = ServerSpec("conclave", data / "nats", port=opts.nats_port, auth=auth)
    server = NatsServer(spec)
    await asyncio.to_thread(server.start)
    try:
        node = NodeOptions(
            node_id=opts.node_id,
            roles=roles,
            nats_urls=[server.url],
            lease=opts.lease,
            log_dir=str(data / "logs"),
            game=opts.game,
            cache_dir=str(data / "cache"),
            archive=str(data / "archive"),
            threads=opts.threads,
            device=opts.device,
            precision=opts.precision,
            tier=opts.tier,
            memory_budget_mb=opts.memory_budget_mb,
            creds=str(data / "auth"),
            eval_budget=opts.eval_budget,
            selfplay_workers=opts.selfplay_workers,
            tune=opts.tune,
            configs=opts.configs,
            weights=opts.weights,
            remote_upgrade=opts.remote_upgrade,
        )
        _print_where(server, data, opts)
        admin = str(seed_path(data / "auth", "admin"))
        await provision(BusConfig(servers=[server.url], name="up-provision", nkey_seed=admin))
        if not opts.no_train:
            start = BusConfig(servers=[server.url], name="up-start", nkey_seed=admin)
            for game in opts.games:
                await _say_where_it_starts(start, game, data)
        consoles = [
            Console(
                BusConfig(servers=[server.url], name=f"up-console-{game}", nkey_seed=admin),
                data,
                game,
                opts.generations,
                opts.progress_every_s,
            )
            for game in opts.games
        ]
        async with asyncio.TaskGroup() as tg:
            finished = []
            for console in consoles:
                done = asyncio.Event()
                finished.append(done)
                training = not opts.no_train
                tg.create_task(console.run(stop, training, done), name=f"console-{console.game}")
            tg.create_task(_stop_when_all(finished, stop), name="generations")
            await run_node(node, stop)
    finally:
        await asyncio.to_thread(server.stop)
    print("conclave stopped", flush=True)
    return 0


async def _stop_when_all(finished: list[asyncio.Event], stop: asyncio.Event) -> None:
    """Stop once every configuration has promoted its `--generations` (or on `stop`)."""

    async def all_done() -> None:
        for done in finished:
            await done.wait()

    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(all_done())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    stop.set()


def local_identities(directory: Path, node_id: str, roles: tuple[Role, ...]) -> str:
    """This data directory's identities as the server's accounts block: the role and admin
    seeds (made on first use) and the node's, which every one of its services runs as, carrying
    `roles` (what it runs now; its key is kept). Rewritten from the seeds, so it grants what
    this build's permissions say."""
    if not (directory / ACCOUNTS_FILE).exists():
        init(directory)
    add_node(directory, node_id, roles, keep_key=True)  # rewrites the accounts block
    return (directory / ACCOUNTS_FILE).read_text()


async def provision(config: BusConfig) -> None:
    """Create or update every stream, bucket and object store as admin: no service may."""
    bus = await NatsBus.connect(config)
    try:
        await bus.provision()
    finally:
        await bus.close()


async def _say_where_it_starts(config: BusConfig, game: str, data: Path) -> None:
    """Print whether this data directory's run of `game` resumes (from which generation)."""
    try:
        bus = await NatsBus.connect(config)
        try:
            print(await run_summary(bus, game, data), flush=True)
        finally:
            await bus.close()
    except (BusError, BadMessage) as e:
        print(f"  run state not read: {e}", flush=True)


def _print_where(server: NatsServer, data: Path, opts: UpOptions) -> None:
    print(f"conclave up: NATS {server.url} (monitor {server.monitor_url})", flush=True)
    print(f"  data {data}; service logs {data / 'logs'}", flush=True)
    admin = seed_path(data / "auth", "admin")
    print(f"  identities (auth on): {data / 'auth'}", flush=True)
    print(f"  status: conclave status --nats {server.url} --creds {admin}", flush=True)
    if opts.no_train:
        print("  control plane only (--no-train)", flush=True)
    else:
        until = f" for {opts.generations} generations" if opts.generations else ""
        games = ", ".join(opts.games)
        print(f"  training {games}{until}; checkpoints in {data / 'run'}", flush=True)
        print(f"  archive (the S3 layout, on disk): {data / 'archive'}", flush=True)
