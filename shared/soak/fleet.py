"""The soak's processes: a 3-server hub and N `conclave node` launchers, some behind leaf servers
(each in its own network namespace when the machine allows, see `shared.soak.netns`).

Every process is started here and stopped here by PID (launchers in their own session, so a
node's whole process group can be killed at once). Nothing in this module talks to NATS.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shared.bus.server import NatsCluster, NatsServer
from shared.soak.netns import Namespaces
from shared.soak.record import NodeSpec

ROOT = Path(__file__).resolve().parents[2]
NETNS_TAG_FILE = "netns.tag"  # in the data dir: which namespaces and bridge are this run's
FIXED_ROLES = (
    ("coordinator",),
    ("coordinator",),
    ("trainer",),
    ("evaluator",),
    ("syncer",),
)


def plan_nodes(count: int, leaf_every: int = 4) -> list[NodeSpec]:
    """Two coordinators, a trainer, an evaluator and a syncer, then self-play nodes; one
    coordinator and every `leaf_every`-th self-play node connect through a leaf server."""
    if count < len(FIXED_ROLES) + 1:
        raise ValueError(f"a soak needs at least {len(FIXED_ROLES) + 1} nodes, got {count}")
    specs = []
    for i in range(count):
        roles = list(FIXED_ROLES[i]) if i < len(FIXED_ROLES) else ["selfplay"]
        selfplay_index = i - len(FIXED_ROLES)
        via_leaf = i == 1 or (selfplay_index >= 0 and selfplay_index % leaf_every == leaf_every - 1)
        specs.append(NodeSpec(f"n{i + 1:02d}", roles, via_leaf))
    return specs


@dataclass
class NodeProcess:
    spec: NodeSpec
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Fleet:
    """The hub and the nodes of one soak run, under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        specs: list[NodeSpec],
        lease_ttl_s: int = 3,
        netns: Namespaces | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.netns = netns
        leaf_host = netns.host_ip if netns is not None else ""
        self.hub = NatsCluster.create(data_dir / "hub", leaf_host=leaf_host)
        self.nodes = {spec.node_id: NodeProcess(spec) for spec in specs}
        self.lease_ttl_s = lease_ttl_s

    # -- hub --------------------------------------------------------------------------------

    def start_hub(self) -> None:
        """The namespaces first: the hub's leaf listeners bind to the bridge's address."""
        if self.netns is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.netns.record(self.data_dir / NETNS_TAG_FILE)
            self.netns.create_bridge()
            for node in self.nodes.values():
                if node.spec.via_leaf:
                    self.netns.add(node.spec.node_id)
        self.hub.start()

    @property
    def urls(self) -> list[str]:
        return self.hub.urls

    @property
    def leaf_urls(self) -> list[str]:
        return [server.leaf_url for server in self.hub.servers]

    def server(self, name: str) -> NatsServer:
        return self.hub.by_name(name)

    # -- nodes ------------------------------------------------------------------------------

    def start_node(self, node_id: str) -> None:
        node = self.nodes[node_id]
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{node_id}-launcher.log").open("ab") as out:
            node.process = subprocess.Popen(
                self._argv(node.spec),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        node.starts += 1

    def _argv(self, spec: NodeSpec) -> list[str]:
        where = (
            ["--via-leaf", ",".join(self.leaf_urls)]
            if spec.via_leaf
            else ["--nats", ",".join(self.urls)]
        )
        inside = self.netns.exec_prefix(spec.node_id) if self.netns is not None else []
        return [
            *inside,
            sys.executable, "-m", "shared.cli.main", "--log-level", "info", "node",
            "--roles", ",".join(spec.roles), "--node-id", spec.node_id, "--replicas", "3",
            "--game", "tictactoe", "--preset", "soak", "--selfplay-workers", "1",
            "--cache-dir", str(self.data_dir / "cache"),
            "--log-dir", str(self.data_dir / "logs"),
            "--archive", str(self.data_dir / "archive"),
            "--lease-ttl", str(self.lease_ttl_s),
            *where,
        ]  # fmt: skip

    def kill_node(self, node_id: str) -> None:
        """SIGKILL the node's launcher and everything in its process group."""
        node = self.nodes[node_id]
        if node.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop every node, then the hub, then remove the namespaces."""
        try:
            self.stop_nodes(timeout_s)
            self.hub.stop()
        finally:
            if self.netns is not None:
                self.netns.remove()

    def stop_nodes(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every node, SIGKILL what is left after `timeout_s`."""
        running = [n for n in self.nodes.values() if n.alive()]
        for node in running:
            _signal_group(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in running:
            assert node.process is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(max(0.1, deadline - time.monotonic()))
        for node in self.nodes.values():
            if node.process is not None:
                _signal_group(node.pid, signal.SIGKILL)
                node.process.wait()

    def leaf_server_pid(self, node_id: str) -> int | None:
        """The PID of a node's leaf server, from the ports file the server names after itself."""
        ports = list((self.data_dir / "cache" / node_id / "leaf" / "ports").glob("*.ports"))
        return int(ports[0].stem.rsplit("_", 1)[1]) if len(ports) == 1 else None


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def send(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
