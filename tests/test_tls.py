"""TLS on client, route and leaf connections: plain clients are refused, verified ones served."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import names
from shared.auth.identities import ACCOUNTS_FILE, init, seed_path
from shared.auth.tlsfiles import TlsFiles
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import BusError, ConnectFailed
from shared.bus.ports import Bus
from shared.bus.server import HUB_DOMAIN, LeafSpec, NatsCluster, NatsServer, ServerSpec
from tests.conftest import eventually


async def provisioned(bus: Bus) -> bool:
    """A new cluster elects its meta leader a moment after it reports healthy."""
    try:
        await bus.provision()
    except BusError:
        return False
    return True


def tls_files(directory: Path) -> TlsFiles:
    tls = directory / "tls"
    return TlsFiles(
        ca=str(tls / "ca.pem"), cert=str(tls / "server.pem"), key=str(tls / "server-key.pem")
    )


async def test_with_tls_on_a_plain_connection_fails_and_a_verified_one_works(
    tmp_path: Path,
) -> None:
    auth = tmp_path / "auth"
    init(auth, tls_hosts=["127.0.0.1", "localhost"])
    assert oct((auth / "tls" / "server-key.pem").stat().st_mode & 0o777) == "0o600"
    files = tls_files(auth)
    spec = ServerSpec(
        "tls", tmp_path / "server", auth=(auth / ACCOUNTS_FILE).read_text(), tls=files
    )
    server = NatsServer(spec).start()
    try:
        seed = str(seed_path(auth, "admin"))
        with pytest.raises(ConnectFailed):
            await NatsBus.connect(
                BusConfig(servers=[server.url], name="plain", nkey_seed=seed, connect_timeout_s=3)
            )
        cfg = BusConfig(servers=[server.url], name="tls", nkey_seed=seed, tls_ca=files.ca)
        bus = await NatsBus.connect(cfg)
        try:
            await bus.provision()
            await bus.write(names.NODES_BUCKET, "n1", b"{}", ttl_s=5)
            assert (await bus.last(names.NODES_BUCKET, "n1")).value == b"{}"
        finally:
            await bus.close()
    finally:
        server.stop()


async def test_routes_and_leaf_links_run_over_tls(tmp_path: Path) -> None:
    init(tmp_path / "auth", roles=("admin",), tls_hosts=["127.0.0.1"])
    files = tls_files(tmp_path / "auth")
    cluster = NatsCluster.create(tmp_path / "hub", tls=files).start()  # routes verify each other
    leaf: NatsServer | None = None
    try:
        leaf_spec = LeafSpec(
            "edge", tmp_path / "edge", tuple(s.leaf_url for s in cluster.servers), ca_file=files.ca
        )
        leaf = NatsServer(leaf_spec).start()  # returns once linked to the hub, over TLS
        hub = await NatsBus.connect(
            BusConfig(servers=cluster.urls, name="hub", replicas=3, tls_ca=files.ca)
        )
        try:
            await eventually(lambda: provisioned(hub), 30, what="cluster provisioning")
            edge = await NatsBus.connect(
                BusConfig(servers=[leaf.url], name="edge", domain=HUB_DOMAIN)
            )
            try:
                await edge.write(names.NODES_BUCKET, "edge", b"{}", ttl_s=5)
                assert (await hub.last(names.NODES_BUCKET, "edge")).value == b"{}"
            finally:
                await edge.close()
        finally:
            await hub.close()
    finally:
        if leaf is not None:
            leaf.stop()
        cluster.stop()
