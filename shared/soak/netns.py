"""Network namespaces for a soak's leaf nodes, so cutting a node's network is a real cut.

A bridge on the host carries one address the hub's leaf listeners bind to; each leaf node runs
in its own namespace, joined to the bridge by a veth pair. Its services talk to its leaf server on
the namespace's loopback, and the leaf server's one outbound connection crosses the veth: setting
the host end down cuts the node off exactly as a dead uplink would (no RST, the TCP connection
stalls). Needs root and `ip`; `available()` says whether this machine allows it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


class NetnsError(RuntimeError):
    """An `ip` command failed; the message names it and carries its error output."""


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def available() -> bool:
    """Whether namespaces can be made here: root, `ip`, and a kernel that lets us make a bridge,
    a namespace and a veth pair (tried, then removed)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = Namespaces()
    try:
        probe.create_bridge()
        probe.add("probe")
    except NetnsError:
        return False
    finally:
        probe.remove()
    return True


@dataclass
class Namespaces:
    """A bridge and one namespace per node, named with a random run tag so runs do not clash."""

    tag: str = field(default_factory=lambda: f"{random.randrange(16**4):04x}")
    subnet: int = field(default_factory=lambda: random.randrange(1, 250))  # 10.231.<subnet>.0/24
    nodes: dict[str, int] = field(default_factory=dict)  # node id: host number on the bridge
    _bridge_up: bool = False

    @property
    def bridge(self) -> str:
        return f"ccbr{self.tag}"

    @property
    def host_ip(self) -> str:
        """The hub's side: where its leaf listeners bind."""
        return f"10.231.{self.subnet}.1"

    def namespace(self, node_id: str) -> str:
        return f"cc{self.tag}-{node_id}"

    def host_end(self, node_id: str) -> str:
        return f"cc{self.tag}h{self.nodes[node_id]}"  # interface names: 15 characters at most

    def create_bridge(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_up = True
        ip("addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self, node_id: str) -> None:
        """A namespace for `node_id` with loopback up and a veth to the bridge."""
        number = len(self.nodes) + 2
        if number > 254:
            raise NetnsError("at most 253 namespaced nodes on one bridge")
        self.nodes[node_id] = number
        ns, host, inner = self.namespace(node_id), self.host_end(node_id), f"cc{self.tag}n{number}"
        ip("netns", "add", ns)
        ip("link", "add", host, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", ns)
        ip("link", "set", host, "master", self.bridge, "up")
        ip("-n", ns, "addr", "add", f"10.231.{self.subnet}.{number}/24", "dev", inner)
        ip("-n", ns, "link", "set", inner, "up")
        ip("-n", ns, "link", "set", "lo", "up")

    def exec_prefix(self, node_id: str) -> list[str]:
        """The argv prefix that runs a command inside the node's namespace."""
        return ["ip", "netns", "exec", self.namespace(node_id)] if node_id in self.nodes else []

    def cut(self, node_id: str) -> None:
        ip("link", "set", self.host_end(node_id), "down")

    def mend(self, node_id: str) -> None:
        ip("link", "set", self.host_end(node_id), "up")

    def record(self, path: Path) -> None:
        """Write the run tag to `path`, so `remove_recorded` can clean up after a killed run."""
        path.write_text(self.tag)

    def remove(self) -> None:
        """Delete every veth pair, namespace and the bridge; never raises."""
        for node_id in list(self.nodes):
            with contextlib.suppress(NetnsError):
                ip("link", "del", self.host_end(node_id))  # at once: a namespace's go lazily
            with contextlib.suppress(NetnsError):
                ip("netns", "del", self.namespace(node_id))
            del self.nodes[node_id]
        if self._bridge_up:
            with contextlib.suppress(NetnsError):
                ip("link", "del", self.bridge)
            self._bridge_up = False


def leftovers(tag: str) -> list[str]:
    """Namespaces of run `tag` still present."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.startswith(f"cc{tag}-")]


def remove_recorded(path: Path) -> None:
    """Remove what the run whose tag `path` holds left behind (its harness was killed)."""
    if not path.exists():
        return
    tag = path.read_text().strip()
    for namespace in leftovers(tag):
        with contextlib.suppress(NetnsError):
            ip("netns", "del", namespace)
    with contextlib.suppress(NetnsError):
        ip("link", "del", f"ccbr{tag}")
