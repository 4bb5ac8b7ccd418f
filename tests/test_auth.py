"""Least-privilege identities on a real server: what a selfplay worker may and may not do."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats.errors
import pytest

from schemas import names
from shared.auth.identities import ACCOUNTS_FILE, add_node, init, new_seed, write_seed
from shared.auth.permissions import ROLES, capability_table, markdown_table, permissions
from shared.bus.client import BusConfig, NatsBus, identity_inbox
from shared.bus.errors import BusError, ConnectFailed
from shared.bus.ports import Bus
from shared.bus.server import HUB_DOMAIN, LeafSpec, NatsServer, ServerSpec


def test_a_selfplay_identity_may_not_lead_schedule_or_destroy() -> None:
    granted = permissions("selfplay", "KEY").publish
    assert names.games_subject("*") in granted
    assert names.kv_subject("nodes", "*") not in granted  # only a node identity, its own key
    forbidden_prefixes = (
        names.kv_subject(names.ELECTION_BUCKET, ""),
        names.kv_subject(names.REGISTRY_BUCKET, ""),
        names.kv_subject(names.LOOP_BUCKET, ""),
        "jobs.",
        "$JS.API.STREAM.DELETE",
        "$JS.API.STREAM.PURGE",
        "$JS.API.STREAM.CREATE",
        "$JS.API.STREAM.UPDATE",
        "$JS.API.CONSUMER.DELETE.JOBS",
    )
    assert not [s for s in granted if s.startswith(forbidden_prefixes) or s == ">"]


def test_only_admin_may_delete_and_only_the_coordinator_writes_the_lease() -> None:
    lease = names.kv_subject(names.ELECTION_BUCKET, names.LEADER_KEY)
    for role in ROLES:
        publish = permissions(role, "KEY").publish
        assert (lease in publish) == (role == "coordinator"), role
        deletes = [s for s in publish if "STREAM.DELETE" in s or "STREAM.PURGE" in s]
        assert deletes == [] or role == "admin", role
    assert permissions("admin", "KEY").publish == [">"]


@pytest.fixture
def identities(tmp_path: Path) -> dict[str, Path]:
    seeds: dict[str, Path] = {role: path for role, path in init(tmp_path / "auth").items()}
    seeds["node w1"] = add_node(tmp_path / "auth", "w1")
    seeds["node edge"] = add_node(tmp_path / "auth", "edge", ("selfplay",))  # behind a leaf
    return seeds


@pytest.fixture
def secured(tmp_path: Path, identities: dict[str, Path]) -> Iterator[NatsServer]:
    accounts = (tmp_path / "auth" / ACCOUNTS_FILE).read_text()
    server = NatsServer(ServerSpec("secured", tmp_path / "server", auth=accounts)).start()
    try:
        yield server
    finally:
        server.stop()


async def connect(server: NatsServer, seed: Path | None, name: str) -> Bus:
    cfg = BusConfig(
        servers=[server.url],
        name=name,
        nkey_seed=str(seed) if seed else None,
        request_timeout_s=1.0,
        connect_timeout_s=3.0,
    )
    return await NatsBus.connect(cfg)


@pytest.fixture
async def selfplay(secured: NatsServer, identities: dict[str, Path]) -> AsyncIterator[Bus]:
    admin = await connect(secured, identities["admin"], "admin")
    await admin.provision()
    await admin.close()
    bus = await connect(secured, identities["selfplay"], "worker")
    try:
        yield bus
    finally:
        await bus.close()


async def test_anonymous_and_unknown_keys_are_refused(secured: NatsServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.nk"
    write_seed(stranger, new_seed())
    attempts = (connect(secured, None, "anonymous"), connect(secured, stranger, "stranger"))
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    assert [type(o) for o in outcomes] == [ConnectFailed, ConnectFailed]


async def test_selfplay_worker_is_refused_and_each_refusal_is_logged_with_its_subject(
    selfplay: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="conclave.bus")
    # What it is for still works: games, reading stream info.
    await selfplay.publish_durable(names.games_subject("tictactoe"), b"g", msg_id="g1")
    await selfplay.provision()  # everything exists: it only reads
    refused: dict[str, Callable[[], Awaitable[object]]] = {
        "lease": lambda: selfplay.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"{}"),
        "best": lambda: selfplay.write(names.REGISTRY_BUCKET, names.best_key("tictactoe"), b"{}"),
        "job": lambda: selfplay.publish_durable(
            names.job_subject("selfplay", "tictactoe", "sp"), b"{}"
        ),
        "delete": lambda: selfplay.js.delete_stream(names.GAMES_STREAM),
        "purge": lambda: selfplay.js.purge_stream(names.GAMES_STREAM),
        "bucket": lambda: selfplay.js.delete_key_value(names.REGISTRY_BUCKET),
        "status": lambda: selfplay.write(names.NODES_BUCKET, "w1", b"{}", ttl_s=5),
    }
    # A refused request gets no answer: a timeout here, the reason in the error callback.
    outcomes = await asyncio.gather(*(a() for a in refused.values()), return_exceptions=True)
    for what, outcome in zip(refused, outcomes, strict=True):
        assert isinstance(outcome, (BusError, TimeoutError, nats.errors.TimeoutError)), what
    logged = " ".join(r.getMessage() for r in caplog.records).lower()
    for subject in (
        names.kv_subject(names.ELECTION_BUCKET, names.LEADER_KEY),
        names.kv_subject(names.REGISTRY_BUCKET, names.best_key("tictactoe")),
        names.job_subject("selfplay", "tictactoe", "sp"),
        f"$js.api.stream.delete.{names.GAMES_STREAM}",
        f"$js.api.stream.purge.{names.GAMES_STREAM}",
        f"$js.api.stream.delete.kv_{names.REGISTRY_BUCKET}",
        names.kv_subject(names.NODES_BUCKET, "w1"),
    ):
        assert f'permissions violation for publish to "{subject.lower()}"' in logged, subject


def test_the_tables_in_the_docs_are_generated_from_the_code() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    for name, table in (("capabilities", capability_table()), ("permissions", markdown_table())):
        shown = doc.split(f"<!-- {name}:begin -->\n")[1].split(f"<!-- {name}:end -->")[0]
        assert shown == table, f"run `conclave auth table`; paste its {name} into the docs"


async def test_a_leaf_link_carries_its_node_identity_with_its_roles(
    secured: NatsServer, identities: dict[str, Path], tmp_path: Path
) -> None:
    admin = await connect(secured, identities["admin"], "admin")
    await admin.provision()
    await admin.close()
    link = str(identities["node edge"])
    spec = LeafSpec("edge", tmp_path / "edge", (secured.leaf_url,), nkey_seed=link)
    leaf = NatsServer(spec).start()
    try:
        assert oct((tmp_path / "edge" / "nats.conf").stat().st_mode & 0o777) == "0o600"
        cfg = BusConfig(
            servers=[leaf.url],
            name="edge",
            domain=HUB_DOMAIN,
            request_timeout_s=1.0,
            inbox_prefix=identity_inbox(link),  # replies cross the link to its identity's inbox
        )
        edge = await NatsBus.connect(cfg)
        try:
            await edge.write(names.NODES_BUCKET, "edge", b"{}", ttl_s=5)
            await edge.publish_durable(names.games_subject("tictactoe"), b"g", msg_id="g-edge")
            assert (await edge.js.stream_info(names.GAMES_STREAM)).state.messages == 1
            assert (await edge.last(names.REGISTRY_BUCKET, "anything")).value is None
            with pytest.raises(BusError):
                await edge.write(names.NODES_BUCKET, "w1", b"{}", ttl_s=5)
            with pytest.raises(BusError):
                await edge.write(names.ELECTION_BUCKET, names.LEADER_KEY, b"{}")
            with pytest.raises(BusError):
                await edge.publish_durable(names.job_subject("selfplay", "tictactoe", "sp"), b"{}")
        finally:
            await edge.close()
    finally:
        leaf.stop()
