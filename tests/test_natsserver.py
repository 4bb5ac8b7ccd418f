"""The embedded server: configs from nats/ templates, start, restart on the same port, cluster."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from shared.bus.server import (
    BIND_ATTEMPTS,
    NatsCluster,
    NatsServer,
    NatsServerError,
    ServerSpec,
    render,
    server_binary,
)


def test_rendered_configs_pass_the_servers_own_check(tmp_path: Path) -> None:
    single = ServerSpec("s", tmp_path / "s").config(leaf_port=7422)
    cluster = ServerSpec(
        "c", tmp_path / "c", cluster_port=6222, routes=("h1:6222", "h2:6222")
    ).config()
    leaf = render(
        "leaf",
        server_name="edge",
        host="127.0.0.1",
        port=-1,
        http_port=-1,
        ports_dir=tmp_path,
        hub_urls='"nats://127.0.0.1:7422"',
        client_tls="",
        remote_options="",
    )
    for name, text in {"single": single, "cluster": cluster, "leaf": leaf}.items():
        conf = tmp_path / f"{name}.conf"
        conf.write_text(text)
        check = subprocess.run([str(server_binary()), "-t", "-c", str(conf)], capture_output=True)
        assert check.returncode == 0, (name, check.stderr.decode())
    assert "sync_interval: always" in single and "sync_interval: always" in cluster


def test_a_missing_template_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(NatsServerError, match="hub_urls"):
        render(
            "leaf",
            server_name="x",
            host="h",
            port=1,
            http_port=1,
            ports_dir=tmp_path,
            client_tls="",
            remote_options="",
        )


def test_server_restarts_on_the_same_port(tmp_path: Path) -> None:
    server = NatsServer(ServerSpec("t", tmp_path)).start()
    try:
        url = server.url
        server.kill()
        assert not server.alive()
        server.start()
        assert server.url == url
    finally:
        server.stop()
    assert not server.alive()


def test_cluster_of_three_comes_up_with_distinct_urls(tmp_path: Path) -> None:
    cluster = NatsCluster.create(tmp_path).start()
    try:
        assert len(set(cluster.urls)) == 3
        assert all(s.alive() for s in cluster.servers)
    finally:
        cluster.stop()
    assert not any(s.alive() for s in cluster.servers)


def test_a_start_on_a_taken_port_is_tried_again_then_fails_naming_the_log(
    tmp_path: Path,
) -> None:
    """nats-server finds a free random port and then listens on it, so a port can be taken in
    between: such a start is tried again (here the port stays taken, so every try fails)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = NatsServer(ServerSpec("t", tmp_path, leaf_port=port))
        with pytest.raises(NatsServerError, match=r"nats\.log"):
            server.start(timeout=10)
    failures = (tmp_path / "nats.log").read_text().count("address already in use")
    assert failures == BIND_ATTEMPTS
