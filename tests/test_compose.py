"""compose.yaml and the Dockerfile, checked without Docker: every command line parses with the CLI
it runs, every file and volume named exists, auth is on with an identity per node carrying its
roles, servers and nodes have healthchecks, the archive is on a volume and the leaf port is
published; the hub configs are the ones the cluster template renders."""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from shared.auth.identities import ACCOUNTS_FILE, add_node, init, node_seed_path
from shared.bus.client import BusConfig, NatsBus
from shared.bus.server import (
    COMPOSE_ACCOUNTS,
    COMPOSE_SERVERS,
    NatsServer,
    ServerSpec,
    compose_config,
)
from shared.cli.main import build_parser
from shared.node import health
from shared.node.launcher import LOOP_ROLES, ROLE_SERVICES, identity_roles, parse_roles

ROOT = Path(__file__).resolve().parents[1]
LEAF_PORT = 7422
ONE_SHOT = {"init", "provision"}  # run to completion before the others start


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def running() -> dict[str, dict[str, Any]]:
    """The long-running services `docker compose up` starts (no one-shot, no profile)."""
    return {
        name: s for name, s in services().items() if name not in ONE_SHOT and "profiles" not in s
    }


def command_lines(service: dict[str, Any]) -> Iterator[list[str]]:
    """Every command a service runs: its exec-form command, or each command of its shell
    script (split at newlines, `;`, `&&` and `||`)."""
    command = service.get("command", [])
    if command[:1] != ["sh"]:
        yield command
        return
    for line in command[-1].splitlines():
        for part in re.split(r"\|\||&&|;", line):
            if part.strip():
                yield shlex.split(part)


def conclave_lines() -> Iterator[tuple[str, list[str]]]:
    for name, service in services().items():
        for line in command_lines(service):
            if line[:1] == ["conclave"]:
                yield name, line[1:]


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume, or a host path starting with `.`)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def test_every_conclave_command_line_parses_with_the_cli() -> None:
    parser = build_parser()
    for name, argv in conclave_lines():
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: `conclave {shlex.join(argv)}` does not parse")
        if args.command == "node":
            parse_roles(args.roles)  # an unknown role is refused by name
    for name, service in services().items():
        for line in command_lines(service):
            assert line[0] in {"conclave", "nats-server", "test"}, f"{name} runs {line}"
    for name, service in running().items():
        assert name in COMPOSE_SERVERS or service["command"][0] == "conclave", name


def test_every_healthcheck_runs_something_that_exists() -> None:
    for name, service in services().items():
        test = service.get("healthcheck", {}).get("test", [])
        if not test:
            continue
        assert test[0] == "CMD" and test[1] == "python", f"{name}: {test}"
        if test[2] == "-c":
            compile(test[3], f"{name} healthcheck", "exec")
        else:
            assert test[2] == "-m" and importlib.util.find_spec(test[3]) is not None, name
            assert test[3] == "shared.node.health"
            health.build_parser().parse_args(test[4:])


def test_servers_and_nodes_have_healthchecks_and_nodes_wait_for_the_provisioned_hub() -> None:
    for name, service in running().items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
    for name in COMPOSE_SERVERS:
        assert "healthz" in str(services()[name]["healthcheck"]["test"])
    depends = services()["provision"]["depends_on"]
    assert {s: depends[s]["condition"] for s in COMPOSE_SERVERS} == dict.fromkeys(
        COMPOSE_SERVERS, "service_healthy"
    )
    for name, argv in conclave_lines():
        if argv[0] == "node":
            condition = services()[name]["depends_on"]["provision"]["condition"]
            assert condition == "service_completed_successfully", name


def test_node_healthchecks_name_the_node_their_command_runs() -> None:
    for name, argv in conclave_lines():
        if argv[0] == "node":
            test = services()[name]["healthcheck"]["test"]
            assert option(test, "--node-id") == option(argv, "--node-id"), name
            monitors = option(test, "--monitor") or ""
            assert monitors.split(",") == [f"http://{s}:8222" for s in COMPOSE_SERVERS]


def test_every_mounted_file_and_volume_exists_and_every_volume_is_used() -> None:
    declared = set(compose()["volumes"])
    used = set()
    for name, service in services().items():
        for target, source in mounts(service).items():
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} mounts undeclared volume {source} at {target}"
                used.add(source)
        if service.get("build"):
            assert (ROOT / service["build"] / "Dockerfile").is_file()
    assert used == declared, f"declared but unused: {declared - used}"


def test_hub_configs_match_the_cluster_template_and_include_the_generated_accounts() -> None:
    for server in COMPOSE_SERVERS:
        service = services()[server]
        assert service["command"] == ["nats-server", "-c", f"/etc/nats/{server}.conf"]
        committed = (ROOT / "nats" / "compose" / f"{server}.conf").read_text()
        assert committed == compose_config(server), f"nats/compose/{server}.conf is stale"
        assert mounts(service)[f"/etc/nats/{server}.conf"] == f"./nats/compose/{server}.conf"
        # nats-server resolves the include beside the config: the identities volume is there.
        accounts_dir = str(PurePosixPath("/etc/nats") / PurePosixPath(COMPOSE_ACCOUNTS).parent)
        assert mounts(service)[accounts_dir] == "auth"
        assert f'include "{COMPOSE_ACCOUNTS}"' in committed
        assert PurePosixPath(COMPOSE_ACCOUNTS).name == ACCOUNTS_FILE


def test_auth_is_on_and_each_node_runs_as_its_own_identity_carrying_its_roles() -> None:
    init_lines = [argv for name, argv in conclave_lines() if name == "init"]
    assert ["auth", "init", "--out", "/auth"] in init_lines
    parsed = [
        build_parser().parse_args(argv) for argv in init_lines if argv[:2] == ["auth", "node"]
    ]
    made = {args.node_id: set(args.roles.split(",")) for args in parsed}
    assert all(option(argv, "--out") == "/auth" for argv in init_lines)
    nodes = 0
    for name, argv in conclave_lines():
        if argv[0] != "node":
            continue
        node_id, creds = option(argv, "--node-id"), option(argv, "--creds")
        assert node_id in made, f"{name}: no identity made for node {node_id}"
        assert set(identity_roles(parse_roles(option(argv, "--roles") or ""))) <= made[node_id]
        assert creds is not None and mounts(services()[name])[creds] == "auth", name
        nodes += 1
    assert nodes == len(made)
    provision = dict(conclave_lines())["provision"]
    assert provision[0] == "provision" and option(provision, "--creds") == "/auth/admin.nk"


def test_every_role_named_is_a_known_role_and_the_loop_is_complete() -> None:
    roles_seen: set[str] = set()
    for _, argv in conclave_lines():
        if argv[0] == "node":
            roles = set((option(argv, "--roles") or "").split(","))
            assert roles <= set(ROLE_SERVICES), roles
            roles_seen |= roles
    assert roles_seen >= set(LOOP_ROLES), "compose should run every role of the loop"


def test_the_archive_is_on_a_volume_and_the_leaf_port_is_published() -> None:
    archives = [
        (name, option(argv, "--archive"))
        for name, argv in conclave_lines()
        if argv[0] == "node" and "syncer" in (option(argv, "--roles") or "")
    ]
    assert archives
    for name, archive in archives:
        assert archive is not None and not mounts(services()[name])[archive].startswith(".")
    published = [
        port for s in services().values() for port in s.get("ports", []) if port.endswith(":7422")
    ]
    assert published, f"no service publishes the leaf port {LEAF_PORT}"


def test_the_dockerfile_builds_the_wheel_with_cpu_torch_at_the_pinned_version() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = [d for d in project["dependencies"] if d.startswith("torch")]
    assert pinned == [f"torch=={arg(dockerfile, 'TORCH_VERSION')}"]
    assert arg(dockerfile, "TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert "setup.py" in dockerfile, "the C solver is built by setup.py"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "**/*.so"} <= set(ignored)


def arg(dockerfile: str, name: str) -> str:
    [value] = re.findall(rf"^ARG {name}=(\S+)$", dockerfile, re.MULTILINE)
    return value


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    auth = tmp_path / "auth"
    init(auth)
    add_node(auth, "w1", ("selfplay",))
    accounts = (auth / ACCOUNTS_FILE).read_text()
    server = NatsServer(ServerSpec("hub", tmp_path / "server", auth=accounts)).start()
    try:
        yield server, auth
    finally:
        server.kill()


async def test_the_node_healthcheck_sees_the_nodes_heartbeat_on_the_hub(
    secured: tuple[NatsServer, Path],
) -> None:
    server, auth = secured
    seed = str(node_seed_path(auth, "w1"))
    monitors = [server.monitor_url, "http://127.0.0.1:1"]  # a server that is down is left out
    assert not health.heartbeat_connected(health.connz_pages(monitors), "w1")
    bus = await NatsBus.connect(BusConfig([server.url], "w1/heartbeat", nkey_seed=seed))
    try:
        pages = health.connz_pages(monitors)
        assert health.heartbeat_connected(pages, "w1")
        assert not health.heartbeat_connected(pages, "w2")
    finally:
        await bus.close()
