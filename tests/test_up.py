"""`conclave up` end to end: a leader is elected, `conclave status` shows it, every service
connects as the node's own identity, SIGTERM stops all."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from shared.auth.identities import node_seed_path, public_key
from shared.bus.server import free_port, pid_alive
from tests.conftest import Processes, eventually
from tests.test_node import _children_of, _is_zombie


def conclave(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "shared.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


async def test_up_elects_a_leader_that_status_reports_and_stops_cleanly(
    processes: Processes, tmp_path: Path
) -> None:
    port = free_port()
    out = tmp_path / "up.out"
    up = processes.spawn(
        [
            sys.executable,
            "-m",
            "shared.cli.main",
            "up",
            "--data-dir",
            str(tmp_path / "data"),
            "--nats-port",
            str(port),
            "--no-train",
        ],
        out,
    )
    await eventually(lambda: "leader elected" in out.read_text(), 60, what="leader elected")
    url = f"nats://127.0.0.1:{port}"
    admin = str(tmp_path / "data" / "auth" / "admin.nk")
    anonymous = conclave("status", "--nats", url, "--json")
    assert anonymous.returncode != 0  # auth is on by default: no identity, no answer
    report = json.loads(conclave("status", "--nats", url, "--json", "--creds", admin).stdout)
    assert report["leader"]["node"] == "local" and report["leader"]["term"] >= 1
    assert report["leader"]["since"] > 0
    assert report["nats"]["url"] == url and url in report["nats"]["servers"]
    node = report["nodes"][0]
    assert node["id"] == "local" and node["alive"] and node["roles"] == ["control"]
    assert isinstance(node["loop_lag_ms"], float)

    def every_service_answers_ping() -> bool:
        status = json.loads(conclave("status", "--nats", url, "--json", "--creds", admin).stdout)
        return all(s["answers_ping"] for s in status["nodes"][0]["services"])

    await eventually(every_service_answers_ping, 30, every=1.0, what="micro discovery in status")
    text = conclave("status", "--nats", url, "--creds", admin).stdout
    assert "leader: local" in text and "nodes alive: 1/1" in text
    assert connected_as(out.read_text()) == {
        "local/heartbeat": node_key(tmp_path / "data" / "auth", "local"),
        "local/leader": node_key(tmp_path / "data" / "auth", "local"),
        "local/launcher": node_key(tmp_path / "data" / "auth", "local"),  # its fleet orders
    }

    children = _children_of(up.pid, 3) or []
    up.send_signal(signal.SIGTERM)
    assert up.wait(30) == 0
    assert "conclave stopped" in out.read_text()
    assert not [p for p in children if pid_alive(p) and not _is_zombie(p)]


def connected_as(up_output: str) -> dict[str, str]:
    """Each of the node's connections (by name) and the key it authenticated with, from the
    monitor `conclave up` printed."""
    [monitor] = re.findall(r"\(monitor (http://[^)]+)\)", up_output)
    with urllib.request.urlopen(f"{monitor}/connz?auth=true", timeout=5) as reply:
        connections = json.load(reply)["connections"]
    return {
        c["name"]: c["authorized_user"]
        for c in connections
        if c.get("name", "").startswith("local/")
    }


def node_key(auth: Path, node_id: str) -> str:
    return public_key(node_seed_path(auth, node_id).read_bytes())


def test_status_without_a_cluster_fails_fast_with_a_clear_message() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = conclave("status", "--nats", url)
    assert result.returncode == 1 and "cannot connect" in result.stderr and url in result.stderr


def test_unknown_role_is_refused_by_name() -> None:
    result = conclave("node", "--roles", "coordinator,wizard", "--nats", "nats://127.0.0.1:1")
    assert result.returncode == 2 and "wizard" in result.stderr
