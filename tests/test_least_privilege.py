"""Least privilege against wiping, snooping and tampering, on a real server with auth: no role
identity may purge, roll up, change limits or reconfigure others' consumers, read another
identity's inbox or write another node's status; a node identity, whatever roles it carries,
speaks only for its own node (status, pulses, logs) and reads only its own inbox; admin may do
anything; the services' own work still works, and the launcher runs each as its node."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import msgspec
import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType

from schemas import names
from schemas.jobs import SelfplayJob
from shared.auth import permissions
from shared.auth.identities import ACCOUNTS_FILE, add_node, init, node_roles, node_seed_path
from shared.auth.permissions import Role
from shared.bus import provision
from shared.bus.client import BusConfig, NatsBus, identity_inbox
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.bus.server import NatsServer, ServerSpec
from shared.cli import main as cli
from shared.lease.holder import Contender, hold
from shared.lease.quorum import LeaseParams
from shared.node.launcher import (
    LOOP_ROLES,
    MissingIdentity,
    NodeOptions,
    build_children,
    check_identity,
    creds_for,
    identity_roles,
    node_services,
)
from shared.node.up import local_identities
from shared.runtime.service import ProcessConfig
from shared.runtime.supervisor import Child
from shared.work.jobs import JobSettings, Puller, await_consumer, ensure_consumer, submit
from shared.work.models import CHUNK_BYTES, ModelStore, sha256_hex
from tests.conftest import eventually

ROLE_IDENTITIES: tuple[Role, ...] = ("coordinator", "selfplay", "trainer", "evaluator", "syncer")
REFUSED = (BusError, TimeoutError, nats.errors.Error)
ROLLUP = {"Nats-Rollup": "all"}
GAME = "tictactoe"


# Nodes whose identities carry every role (as `conclave up` makes its node's); n1, n2 carry none.
FULL_NODES = ("f1", "f2")


@pytest.fixture
def auth(tmp_path: Path) -> Path:
    directory = tmp_path / "auth"
    init(directory)
    add_node(directory, "n1")
    add_node(directory, "n2")
    for node in FULL_NODES:
        add_node(directory, node, permissions.NODE_ROLES)
    return directory


@pytest.fixture
def secured(tmp_path: Path, auth: Path) -> Iterator[NatsServer]:
    accounts = (auth / ACCOUNTS_FILE).read_text()
    server = NatsServer(ServerSpec("secured", tmp_path / "server", auth=accounts)).start()
    try:
        yield server
    finally:
        server.stop()


class Identities:
    """Connections to the secured server, one per identity, closed at teardown."""

    def __init__(self, server: NatsServer, auth: Path) -> None:
        self.server = server
        self.auth = auth
        self.buses: dict[str, Bus] = {}

    def seed(self, who: str) -> Path:
        if who.startswith("node "):
            return node_seed_path(self.auth, who.removeprefix("node "))
        return self.auth / f"{who}.nk"

    async def __call__(self, who: str) -> Bus:
        if who not in self.buses:
            cfg = BusConfig(
                servers=[self.server.url],
                name=who,
                nkey_seed=str(self.seed(who)),
                request_timeout_s=0.5,
                connect_timeout_s=3.0,
            )
            self.buses[who] = await NatsBus.connect(cfg)
        return self.buses[who]

    async def close(self) -> None:
        for bus in self.buses.values():
            await bus.close()


@pytest.fixture
async def ids(secured: NatsServer, auth: Path) -> AsyncIterator[Identities]:
    identities = Identities(secured, auth)
    admin = await identities("admin")
    await admin.provision()
    await ensure_consumer(await identities("coordinator"), "selfplay", JobSettings(max_deliver=5))
    try:
        yield identities
    finally:
        await identities.close()


async def refused(attempt: Awaitable[object]) -> bool:
    """Whether the server refused `attempt`: an error answer, or none (a permission denial)."""
    try:
        await attempt
    except REFUSED:
        return True
    return False


# -- pure: what the configuration and the permissions say -------------------------------------


def test_no_stream_accepts_rollup_headers_or_has_expiry_markers() -> None:
    """The server writes expiry markers as rollups and so turns rollups on wherever they are
    (docs/security.md): no bucket has them, the lease buckets and `nodes` included."""
    configs = provision.streams() + provision.lease_slot_streams(3)
    leases = {
        names.kv_stream(bucket)
        for register in ("election", "archive-lease")
        for bucket in (register, *(f"{register}-{n}" for n in (1, 2, 3)))
    }
    assert {c.name for c in configs} >= {"KV_nodes", "KV_registry", "OBJ_models", "GAMES"} | leases
    assert [c.name for c in configs if c.allow_rollup_hdrs is not False] == []
    assert [c.name for c in configs if c.subject_delete_marker_ttl] == []
    [nodes] = [c for c in configs if c.name == "KV_nodes"]
    assert nodes.allow_msg_ttl and nodes.allow_rollup_hdrs is False


def test_no_role_identity_may_administer_streams_or_others_consumers() -> None:
    for role in ROLE_IDENTITIES:
        grant = permissions.permissions(role, "KEY")
        for verb in permissions.STREAM_ADMIN:
            assert not permissions.may_publish(grant, f"$JS.API.STREAM.{verb}.GAMES"), role
            assert not permissions.may_publish(grant, f"$JS.hub.API.STREAM.{verb}.GAMES"), role
        for durable in permissions.durables():
            delete = f"$JS.API.CONSUMER.DELETE.{durable.stream}.{durable.name}"
            assert not permissions.may_publish(grant, delete), (role, durable)
            for subject in permissions.durable_configure(durable):
                assert permissions.may_publish(grant, subject) == (durable.owner == role)
            pull = f"$JS.API.CONSUMER.MSG.NEXT.{durable.stream}.{durable.name}"
            assert permissions.may_publish(grant, pull) == (role in durable.users), (role, pull)
        assert not permissions.may_subscribe(grant, "_INBOX.>")
        assert permissions.may_subscribe(grant, "_INBOX.KEY.abc.1")
    admin = permissions.permissions("admin", "KEY")
    assert permissions.may_publish(admin, "$JS.API.STREAM.PURGE.GAMES")
    assert permissions.may_subscribe(admin, "_INBOX.>")


def test_a_node_identity_writes_only_its_own_status() -> None:
    grant = permissions.node_permissions("n1", "KEY")
    assert permissions.may_publish(grant, "$KV.nodes.n1")
    assert permissions.may_publish(grant, "$JS.hub.API.$KV.nodes.n1")
    assert not permissions.may_publish(grant, "$KV.nodes.n2")
    for role in ROLE_IDENTITIES:
        assert not permissions.may_publish(permissions.permissions(role, "K"), "$KV.nodes.n1")
    with pytest.raises(ValueError, match="admin"):
        permissions.node_permissions("n1", "KEY", ("admin",))


@pytest.mark.parametrize("roles", [(), *[(r,) for r in ROLE_IDENTITIES], ROLE_IDENTITIES])
def test_a_node_identity_speaks_only_for_its_own_node_whatever_roles_it_carries(
    roles: tuple[Role, ...],
) -> None:
    grant = permissions.node_permissions("n1", "KEY", roles)
    for node, own in (("n1", True), ("n2", False)):
        for subject in (
            names.kv_subject(names.NODES_BUCKET, node),
            names.pulse_subject(node, "selfplay"),
            names.log_subject(node, "selfplay", "info"),
        ):
            assert permissions.may_publish(grant, subject) == own, subject
        assert permissions.may_subscribe(grant, names.pulse_wildcard(node)) == own
    assert permissions.may_subscribe(grant, "_INBOX.KEY.x")
    assert not permissions.may_subscribe(grant, "_INBOX.OTHER.x")
    assert not permissions.may_subscribe(grant, "_INBOX.>")


@pytest.mark.parametrize("role", ROLE_IDENTITIES)
def test_a_node_carrying_a_role_may_do_all_that_role_may_but_speak_for_other_nodes(
    role: Role,
) -> None:
    """So a service runs as its node exactly as it ran as its role (its own pulses and logs)."""
    alone = permissions.permissions(role, "KEY")
    for carried in ((role,), ROLE_IDENTITIES):
        node = permissions.node_permissions("n1", "KEY", carried)
        others = set(permissions.telemetry(names.ANY))
        assert [p for p in alone.publish if p not in others and p not in node.publish] == []
        assert set(node.publish_deny) <= set(alone.publish_deny)
        assert set(alone.subscribe) <= set(node.subscribe)
        assert set(permissions.telemetry("n1")) <= set(node.publish)


def test_role_identities_are_unchanged_and_still_speak_for_any_node() -> None:
    """The shared role seeds keep what they had (docs/security.md: hand out node identities)."""
    for role in ROLE_IDENTITIES:
        grant = permissions.permissions(role, "KEY")
        assert permissions.may_publish(grant, names.pulse_subject("n2", "selfplay"))
        assert permissions.may_publish(grant, names.log_subject("n2", "selfplay", "info"))
        assert not permissions.may_publish(grant, names.kv_subject(names.NODES_BUCKET, "n2"))


def _reference(pattern: str, subject: str) -> bool:
    """NATS subject coverage as a regular expression over literal subjects."""
    parts = [
        "[^.]+" if t == "*" else "[^.]+(\\.[^.]+)*" if t == ">" else re.escape(t)
        for t in pattern.split(".")
    ]
    return re.fullmatch("\\.".join(parts), subject) is not None


tokens = st.sampled_from(["a", "b", "KV", "$JS"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(tokens, st.just("*")), min_size=1, max_size=4),
    st.booleans(),
    st.lists(tokens, min_size=1, max_size=5),
)
def test_subject_coverage_matches_nats_wildcards(
    head: list[str], tail: bool, subject: list[str]
) -> None:
    pattern = ".".join([*head, ">"] if tail else head)
    assert permissions.covers(pattern, ".".join(subject)) == _reference(pattern, ".".join(subject))


# -- on a real server ----------------------------------------------------------------------------

# A subject each identity may write, in a stream it may write to (rollups must not wipe it).
WRITABLE: dict[str, tuple[str, str]] = {
    "coordinator": (names.kv_subject(names.REGISTRY_BUCKET, names.best_key(GAME)), "KV_registry"),
    "selfplay": (names.games_subject(GAME), names.GAMES_STREAM),
    "trainer": (f"$O.{names.MODELS_STORE}.M.bW9kZWw=", "OBJ_models"),
    "evaluator": (names.results_subject(GAME, "r"), names.RESULTS_STREAM),
    "syncer": (names.kv_subject(names.REGISTRY_BUCKET, "sync.status"), "KV_registry"),
}


async def test_a_rollup_from_any_writer_is_refused_and_every_key_survives(
    ids: Identities,
) -> None:
    admin = await ids("admin")
    for subject, _ in WRITABLE.values():
        await admin.js.publish(subject, b"kept")
        await admin.js.publish(_sibling(subject), b"kept")
    counts = {s: (await admin.js.stream_info(s)).state.messages for _, s in WRITABLE.values()}
    for who, (subject, _) in WRITABLE.items():
        bus = await ids(who)
        await bus.js.publish(subject, b"legit")  # it may write there...
        rollup = bus.js.publish(subject, b"", headers=ROLLUP)
        assert await refused(rollup), who  # ...but not roll the stream up
    for subject, stream in WRITABLE.values():
        assert (await admin.js.stream_info(stream)).state.messages >= counts[stream], stream
        kept = await admin.js.get_msg(stream, subject=_sibling(subject))
        assert kept.data == b"kept", stream


def _sibling(subject: str) -> str:
    """Another subject in the same stream (the last token changed)."""
    head, _, last = subject.rpartition(".")
    return f"{head}.{last.rstrip('=')}x"


def _attempts(bus: Bus) -> dict[str, Awaitable[object]]:
    """Administration no role identity may do (each owner's own durables aside)."""
    js = bus.js
    jobs, games = names.job_consumer("selfplay"), names.SYNCER_GAMES_CONSUMER
    return {
        "purge": js.purge_stream(names.GAMES_STREAM),
        "purge bucket": js.purge_stream("KV_registry"),
        "limits": _update_limits(bus),
        "delete consumer": js.delete_consumer(names.JOBS_STREAM, jobs),
        # The server would take a name in an unnamed create as an update of that consumer.
        "unnamed create as the job consumer": _unnamed_create(bus, names.JOBS_STREAM, jobs),
        "unnamed create as the syncer's": _unnamed_create(bus, names.GAMES_STREAM, games),
    }


async def _update_limits(bus: Bus) -> None:
    config = (await bus.js.stream_info(names.DLQ_STREAM)).config
    config.max_msgs = 1
    await bus.js.update_stream(config)


async def _unnamed_create(bus: Bus, stream: str, name: str) -> None:
    config = {"name": name, "max_deliver": 1, "ack_policy": "explicit"}
    body = json.dumps({"stream_name": stream, "config": config}).encode()
    subject = f"$JS.API.CONSUMER.CREATE.{stream}"
    reply = await bus.nc.request(subject, body, timeout=bus.cfg.request_timeout_s)
    if b'"error"' in reply.data:
        raise BusError(reply.data.decode())


@pytest.mark.parametrize("who", [*ROLE_IDENTITIES, "node n1"])
async def test_no_role_identity_purges_changes_limits_or_reconfigures_consumers(
    ids: Identities, who: str
) -> None:
    admin, bus = await ids("admin"), await ids(who)
    await admin.publish_durable(names.dlq_subject("selfplay", GAME, "sp"), b"letter")
    await admin.publish_durable(names.dlq_subject("selfplay", GAME, "sp"), b"letter 2")
    syncer = await ids("syncer")
    await syncer.js.pull_subscribe(
        names.games_subject("*"),
        durable=names.SYNCER_GAMES_CONSUMER,
        stream=names.GAMES_STREAM,
        config=ConsumerConfig(max_deliver=7, ack_policy=AckPolicy.EXPLICIT),
    )
    attempts = _attempts(bus)
    if who != "coordinator":  # the coordinator owns the job consumers: it sets their delivery
        config = ConsumerConfig(durable_name=names.job_consumer("selfplay"), max_deliver=1)
        attempts["job consumer"] = bus.js.add_consumer(names.JOBS_STREAM, config)
    if who != "syncer":
        config = ConsumerConfig(durable_name=names.SYNCER_GAMES_CONSUMER, max_deliver=1)
        attempts["syncer's consumer"] = bus.js.add_consumer(names.GAMES_STREAM, config)
    outcomes = await asyncio.gather(*(refused(a) for a in attempts.values()))
    assert dict(zip(attempts, outcomes, strict=True)) == dict.fromkeys(attempts, True)
    consumer = await admin.js.consumer_info(names.JOBS_STREAM, names.job_consumer("selfplay"))
    assert consumer.config.max_deliver == 5
    consumer = await admin.js.consumer_info(names.GAMES_STREAM, names.SYNCER_GAMES_CONSUMER)
    assert consumer.config.max_deliver == 7
    assert (await admin.js.stream_info(names.DLQ_STREAM)).state.messages == 2


async def test_admin_may_purge_change_limits_and_reconfigure_consumers(ids: Identities) -> None:
    admin = await ids("admin")
    await admin.publish_durable(names.games_subject(GAME), b"g")
    await admin.js.purge_stream(names.GAMES_STREAM)
    assert (await admin.js.stream_info(names.GAMES_STREAM)).state.messages == 0
    await _update_limits(admin)
    assert (await admin.js.stream_info(names.DLQ_STREAM)).config.max_msgs == 1
    consumer = names.job_consumer("selfplay")
    config = ConsumerConfig(
        durable_name=consumer, max_deliver=2, ack_policy=AckPolicy.EXPLICIT,
        filter_subject=names.job_filter("selfplay"),
    )  # fmt: skip
    assert (await admin.js.add_consumer(names.JOBS_STREAM, config)).config.max_deliver == 2
    assert await admin.js.delete_consumer(names.JOBS_STREAM, consumer)
    # Rollups are off for admin too; admin may turn them back on for a stream.
    stream = (await admin.js.stream_info("KV_registry")).config
    stream.allow_rollup_hdrs = True
    await admin.js.update_stream(stream)
    await admin.js.publish("$KV.registry.a", b"1", headers=ROLLUP)


async def test_each_identity_reads_only_its_own_inbox(
    ids: Identities, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="conclave.bus")
    selfplay, evaluator, admin = await ids("selfplay"), await ids("evaluator"), await ids("admin")
    prefix = identity_inbox(str(ids.seed("selfplay")))
    assert selfplay.nc.new_inbox().startswith(f"{prefix}.")
    seen: list[str] = []

    async def snoop(msg: Msg) -> None:
        seen.append(msg.subject)

    for subject in ("_INBOX.>", f"{prefix}.>"):
        await evaluator.subscribe(subject, snoop)
    await evaluator.flush()
    everything: list[str] = []

    async def watch_all(msg: Msg) -> None:
        everything.append(msg.subject)

    await admin.subscribe("_INBOX.>", watch_all)  # admin may
    await admin.flush()
    await selfplay.last(names.REGISTRY_BUCKET, "anything")  # a request: its reply to its inbox
    async with selfplay.watch(names.REGISTRY_BUCKET, "k"):  # a watch delivers to its inbox
        await selfplay.flush()
    # Once admin has seen the replies, the evaluator's snooping would have too.
    await eventually(
        lambda: any(s.startswith(f"{prefix}.") for s in everything), 5, what="admin sees replies"
    )
    await evaluator.flush()
    assert seen == []
    logged = " ".join(r.getMessage() for r in caplog.records).lower()
    assert 'permissions violation for subscription to "_inbox.>"' in logged
    assert f'permissions violation for subscription to "{prefix.lower()}.>"' in logged


FORGED_BY_F1 = ("pulse.f2.selfplay", "logs.f2.selfplay.info", "$KV.nodes.f2")


async def test_a_node_with_every_role_cannot_speak_for_or_listen_as_another_node(
    ids: Identities, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="conclave.bus")
    f1, f2, admin = await ids("node f1"), await ids("node f2"), await ids("admin")
    heard: list[str] = []
    snooped: list[str] = []

    async def hear(msg: Msg) -> None:
        heard.append(msg.subject)

    async def snoop(msg: Msg) -> None:
        snooped.append(msg.subject)

    for subject in ("pulse.>", "logs.>"):
        await admin.subscribe(subject, hear)
    await admin.flush()
    f2_inbox = identity_inbox(str(ids.seed("node f2")))
    assert f2.nc.new_inbox().startswith(f"{f2_inbox}.")
    for subject in (f"{f2_inbox}.>", names.pulse_wildcard("f2")):
        await f1.subscribe(subject, snoop)
    for node in ("f1", "f2"):  # its own, then forged
        await f1.publish(names.pulse_subject(node, "selfplay"), b"{}")
        await f1.publish(names.log_subject(node, "selfplay", "info"), b"{}")
    await f1.flush()
    await f1.write(names.NODES_BUCKET, "f1", b"{}", ttl_s=5)
    assert await refused(f1.write(names.NODES_BUCKET, "f2", b"forged", ttl_s=5))
    # f2 goes about its work: a request and a watch (replies to its inbox), a pulse.
    await f2.last(names.REGISTRY_BUCKET, "anything")
    async with f2.watch(names.REGISTRY_BUCKET, "k"):
        await f2.flush()
    await f2.publish(names.pulse_subject("f2", "heartbeat"), b"{}")
    await f2.flush()
    own = [names.pulse_subject("f1", "selfplay"), names.log_subject("f1", "selfplay", "info")]
    refusals = [
        *(f'permissions violation for publish to "{s}"' for s in (*FORGED_BY_F1,)),
        *(
            f'permissions violation for subscription to "{s}"'
            for s in (f"{f2_inbox}.>", "pulse.f2.*")
        ),
    ]

    def settled() -> bool:  # the server's refusals come back asynchronously
        logged = " ".join(r.getMessage() for r in caplog.records).lower()
        return len(heard) >= len(own) + 1 and all(r.lower() in logged for r in refusals)

    await eventually(settled, 10, what="the node's own messages and every refusal")
    assert snooped == []
    assert sorted(heard) == sorted([*own, names.pulse_subject("f2", "heartbeat")])
    assert (await admin.last(names.NODES_BUCKET, "f2")).value is None


async def test_a_node_writes_its_own_status_and_no_other(ids: Identities) -> None:
    n1 = await ids("node n1")
    await n1.write(names.NODES_BUCKET, "n1", b"{}", ttl_s=5)
    assert await refused(n1.write(names.NODES_BUCKET, "n2", b"{}", ttl_s=5))
    forgers = [await ids(role) for role in ROLE_IDENTITIES]
    forged = [refused(b.write(names.NODES_BUCKET, "n1", b"forged", ttl_s=5)) for b in forgers]
    assert await asyncio.gather(*forged) == [True] * len(forgers)
    admin = await ids("admin")
    assert (await admin.last(names.NODES_BUCKET, "n1")).value == b"{}"
    assert (await admin.last(names.NODES_BUCKET, "n2")).value is None


async def test_a_node_cannot_roll_up_the_statuses_and_they_still_expire(ids: Identities) -> None:
    n1, n2, admin = await ids("node n1"), await ids("node n2"), await ids("admin")
    await n2.write(names.NODES_BUCKET, "n2", b"n2 lives", ttl_s=30)
    await n1.write(names.NODES_BUCKET, "n1", b"n1 lives", ttl_s=1)
    own_key = names.kv_subject(names.NODES_BUCKET, "n1")
    assert await refused(n1.js.publish(own_key, b"", headers=ROLLUP))
    assert (await admin.last(names.NODES_BUCKET, "n2")).value == b"n2 lives"
    assert (await admin.last(names.NODES_BUCKET, "n1")).value == b"n1 lives"
    await eventually(  # its 1 s TTL, without an expiry marker
        lambda: _gone(admin, names.NODES_BUCKET, "n1"), 5, what="n1's status to expire"
    )
    assert (await admin.last(names.NODES_BUCKET, "n2")).value == b"n2 lives"


async def _gone(bus: Bus, bucket: str, key: str) -> bool:
    return not (await bus.last(bucket, key)).present


# Each lease's buckets on a single server: its register and its one slot.
LEASES: dict[str, tuple[str, str]] = {
    "coordinator": (names.ELECTION_BUCKET, names.LEADER_KEY),
    "syncer": (names.ARCHIVE_LEASE_BUCKET, names.SYNCER_KEY),
}


async def test_each_lease_has_one_writer_role_and_none_rolls_it_up(
    ids: Identities,
) -> None:
    admin = await ids("admin")
    for register, key in LEASES.values():
        for bucket in (register, names.lease_slot_bucket(1, register)):
            await admin.write(bucket, key, b"held", ttl_s=30)
            await admin.write(bucket, "other", b"kept", ttl_s=30)
    attempts: dict[str, Awaitable[bool]] = {}
    for who, (own, own_key) in LEASES.items():
        bus = await ids(who)
        for register, key in LEASES.values():
            for bucket in (register, names.lease_slot_bucket(1, register)):
                if register == own:
                    continue
                for k in (key, own_key):
                    subject = names.kv_subject(bucket, k)
                    attempts[f"{who} writes {bucket}/{k}"] = refused(bus.write(bucket, k, b"x"))
                    rollup = bus.js.publish(subject, b"", headers=ROLLUP)
                    attempts[f"{who} rolls up {bucket} by {k}"] = refused(rollup)
    outcomes = await asyncio.gather(*attempts.values())
    assert dict(zip(attempts, outcomes, strict=True)) == dict.fromkeys(attempts, True)
    for register, key in LEASES.values():
        for bucket in (register, names.lease_slot_bucket(1, register)):
            assert (await admin.last(bucket, key)).value == b"held", bucket
            assert (await admin.last(bucket, "other")).value == b"kept", bucket
    # The owner writes its key, but cannot roll its own buckets up either.
    for who, (register, key) in LEASES.items():
        bus = await ids(who)
        await bus.write(register, key, b"mine", ttl_s=30)
        rollup = bus.js.publish(names.kv_subject(register, key), b"", headers=ROLLUP)
        assert await refused(rollup), f"{who} rolled up {register}"
        assert (await admin.last(register, "other")).value == b"kept", register


async def test_each_lease_holder_takes_its_lease_with_its_own_identity(ids: Identities) -> None:
    params = LeaseParams(ttl_s=3)
    holders = [
        Contender(await ids(who), "n1", params, key=key, register_bucket=register, announce=False)
        for who, (register, key) in LEASES.items()
    ]
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        for holder in holders:
            tg.create_task(hold(holder, stop))
        await eventually(lambda: all(h.term for h in holders), 5, what="both leases held")
        stop.set()
    admin = await ids("admin")
    for register, key in LEASES.values():
        assert not (await admin.last(register, key)).present  # released on the way out


async def test_an_old_nodes_bucket_with_expiry_markers_is_provisioned_to_refuse_rollups(
    ids: Identities,
) -> None:
    """A cluster provisioned before `nodes` lost its expiry markers: services name the stream,
    and admin's provisioning updates it in place (the server accepts removing the markers)."""
    admin, n1, selfplay = await ids("admin"), await ids("node n1"), await ids("selfplay")
    stream = names.kv_stream(names.NODES_BUCKET)
    await admin.js.delete_stream(stream)
    old = provision.kv_stream(names.NODES_BUCKET, marker_ttl_s=2)
    old.storage = StorageType.FILE
    await admin.js.add_stream(old)
    with pytest.raises(BusError, match=f"stream {stream} .*only admin provisions"):
        await selfplay.provision()
    await admin.write(names.NODES_BUCKET, "n2", b"n2 lives", ttl_s=30)
    await admin.provision()
    config = (await admin.js.stream_info(stream)).config
    assert not config.subject_delete_marker_ttl and not config.allow_rollup_hdrs
    assert config.allow_msg_ttl
    await selfplay.provision()  # as configured again: it only reads
    await n1.write(names.NODES_BUCKET, "n1", b"n1 lives", ttl_s=1)
    rollup = n1.js.publish(names.kv_subject(names.NODES_BUCKET, "n1"), b"", headers=ROLLUP)
    assert await refused(rollup)
    assert (await admin.last(names.NODES_BUCKET, "n2")).value == b"n2 lives"
    await eventually(lambda: _gone(admin, names.NODES_BUCKET, "n1"), 5, what="n1 to expire")


async def test_the_services_work_still_works_without_creating_shared_consumers(
    ids: Identities, tmp_path: Path
) -> None:
    coordinator, selfplay = await ids("coordinator"), await ids("selfplay")
    trainer, syncer = await ids("trainer"), await ids("syncer")
    await coordinator.provision()  # everything is there: it only reads
    assert await await_consumer(selfplay, "selfplay", asyncio.Event(), every_s=0.05)
    job = SelfplayJob(
        job_id="j1", game=GAME, model_sha256="", generation=0, games=1, sims=2, term=1
    )
    await submit(coordinator, "selfplay", job)
    delivery = await Puller(selfplay, "selfplay", SelfplayJob).next(timeout_s=3)
    assert delivery is not None and delivery.job.job_id == "j1"
    await delivery.done()
    # Models: the trainer stores without rollups, once; a worker reads and verifies them.
    data = b"m" * (CHUNK_BYTES + 10)
    digest = sha256_hex(data)
    assert await trainer.put_object(names.MODELS_STORE, digest, data, CHUNK_BYTES)
    assert await trainer.put_object(names.MODELS_STORE, digest, b"other", CHUNK_BYTES) is False
    assert await ModelStore(selfplay, tmp_path / "s").read(digest) == data
    # A follower of the games (the trainer's), and the syncer's own durable consumer.
    await selfplay.publish_durable(names.games_subject(GAME), b"g1", msg_id="g1")
    got: list[bytes] = []

    async def take(msg: Msg) -> None:
        got.append(msg.data)

    await trainer.follow(names.GAMES_STREAM, names.games_subject("*"), 1, take)
    sub = await syncer.js.pull_subscribe(
        names.games_subject("*"), durable=names.SYNCER_GAMES_CONSUMER, stream=names.GAMES_STREAM
    )
    [msg] = await sub.fetch(1, timeout=2)
    await msg.ack_sync()
    await eventually(lambda: got == [b"g1"], 3, what="g1")
    # Results, read back through an ephemeral consumer by the coordinator.
    evaluator = await ids("evaluator")
    await evaluator.publish_durable(names.results_subject(GAME, "r"), b"r1", msg_id="r1")
    read = await coordinator.read_all(names.RESULTS_STREAM, names.results_subject(GAME, "*"))
    assert [m.data for m in read] == [b"r1"]


async def test_a_worker_waits_for_the_coordinator_to_create_its_consumer(
    ids: Identities,
) -> None:
    evaluator, coordinator = await ids("evaluator"), await ids("coordinator")
    stop = asyncio.Event()
    waiting = asyncio.create_task(await_consumer(evaluator, "eval", stop, every_s=0.05))
    await asyncio.sleep(0.2)  # an absence: still waiting after a few of its 0.05 s polls
    assert not waiting.done()
    await ensure_consumer(coordinator, "eval", JobSettings())
    assert await asyncio.wait_for(waiting, 3)
    stop.set()
    assert await await_consumer(evaluator, "eval", stop)  # there already: no wait


def test_accounts_give_every_user_its_inbox_and_deny_list(auth: Path) -> None:
    text = (auth / ACCOUNTS_FILE).read_text()
    nodes = 2 + len(FULL_NODES)
    assert text.count("nkey:") == len(permissions.ROLES) + nodes
    assert text.count('"deny":') == len(permissions.ROLES) - 1 + nodes  # all but admin
    assert '"_INBOX.>"' not in text  # admin subscribes to `>`; nobody else to every inbox


async def test_a_follower_goes_on_from_where_it_was_when_its_consumer_is_lost(
    ids: Identities,
) -> None:
    trainer, selfplay, admin = await ids("trainer"), await ids("selfplay"), await ids("admin")
    got: list[bytes] = []

    async def take(msg: Msg) -> None:
        got.append(msg.data)

    await selfplay.publish_durable(names.games_subject(GAME), b"g1")
    await trainer.follow(names.GAMES_STREAM, names.games_subject("*"), 1, take, wait_s=0.5)
    await eventually(lambda: got == [b"g1"], 3, what="g1")
    [follower] = [c.name for c in await admin.js.consumers_info(names.GAMES_STREAM)]
    await admin.js.delete_consumer(names.GAMES_STREAM, follower)
    await selfplay.publish_durable(names.games_subject(GAME), b"g2")
    await eventually(lambda: got == [b"g1", b"g2"], 3, what="g1 and g2")


def test_cli_adds_a_node_identity_and_provisions_as_admin(secured: NatsServer, auth: Path) -> None:
    node = ["auth", "node", "--out", str(auth), "edge"]
    assert cli.main([*node, "--roles", "selfplay"]) == 0
    seed = node_seed_path(auth, "edge")
    assert oct(seed.stat().st_mode & 0o777) == "0o600"
    assert "# node edge" in (auth / ACCOUNTS_FILE).read_text()
    key = seed.read_bytes()
    assert cli.main([*node, "--roles", "evaluator,selfplay", "--keep-key"]) == 0
    assert seed.read_bytes() == key and node_roles(auth, "edge") == ("selfplay", "evaluator")
    assert cli.main([*node, "--roles", "selfplay"]) == 0  # without --keep-key: a rotation
    assert seed.read_bytes() != key and node_roles(auth, "edge") == ("selfplay",)
    admin = ["--nats", secured.url, "--creds", str(auth / "admin.nk")]
    assert cli.main(["provision", *admin]) == 0
    assert cli.main(["status", *admin, "--json"]) == 0  # reads the provisioned buckets


async def test_a_service_finding_a_drifted_stream_fails_naming_it_and_who_provisions(
    ids: Identities,
) -> None:
    admin, selfplay = await ids("admin"), await ids("selfplay")
    drifted = (await admin.js.stream_info(names.EVENTS_STREAM)).config
    drifted.max_age = 3600.0
    await admin.js.update_stream(drifted)
    with pytest.raises(BusError, match=f"stream {names.EVENTS_STREAM} .*only admin provisions"):
        await selfplay.provision()
    await admin.provision()
    await selfplay.provision()  # as configured again: it only reads


def _bus_of(child: Child) -> BusConfig:
    argv = child.spec.argv(3)
    return msgspec.json.decode(argv[argv.index("--process") + 1], type=ProcessConfig).bus


def test_the_launcher_runs_every_service_as_its_node_identity(auth: Path) -> None:
    seed = str(node_seed_path(auth, "f1"))
    opts = NodeOptions("f1", list(LOOP_ROLES), [], creds=str(auth), selfplay_workers=2)
    services = node_services(opts)
    assert {"heartbeat", "leader", "scheduler", "selfplay-2", "trainer", "syncer"} <= set(services)
    assert {creds_for(service, opts) for service in services} == {seed}
    two_roles = msgspec.structs.replace(opts, roles=["coordinator", "selfplay"])
    for child in build_children(two_roles):
        bus = _bus_of(child)
        assert bus.nkey_seed == seed, child.spec.name
        assert bus.inbox_prefix is None  # so the bus takes the seed's: `_INBOX.<its key>.`
    one_file = msgspec.structs.replace(opts, creds=seed)  # a seed file: every service as it
    assert {creds_for(service, one_file) for service in services} == {seed}


def test_a_node_without_its_identity_or_a_role_it_runs_is_refused_by_name(
    auth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No fallback to the role seeds (they are right there): the error says what to run."""
    lacking = NodeOptions("n1", ["selfplay", "evaluator"], [], creds=str(auth))
    assert creds_for("heartbeat", lacking) == str(node_seed_path(auth, "n1"))  # needs no role
    assert (auth / "selfplay.nk").exists()
    fix = f"conclave auth node --out {auth} n1 --roles selfplay,evaluator --keep-key"
    needs = "does not carry role selfplay, which its service selfplay-2 needs"
    with pytest.raises(MissingIdentity, match=re.escape(f"{needs}: run `{fix}`")):
        creds_for("selfplay-2", lacking)
    with pytest.raises(MissingIdentity, match="node n1's identity"):
        check_identity(lacking)
    stranger = msgspec.structs.replace(lacking, node_id="n9")
    fix = f"conclave auth node --out {auth} n9 --roles selfplay,evaluator`"
    with pytest.raises(MissingIdentity, match=re.escape(f"no identity for node n9 in {auth}")):
        creds_for("heartbeat", stranger)
    with pytest.raises(MissingIdentity, match=re.escape(fix)):
        check_identity(stranger)
    # `conclave node` refuses before it starts anything, a leaf server included.
    argv = ["node", "--roles", "selfplay", "--node-id", "n1", "--creds", str(auth)]
    leaf = [*argv, "--via-leaf", "nats://127.0.0.1:1", "--cache-dir", str(auth.parent / "c")]
    assert cli.main(leaf) == 2
    assert "node n1's identity" in capsys.readouterr().err
    assert not (auth.parent / "c").exists()


def test_up_makes_its_node_identity_and_rewrites_the_accounts_from_the_seeds(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "auth"
    roles = identity_roles(list(LOOP_ROLES))
    first = local_identities(directory, "local", roles)
    admin_seed = (directory / "admin.nk").read_bytes()
    (directory / ACCOUNTS_FILE).write_text("# stale\n")
    assert local_identities(directory, "local", roles) == first  # same keys, this build's lists
    assert (directory / "admin.nk").read_bytes() == admin_seed
    assert "# node local" in first


def test_up_runs_its_node_as_its_one_identity_carrying_the_roles_it_runs(tmp_path: Path) -> None:
    """A data directory from before (its node identity without roles) keeps the node's key."""
    directory = tmp_path / "auth"
    init(directory)
    seed = add_node(directory, "local")
    key = seed.read_bytes()
    assert identity_roles(["control"]) == ("coordinator",)
    local_identities(directory, "local", identity_roles(["control"]))  # `up --no-train`
    assert node_roles(directory, "local") == ("coordinator",)
    local_identities(directory, "local", identity_roles(list(LOOP_ROLES)))
    assert node_roles(directory, "local") == permissions.NODE_ROLES
    assert seed.read_bytes() == key
    opts = NodeOptions("local", list(LOOP_ROLES), [], creds=str(directory))
    assert {creds_for(service, opts) for service in node_services(opts)} == {str(seed)}
