"""A server refusing a command's credentials: one line naming the credential to pass, at once,
not a connect timeout; accepted and unreachable servers let the command go on."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.auth.identities import ACCOUNTS_FILE, add_node, init, new_seed, write_seed
from shared.bus.authprobe import is_auth_refusal
from shared.bus.server import NatsServer, ServerSpec, free_port
from shared.cli.credentials import NodeIdentity, check, refused_line
from shared.cli.main import build_parser

CONNECT_TIMEOUT_S = 5.0  # the CLI clients' (`_client`): a refusal must come well before it


@pytest.fixture
def auth(tmp_path: Path) -> Path:
    directory = tmp_path / "auth"
    init(directory)
    add_node(directory, "w1", ("selfplay",))
    return directory


@pytest.fixture
def secured(tmp_path: Path, auth: Path) -> Iterator[NatsServer]:
    accounts = (auth / ACCOUNTS_FILE).read_text()
    server = NatsServer(ServerSpec("secured", tmp_path / "server", auth=accounts)).start()
    try:
        yield server
    finally:
        server.kill()


def conclave(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - started


def checked(*argv: str) -> str | None:
    return check(build_parser().parse_args(list(argv)))


def test_status_without_creds_says_in_one_line_to_pass_the_admin_seed(
    secured: NatsServer,
) -> None:
    result, took = conclave("status", "--nats", secured.url, "--json")
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()  # nothing else: no retries logged, no traceback
    assert line.startswith(f"conclave status: {secured.url} refused a connection without")
    assert "--creds <data>/auth/admin.nk" in line and "Authorization Violation" in line
    assert took < CONNECT_TIMEOUT_S, "a refusal is known at once; it is not a timeout"


def test_a_node_without_its_identity_is_told_the_command_that_makes_it(
    secured: NatsServer,
) -> None:
    result, _ = conclave("node", "--roles", "selfplay", "--node-id", "w1", "--nats", secured.url)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "pass --creds DIR" in line
    assert "`conclave auth node --out DIR w1 --roles selfplay`" in line


def test_a_seed_the_servers_do_not_know_is_named_with_the_one_to_pass(
    secured: NatsServer, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.nk"
    write_seed(stranger, new_seed())
    line = checked("status", "--nats", secured.url, "--creds", str(stranger))
    assert line is not None
    assert f"refused the identity in {stranger}" in line and "--creds <data>/auth/admin.nk" in line


def test_a_node_identity_from_other_identities_says_to_install_and_reload(
    secured: NatsServer, tmp_path: Path
) -> None:
    other = tmp_path / "other-auth"
    add_node(other, "w1", ("selfplay",))  # the same node, but not the servers' identities
    node = ["node", "--roles", "selfplay", "--node-id", "w1", "--creds", str(other)]
    line = checked(*node, "--nats", secured.url)
    assert line is not None
    assert f"node w1's identity {other / 'nodes' / 'w1.nk'}" in line
    assert f"install {other / ACCOUNTS_FILE}" in line and "reload" in line


def test_known_identities_and_unreachable_servers_go_on(secured: NatsServer, auth: Path) -> None:
    assert checked("status", "--nats", secured.url, "--creds", str(auth / "admin.nk")) is None
    node = ["node", "--roles", "selfplay", "--node-id", "w1", "--creds", str(auth)]
    assert checked(*node, "--nats", secured.url) is None
    nobody = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert checked("status", "--nats", nobody) is None  # the command's own connect says why
    assert time.monotonic() - started < CONNECT_TIMEOUT_S
    assert checked("play", "--game", "tictactoe", "--checkpoint", "x.pt") is None  # no cluster


def test_a_server_without_auth_accepts_anyone(tmp_path: Path) -> None:
    server = NatsServer(ServerSpec("open", tmp_path / "open")).start()
    try:
        assert checked("status", "--nats", server.url) is None
    finally:
        server.kill()


def test_only_an_authorization_error_counts_as_a_refusal() -> None:
    assert is_auth_refusal("nats: 'Authorization Violation'")
    assert is_auth_refusal("nats: authorization failed")  # nats-py's AuthorizationError
    assert not is_auth_refusal("nats: no servers available for connection")


def test_every_refusal_is_one_line_naming_the_flag() -> None:
    cases = [
        (None, None),
        ("seed.nk", None),  # a client's seed, or a node's one seed file
        (None, NodeIdentity("w1", None, "selfplay")),
        ("auth", NodeIdentity("w1", "auth", "selfplay")),
    ]
    for (creds, node), command in itertools.product(cases, ["node", "status"]):
        if (node is not None) != (command == "node") and (creds, node) != ("seed.nk", None):
            continue  # a node always has a NodeIdentity, but with one seed file for --creds
        refusal = "nats: 'Authorization Violation'"
        line = refused_line(command, "nats://h:4222", creds, node, refusal)
        assert "\n" not in line and "--creds" in line and "nats://h:4222" in line, line
        assert line.startswith(f"conclave {command}: ") and refusal in line
        assert (command == "node") != ("admin.nk" in line), line  # never admin's to a node
