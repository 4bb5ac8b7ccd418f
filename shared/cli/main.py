"""The `conclave` command: parse arguments and environment once, then hand frozen config down."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from schemas import names
from shared.bus.client import BusConfig
from shared.bus.errors import BusError
from shared.learn.games import game_names
from shared.lease.quorum import LeaseParams
from shared.loop.presets import PRESETS, Preset
from shared.runtime import log as logsetup

if TYPE_CHECKING:
    from shared.auth.permissions import Role

DEFAULT_URL = "nats://127.0.0.1:4222"

Handler = Callable[[argparse.Namespace], int]


def _nats_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats",
        default=os.environ.get("CONCLAVE_NATS_URL", DEFAULT_URL),
        help="NATS URL(s), comma-separated (default: $CONCLAVE_NATS_URL, else local `up`)",
    )
    p.add_argument(
        "--creds",
        default=os.environ.get("CONCLAVE_CREDS"),
        help="an nkey seed file from `conclave auth` (default: $CONCLAVE_CREDS); for `node`, a "
        "directory holding the node's identity (`auth node`) runs every service as it",
    )
    p.add_argument(
        "--tls-ca",
        default=os.environ.get("CONCLAVE_TLS_CA"),
        help="verify the servers against this CA (`auth init --tls`; default: $CONCLAVE_TLS_CA)",
    )


def _client(args: argparse.Namespace, name: str, timeout_s: float = 5.0) -> BusConfig:
    """How a command-line client connects: built here, once, from the flags."""
    servers = [u.strip() for u in args.nats.split(",") if u.strip()]
    return BusConfig(
        servers=servers,
        name=name,
        connect_timeout_s=timeout_s,
        nkey_seed=args.creds,
        tls_ca=args.tls_ca,
    )


def _game_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--game", default=None, choices=game_names(), help="default: connect4")
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE.toml",
        help="train the configurations in FILE, each with its settings (instead of --game)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker process")
    p.add_argument(
        "--device",
        default="auto",
        help="where networks run: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N, mps",
    )
    p.add_argument(
        "--precision",
        default="auto",
        help="auto (bf16 or fp16 on CUDA, else fp32), fp32, bf16 or fp16",
    )
    p.add_argument(
        "--tier",
        default="auto",
        choices=["auto", *names.TIERS],
        help="the job tier this node's workers pull first (default: gpu for any GPU, else cpu)",
    )
    p.add_argument(
        "--memory-budget-mb",
        type=_positive_float,
        default=None,
        help="memory each self-play worker may use (default: 80%% of the node's, shared)",
    )
    p.add_argument(
        "--selfplay-workers",
        type=_positive_int,
        default=None,
        help="self-play processes on this node (default: one per usable core)",
    )
    p.add_argument(
        "--tune",
        action="append",
        default=[],
        metavar="SECTION.NAME=VALUE",
        help="change a preset setting, e.g. selfplay.full_search_fraction=0.25 (repeatable)",
    )
    p.add_argument(
        "--eval-budget",
        type=_share,
        default=0.15,
        help="most of the workers' CPU evaluation may use before rating and gauntlet games wait",
    )


class Games(NamedTuple):
    """What a node or `up` trains: one game, or the configurations of a `--config` file."""

    game: str
    configs: dict[str, Preset]
    weights: dict[str, float]


def _games(args: argparse.Namespace) -> Games:
    """`--game` or `--config` (a bad file stops here, with the key named)."""
    if args.config is None:
        return Games(args.game or "connect4", {}, {})
    if args.game is not None:
        raise SystemExit("conclave: give --game or --config, not both")
    from shared.loop.configfile import BadConfigFile, load

    try:
        configs = load(Path(args.config), args.tune)
    except BadConfigFile as e:
        raise SystemExit(f"conclave: --config {e}") from None
    return Games(next(iter(configs.presets)), configs.presets, configs.weights)


def _checked_tuning(preset_name: str, settings: list[str]) -> list[str]:
    """The `--tune` settings, once they apply to the preset (a bad one stops here, named)."""
    from shared.loop.presets import preset, tuned

    tuned(preset(preset_name), settings)
    return settings


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _lease_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lease-ttl", type=int, default=3, help="leader lease TTL, whole seconds")
    p.add_argument("--lease-renew", type=float, default=1.0, help="seconds between renewals")


def _lease(args: argparse.Namespace) -> LeaseParams:
    return LeaseParams(ttl_s=args.lease_ttl, renew_every_s=args.lease_renew)


def _checked_device(args: argparse.Namespace) -> None:
    """`--device`/`--precision` no node could run stop here, named (a missing GPU is found
    where the networks run)."""
    from shared.learn.device import check_names

    check_names(args.device, args.precision)


def cmd_node(args: argparse.Namespace) -> int:
    from shared.node import launcher

    _checked_device(args)
    games = _games(args)
    opts = launcher.NodeOptions(
        node_id=args.node_id or launcher.default_node_id(),
        roles=launcher.parse_roles(args.roles),
        nats_urls=[u.strip() for u in args.nats.split(",") if u.strip()],
        lease=_lease(args),
        replicas=args.replicas,
        log_dir=args.log_dir,
        log_level=args.log_level,
        game=games.game,
        configs=games.configs,
        weights=games.weights,
        cache_dir=str(Path(args.cache_dir).absolute()),
        threads=args.threads,
        device=args.device,
        precision=args.precision,
        tier=args.tier,
        memory_budget_mb=args.memory_budget_mb,
        archive=args.archive,
        s3_endpoint=args.s3_endpoint,
        via_leaf=[u.strip() for u in (args.via_leaf or "").split(",") if u.strip()],
        preset=args.preset,
        creds=str(Path(args.creds).absolute()) if args.creds else None,
        tls_ca=str(Path(args.tls_ca).absolute()) if args.tls_ca else None,
        eval_budget=args.eval_budget,
        selfplay_workers=args.selfplay_workers,
        tune=_checked_tuning(args.preset or games.game, args.tune),
        remote_upgrade=not args.no_remote_upgrade,
    )
    return asyncio.run(launcher.node_main(opts))


def cmd_up(args: argparse.Namespace) -> int:
    from shared.node import up

    _checked_device(args)
    games = _games(args)
    opts = up.UpOptions(
        data_dir=str(Path(args.data_dir).absolute()),
        nats_port=args.nats_port,
        no_train=args.no_train,
        lease=_lease(args),
        game=games.game,
        configs=games.configs,
        weights=games.weights,
        generations=args.generations,
        threads=args.threads,
        device=args.device,
        precision=args.precision,
        tier=args.tier,
        memory_budget_mb=args.memory_budget_mb,
        eval_budget=args.eval_budget,
        selfplay_workers=args.selfplay_workers,
        tune=_checked_tuning(games.game, args.tune),
        remote_upgrade=not args.no_remote_upgrade,
    )
    return asyncio.run(up.up_main(opts))


def cmd_soak(args: argparse.Namespace) -> int:
    from shared.soak import harness as soak

    opts = soak.SoakOptions(
        data_dir=str(Path(args.data_dir or Path(args.report) / "data").absolute()),
        report_dir=str(Path(args.report).absolute()),
        nodes=args.nodes,
        duration_s=soak.parse_duration(args.duration),
        chaos=args.chaos,
        seed=args.seed,
        fault_every_s=soak.parse_duration(args.fault_every),
        netns=args.netns,
        leader_kills=args.leader_kills,
        faults=soak.parse_faults(args.faults),
        upgrade_wheel=str(Path(args.upgrade_wheel).absolute()) if args.upgrade_wheel else "",
    )
    return asyncio.run(soak.soak_main(opts))


def cmd_auth(args: argparse.Namespace) -> int:
    from shared.auth import identities, permissions

    if args.auth_command == "table":
        print(permissions.capability_table())
        print(permissions.markdown_table(), end="")
        return 0
    out = Path(args.out)
    if args.auth_command == "node":
        roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
        kept = args.keep_key and identities.node_seed_path(out, args.node_id).exists()
        seed = identities.add_node(out, args.node_id, _known_roles(roles), keep_key=args.keep_key)
        what = "kept its key" if kept else "wrote its seed (owner-only)"
        print(f"node {args.node_id}: {what} {seed}; wrote {out / identities.ACCOUNTS_FILE}")
        hand_out = f"{identities.NODES_DIR}/{seed.name} and {identities.NODE_ROLES_FILE}"
        print(f"  node: its --creds directory needs {hand_out} from {out}, nothing else")
        print("  server: install the new accounts file and reload (nats-server --signal reload)")
        return 0
    hosts = ["127.0.0.1", "localhost", *args.host] if args.tls else None
    written = identities.init(out, tls_hosts=hosts)
    accounts = out / identities.ACCOUNTS_FILE
    print(f"wrote {len(written)} identities to {out} (seeds owner-only) and {accounts}")
    print("  server: add the accounts file to the hub's config; anonymous connections are refused")
    for role, path in written.items():
        print(f"  {role}: {path}")
    if args.tls:
        print(f"  TLS: CA and server certificate for {', '.join(hosts or [])} in {out / 'tls'}")
    return 0


def _known_roles(roles: tuple[str, ...]) -> tuple[Role, ...]:
    from shared.auth.permissions import ROLES

    known = [r for r in ROLES if r != "admin"]
    for role in roles:
        if role not in known:
            raise SystemExit(f"--roles: unknown role {role!r}; known: {', '.join(known)}")
    return tuple(r for r in known if r in roles)


def cmd_provision(args: argparse.Namespace) -> int:
    from shared.node.up import provision

    config = msgspec.structs.replace(_client(args, "provision"), replicas=args.replicas)
    asyncio.run(provision(config))
    print(f"provisioned every stream, bucket and object store ({args.replicas} replicas)")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from shared.cli.logs import LogQuery, logs_main

    query = LogQuery(args.node, args.service, args.level, args.follow, args.wait, args.json)
    return asyncio.run(logs_main(_client(args, "logs"), query))


def cmd_metrics(args: argparse.Namespace) -> int:
    from shared.cli.metrics import metrics_main

    return asyncio.run(metrics_main(_client(args, "metrics"), args.port, args.host))


def cmd_dashboard(args: argparse.Namespace) -> int:
    from shared.cli.dashboard import dashboard_main

    return asyncio.run(dashboard_main(_client(args, "dashboard"), args.port, args.host))


def cmd_report(args: argparse.Namespace) -> int:
    from shared.cli.report import report_main

    return asyncio.run(report_main(_client(args, "report"), args.game, Path(args.out).absolute()))


def cmd_status(args: argparse.Namespace) -> int:
    from shared.cli.status import status_main

    return asyncio.run(status_main(_client(args, "status"), args.json, args.watch))


def cmd_ratings(args: argparse.Namespace) -> int:
    from shared.cli.models import ratings_main

    return asyncio.run(ratings_main(_client(args, "cli"), args.game, args.json))


def cmd_export(args: argparse.Namespace) -> int:
    from shared.cli.models import export_main

    return asyncio.run(export_main(_client(args, "cli"), args.game, Path(args.out).absolute()))


def cmd_restore(args: argparse.Namespace) -> int:
    from shared.cli.restore import restore_main

    cache = Path(args.cache_dir).absolute()
    client = _client(args, "restore", timeout_s=10.0)
    return asyncio.run(restore_main(client, args.source, args.s3_endpoint, args.window, cache))


def cmd_games(args: argparse.Namespace) -> int:
    from shared.cli.games import games_main

    return games_main(args.json, sys.stdout)


def cmd_self_test(args: argparse.Namespace) -> int:
    from shared.cli.selftest import self_test_main

    return self_test_main(args.json, sys.stdout, sys.stderr)


def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.export import export

    written = export(Path(args.out))
    print(f"wrote {len(written)} schemas to {args.out}")
    return 0


def _upgrade_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-remote-upgrade",
        action="store_true",
        help="refuse `conclave fleet upgrade` (restarts are still taken)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conclave", description=__doc__)
    parser.add_argument("--log-level", default="warning")
    sub = parser.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run this machine's services for the given roles")
    node.add_argument("--roles", required=True, help="comma-separated, e.g. coordinator")
    node.add_argument("--node-id", default=None, help="default: the host name")
    node.add_argument("--replicas", type=int, default=1, help="stream replicas (3 on a cluster)")
    node.add_argument("--log-dir", default=None, help="service logs here instead of stderr")
    node.add_argument("--cache-dir", default="conclave-cache", help="verified model cache")
    node.add_argument(
        "--archive", default="conclave-archive", help="syncer target: s3://BUCKET/PREFIX or a dir"
    )
    node.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")
    node.add_argument(
        "--via-leaf",
        default=None,
        metavar="HUB_LEAF_URLS",
        help="behind NAT: run a local leaf server linked to these hub leaf URLs "
        "(comma-separated, e.g. nats://hub:7422) and connect through it; --nats is then unused",
    )
    node.add_argument(
        "--preset", default=None, choices=sorted(PRESETS), help="loop settings; default: --game's"
    )
    _game_options(node)
    _upgrade_option(node)
    _nats_option(node)
    _lease_options(node)
    node.set_defaults(handler=cmd_node)

    up = sub.add_parser("up", help="one-machine cluster: embedded NATS plus a node with every role")
    up.add_argument("--nats-port", type=int, default=4222)
    up.add_argument("--data-dir", default=str(Path.cwd() / "conclave-data"))
    up.add_argument("--no-train", action="store_true", help="control plane only")
    up.add_argument("--generations", type=int, default=None, help="stop after N promotions")
    _game_options(up)
    _upgrade_option(up)
    _lease_options(up)
    up.set_defaults(handler=cmd_up)

    status = sub.add_parser("status", help="nodes, leader and loop lag of a running cluster")
    _nats_option(status)
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", type=float, default=None, metavar="SECONDS")
    status.set_defaults(handler=cmd_status)

    logs = sub.add_parser("logs", help="services' log lines from the bus, any node")
    logs.add_argument("--follow", action="store_true", help="until Ctrl-C")
    logs.add_argument("--wait", type=float, default=5.0, help="without --follow: seconds")
    logs.add_argument("--node", default=None)
    logs.add_argument("--service", default=None)
    logs.add_argument("--level", default="info", choices=["debug", "info", "warning", "error"])
    logs.add_argument("--json", action="store_true", help="the JSON lines as they are")
    _nats_option(logs)
    logs.set_defaults(handler=cmd_logs)

    metrics = sub.add_parser("metrics", help="a Prometheus endpoint for the cluster, from the bus")
    metrics.add_argument("--port", type=int, default=9464)
    metrics.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    _nats_option(metrics)
    metrics.set_defaults(handler=cmd_metrics)

    board = sub.add_parser("dashboard", help="a live web page of the cluster, from the bus")
    board.add_argument("--port", type=int, default=8765)
    board.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    _nats_option(board)
    board.set_defaults(handler=cmd_dashboard)

    report = sub.add_parser("report", help="a run's charts (PNG) and a markdown summary")
    report.add_argument("--game", required=True)
    report.add_argument("--out", required=True, help="directory")
    _nats_option(report)
    report.set_defaults(handler=cmd_report)

    ratings = sub.add_parser("ratings", help="Bradley-Terry ratings of models and baselines")
    ratings.add_argument("--game", required=True)
    ratings.add_argument("--json", action="store_true")
    _nats_option(ratings)
    ratings.set_defaults(handler=cmd_ratings)

    models = sub.add_parser("models", help="the model registry")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    export = models_sub.add_parser("export", help="write the best checkpoint of a game to a file")
    export.add_argument("--game", required=True)
    export.add_argument("--out", required=True, help="directory")
    _nats_option(export)
    export.set_defaults(handler=cmd_export)

    restore = sub.add_parser("restore", help="bring an archive back into a (fresh) cluster")
    restore.add_argument("--from", dest="source", required=True, help="s3://BUCKET/PREFIX or a dir")
    restore.add_argument("--s3-endpoint", default=None)
    restore.add_argument("--window", type=int, default=20000, help="newest games to republish")
    restore.add_argument("--cache-dir", default="conclave-cache")
    _nats_option(restore)
    restore.set_defaults(handler=cmd_restore)

    auth = sub.add_parser("auth", help="per-role NATS identities and permissions")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    init = auth_sub.add_parser("init", help="an nkey per role and the server's accounts block")
    init.add_argument("--out", required=True, help="directory for the seeds and accounts.conf")
    init.add_argument("--tls", action="store_true", help="also a CA and a server certificate")
    init.add_argument(
        "--host", action="append", default=[], help="a name or address the servers are reached by"
    )
    node_auth = auth_sub.add_parser(
        "node", help="a node's own identity, which all its services run as; rewrites accounts.conf"
    )
    node_auth.add_argument("node_id", help="the node's --node-id")
    node_auth.add_argument("--out", required=True, help="the `auth init` directory")
    node_auth.add_argument(
        "--roles", default="", help="the roles the node runs, e.g. selfplay,evaluator"
    )
    node_auth.add_argument(
        "--keep-key", action="store_true", help="an existing identity keeps its key: roles only"
    )
    auth_sub.add_parser("table", help="print who may do what, and every identity's permissions")
    auth.set_defaults(handler=cmd_auth)

    provision = sub.add_parser(
        "provision", help="create or update every stream, bucket and object store (as admin)"
    )
    provision.add_argument("--replicas", type=int, default=1, help="3 on a cluster")
    _nats_option(provision)
    provision.set_defaults(handler=cmd_provision)

    soak = sub.add_parser("soak", help="N nodes on a 3-server hub, faults, and a report")
    soak.add_argument("--nodes", type=int, default=24)
    soak.add_argument("--duration", default="30m", help="e.g. 90s, 30m, 4h")
    soak.add_argument("--chaos", action="store_true", help="inject faults on a schedule")
    soak.add_argument("--fault-every", default="30s", help="time between faults")
    soak.add_argument("--report", required=True, help="directory for the report")
    soak.add_argument(
        "--data-dir", default=None, help="servers' and nodes' files (default: REPORT/data)"
    )
    soak.add_argument("--seed", type=int, default=0)
    soak.add_argument(
        "--netns",
        choices=["auto", "on", "off"],
        default="auto",
        help="leaf nodes in network namespaces, so a network cut is a real one (needs root)",
    )
    soak.add_argument(
        "--leader-kills",
        type=float,
        default=0.0,
        help="share (0-1) of node kills aimed at the leader's node, to exercise failovers",
    )
    soak.add_argument(
        "--faults",
        default="default",
        help="fault kinds the chaos cycles through, comma-separated: kill-service, "
        "stop-service, kill-node, cut-network, kill-server (these five: 'default'), "
        "kill-leader-node, drain, rolling-restart, rolling-upgrade; 'all' for all nine",
    )
    soak.add_argument(
        "--upgrade-wheel",
        default=None,
        metavar="PATH",
        help="rolling-upgrade's conclave wheel (default: one built a patch version up)",
    )
    soak.set_defaults(handler=cmd_soak)

    games = sub.add_parser("games", help="the games this machine can play, built-in or installed")
    games.add_argument("--json", action="store_true")
    games.set_defaults(handler=cmd_games)

    schemas = sub.add_parser("schemas", help="export JSON Schema for every wire message")
    schemas.add_argument("--out", required=True)
    schemas.set_defaults(handler=cmd_schemas)

    self_test = sub.add_parser(
        "self-test", help="check this installation: every module imports, a game is played"
    )
    self_test.add_argument("--json", action="store_true")
    self_test.set_defaults(handler=cmd_self_test)

    _add_bestmove(sub)
    _add_play(sub)
    _add_fleet(sub)
    return parser


def _add_bestmove(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from shared.cli import bestmove

    p = sub.add_parser("bestmove", help="choose moves for positions read from stdin")
    bestmove.add_arguments(p)
    p.set_defaults(handler=lambda a: bestmove.run(a, sys.stdin, sys.stdout))


def cmd_play(args: argparse.Namespace) -> int:
    from shared.cli.play import play_main

    cluster = None if args.checkpoint else _client(args, "play")
    return play_main(args, cluster, sys.stdin, sys.stdout)


def _add_play(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from shared.cli import play as play_cli

    p = sub.add_parser("play", help="play the best model in the terminal")
    play_cli.add_arguments(p)
    _nats_option(p)
    p.set_defaults(handler=cmd_play)


def cmd_fleet(args: argparse.Namespace) -> int:
    import getpass
    import socket

    from shared.cli.fleet import FleetRequest, fleet_main, issuer

    request = FleetRequest(
        verb=args.fleet_command,
        node=getattr(args, "node", ""),
        reason=getattr(args, "reason", ""),
        issued_by=issuer(args.creds, getpass.getuser(), socket.gethostname()),
        as_json=getattr(args, "json", False),
        wait_s=getattr(args, "wait", 0.0),
    )
    if args.fleet_command in ("restart", "upgrade"):
        return _fleet_order(args, request.issued_by)
    return asyncio.run(fleet_main(_client(args, "fleet"), request))


def _fleet_order(args: argparse.Namespace, issued_by: str) -> int:
    from shared.cli.fleetorders import OrderRequest, run_orders

    request = OrderRequest(
        action=args.fleet_command,
        nodes=args.nodes,
        role=args.role or "",
        rolling=args.rolling,
        wheel=getattr(args, "wheel", ""),
        reason=args.reason,
        issued_by=issued_by,
        timeout_s=args.timeout,
    )
    return asyncio.run(run_orders(_client(args, "fleet"), request))


def _add_fleet(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = sub.add_parser(
        "fleet", help="the nodes over the bus: list, drain, resume, restart, upgrade (admin)"
    )
    verbs = fleet.add_subparsers(dest="fleet_command", required=True)
    ls = verbs.add_parser(
        "ls", help="every node: roles, version, protocol, devices, uptime, round trip, state"
    )
    ls.add_argument("--json", action="store_true")
    _nats_option(ls)
    for verb, what in (
        ("drain", "finish its current jobs and take no new ones"),
        ("resume", "take jobs again"),
    ):
        p = verbs.add_parser(verb, help=f"NODE: {what} (admin only; audited)")
        p.add_argument("node", help="the node's --node-id")
        p.add_argument("--reason", default="", help="kept with the command and its audit event")
        p.add_argument(
            "--wait",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="wait this long for the node to show it (0: do not wait)",
        )
        _nats_option(p)
    for verb, what in (
        ("restart", "restart their services (the leader's lease is released first)"),
        ("upgrade", "install --wheel beside the running version, self-test it, switch to it"),
    ):
        p = verbs.add_parser(verb, help=f"[NODE ...]: {what} (admin only; audited)")
        p.add_argument("nodes", nargs="*", help="default: every live node (with --role)")
        p.add_argument("--role", default=None, help="every live node with this role")
        p.add_argument("--rolling", action="store_true", help="one node at a time, when healthy")
        p.add_argument("--reason", default="", help="kept with the order and its audit event")
        p.add_argument(
            "--timeout",
            type=float,
            default=300.0,
            metavar="SECONDS",
            help="for each node to be healthy again",
        )
        if verb == "upgrade":
            p.add_argument("--wheel", required=True, help="the conclave wheel to install")
        _nats_option(p)
    fleet.set_defaults(handler=cmd_fleet)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logsetup.setup(args.log_level, service="cli")
    handler: Handler = args.handler
    try:
        from shared.cli.credentials import check

        refused = check(args)  # one line naming the credential, not a connect timeout
        if refused is not None:
            print(refused, file=sys.stderr)
            return 1
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except ValueError as e:
        print(f"conclave {args.command}: {e}", file=sys.stderr)
        return 2
    except BusError as e:
        print(f"conclave {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
