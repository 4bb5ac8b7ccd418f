"""Fleet control over the bus (`conclave fleet ls | drain NODE | resume NODE`).

A draining node's worker finishes the job it holds and takes no new one (a job fetched just as
the drain came is handed back, with the reason, to another worker); `resume` lifts it. The node
shows as draining, then drained; a standing drain reaches a node that was away when it comes
back. Only admin may issue fleet commands, and each is recorded as an audit event first.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import names
from schemas.codec import decode
from schemas.control import FleetAction, FleetCommand, NodeStatus, Resources, ServiceState
from schemas.jobs import SelfplayJob
from services import heartbeat
from shared.auth import permissions
from shared.auth.identities import ACCOUNTS_FILE, add_node, init, node_seed_path, public_key
from shared.bus.client import BusConfig, NatsBus
from shared.bus.ports import Bus
from shared.bus.server import NatsServer, ServerSpec
from shared.cli import main as cli
from shared.cli.fleet import NotIssued, confirmation, gather, issue, issuer, node_state
from shared.cli.status import node_info
from shared.work.fleet import Standing, may_pull
from shared.work.jobs import JobSettings, Puller, ensure_consumer, last_failure, submit
from tests.conftest import eventually

NODE = "w1"


def command(action: FleetAction, node: str = NODE, reason: str = "") -> FleetCommand:
    return FleetCommand(
        action=action, node=node, issued_by="ops@host", at=time.time(), reason=reason
    )


def job(n: int) -> SelfplayJob:
    return SelfplayJob(
        job_id=f"sp-{n}", game="tictactoe", model_sha256="", generation=0, games=4, sims=8, term=1
    )


def status(node: str, *, draining: bool = False, doing: str = "", age_s: float = 0.0) -> NodeStatus:
    now = time.time()
    worker = ServiceState(name="selfplay", alive=True, pid=1, doing=doing)
    return NodeStatus(
        node=node,
        roles=["selfplay"],
        services=[worker],
        version="0.1.0",
        resources=Resources(2, 2**30),
        hostname="h",
        started_at=now - 60,
        sent_at=now - age_s,
        draining=draining,
        rtt_ms=1.5,
    )


# -- pure ------------------------------------------------------------------------------------


@given(st.sampled_from(["drain", "resume", None]), st.none() | st.text(min_size=1, max_size=20))
def test_a_worker_pulls_unless_refused_or_draining(
    action: FleetAction | None, refused: str | None
) -> None:
    why = may_pull(refused, None if action is None else command(action, reason="disk swap"))
    if refused is not None:
        assert why == refused  # the version gate's reason comes first
    elif action == "drain":
        assert why is not None and NODE in why and "ops@host" in why and "disk swap" in why
    else:
        assert why is None


tokens = st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)


@given(tokens, tokens, tokens)
def test_fleet_keys_are_apart_from_every_other_registry_key(node: str, game: str, x: str) -> None:
    """Only admin writes them, so no key of a game (`fleet` included) may fall under them."""
    key = names.fleet_key(node)
    others = [
        names.best_key(game),
        names.model_key(game, x),
        names.decided_key(game, x),
        names.trained_key(x),
        names.PROTOCOL_KEY,
        names.SYNC_STATUS_KEY,
        names.MATCH_EVALUATORS_KEY,
    ]
    fleet = names.all_fleet_keys()
    assert permissions.covers(fleet, key) and not names.is_model_key(key)
    assert not [k for k in others if permissions.covers(fleet, k)]


def test_no_identity_but_admin_may_issue_a_fleet_command() -> None:
    writes = [
        names.kv_subject(names.REGISTRY_BUCKET, names.fleet_key(NODE)),
        f"$JS.hub.API.{names.kv_subject(names.REGISTRY_BUCKET, names.fleet_key(NODE))}",
        names.fleet_event_subject("drain", NODE),
        names.fleet_event_subject("resume", "other"),
    ]
    grants = [permissions.permissions(role, "KEY") for role in permissions.NODE_ROLES]
    grants += [permissions.node_permissions(NODE, "KEY", permissions.NODE_ROLES)]
    for grant in grants:
        assert not [s for s in writes if permissions.may_publish(grant, s)]
    admin = permissions.permissions("admin", "KEY")
    assert all(permissions.may_publish(admin, s) for s in writes)
    coordinator = permissions.permissions("coordinator", "KEY")  # its other writes still go
    assert permissions.may_publish(coordinator, names.model_event_subject("promoted"))
    best = names.kv_subject(names.REGISTRY_BUCKET, names.best_key("fleet"))
    assert permissions.may_publish(coordinator, best)


def test_a_node_is_shown_working_draining_drained_or_away() -> None:
    now = time.time()

    def state(s: NodeStatus | None, c: FleetCommand | None) -> str:
        return node_state(None if s is None else node_info(s, now), c)

    drain = command("drain")
    assert state(status(NODE, doing="selfplay sp-1"), None) == "working (1 jobs)"
    assert state(status(NODE), command("resume")) == "idle"
    assert (
        state(status(NODE, draining=True, doing="selfplay sp-1"), drain) == "draining (1 jobs left)"
    )
    assert state(status(NODE, draining=True), drain) == "drained"
    assert state(status(NODE), drain) == "drain not yet seen"  # or an older build
    assert state(status(NODE, age_s=60), drain) == "offline, draining"
    assert state(None, drain) == "offline, draining" and state(None, None) == "offline"


def test_a_command_is_confirmed_once_the_node_shows_it_or_is_away() -> None:
    now = time.time()
    assert confirmation(status(NODE), "drain", now) is None
    shown = confirmation(status(NODE, draining=True, doing="selfplay sp-1"), "drain", now)
    assert shown == "draining: 1 jobs left"
    assert confirmation(status(NODE, draining=True), "drain", now) == "drained: no job left running"
    assert confirmation(status(NODE, draining=True), "resume", now) is None
    assert confirmation(status(NODE), "resume", now) == "the node takes jobs again"
    for away in (None, status(NODE, age_s=60)):
        assert "offline" in (confirmation(away, "drain", now) or "")


# -- on a real server ------------------------------------------------------------------------


async def queued(bus: Bus) -> int:
    counts = await bus.subject_counts(names.JOBS_STREAM, names.job_filter("selfplay", None))
    return sum(counts.values())


async def test_a_draining_worker_finishes_its_job_takes_no_new_one_and_resumes(bus: Bus) -> None:
    await ensure_consumer(bus, "selfplay", JobSettings(ack_wait_s=30.0))
    await submit(bus, "selfplay", job(1))
    puller = Puller(bus, "selfplay", SelfplayJob, node=NODE)
    taken: list[str] = []
    finished: list[str] = []
    release, stop = asyncio.Event(), asyncio.Event()

    async def work() -> None:  # a worker whose jobs end when the test says so
        while not stop.is_set():
            delivery = await puller.next(timeout_s=0.3)
            if delivery is None:
                continue
            taken.append(delivery.job.job_id)
            await release.wait()
            await delivery.done()
            finished.append(delivery.job.job_id)

    worker = asyncio.create_task(work())
    try:
        await eventually(lambda: taken == ["sp-1"], what="the first job taken")
        await issue(bus, command("drain"))
        await submit(bus, "selfplay", job(2))
        release.set()
        await eventually(lambda: finished == ["sp-1"], what="the held job finished")
        await asyncio.sleep(1.5)  # several pulls' worth
        assert taken == ["sp-1"] and await queued(bus) == 1  # the new job waits for others
        assert (await last_failure(bus, "sp-2")).startswith("no failure report")  # never taken

        await issue(bus, command("resume"))
        await eventually(lambda: finished == ["sp-1", "sp-2"], what="the job taken on resume")
        assert await queued(bus) == 0
    finally:
        stop.set()
        release.set()
        await worker


async def test_a_job_fetched_as_the_drain_came_is_handed_back_with_the_reason(bus: Bus) -> None:
    await ensure_consumer(bus, "selfplay", JobSettings(ack_wait_s=30.0))
    puller = Puller(bus, "selfplay", SelfplayJob, node=NODE)
    pulling = asyncio.create_task(puller.next(timeout_s=5.0))
    await eventually(lambda: puller.fleet.round_trip_s is not None, what="the drain check")
    await issue(bus, command("drain", reason="kernel update"))
    await submit(bus, "selfplay", job(3))  # fetched after the drain: checked again, refused
    assert await pulling is None
    reason = await last_failure(bus, "sp-3")
    assert f"node {NODE} is draining" in reason and "kernel update" in reason
    other = await Puller(bus, "selfplay", SelfplayJob, node="w2").next(timeout_s=5.0)
    assert other is not None and other.job == job(3) and other.delivered == 2
    await other.done()


async def test_the_heartbeat_shows_a_standing_drain_and_its_round_trip(bus: Bus) -> None:
    """Drained while away: the node shows it once back, drained (no job held), then resumed."""
    await issue(bus, command("drain"))
    cfg = heartbeat.HeartbeatConfig(
        NODE, ["selfplay"], ["heartbeat"], every_s=0.1, detect_gpus=False
    )
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeat.run(bus, cfg, stop))

    async def shown() -> NodeStatus | None:
        entry = await bus.last(names.NODES_BUCKET, NODE)
        return None if entry.value is None else decode(entry.value, NodeStatus)

    async def draining(expected: bool) -> bool:
        s = await shown()
        return s is not None and s.draining == expected and s.rtt_ms is not None

    try:
        await eventually(lambda: draining(True), what="the node showing its drain")
        [row] = await gather(bus, [])
        assert (row.node, row.state, row.roles) == (NODE, "drained", ["selfplay"])
        assert row.command is not None and row.command.action == "drain"
        assert row.rtt_ms is not None and row.rtt_ms > 0 and row.uptime_s is not None
        await issue(bus, command("resume"))
        await eventually(lambda: draining(False), what="the node showing it resumed")
        [row] = await gather(bus, [])
        assert row.state == "idle"
    finally:
        stop.set()
        await beating


def test_the_command_line_drains_lists_and_resumes_and_audits_each(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--nats", nats_server.url]
    assert cli.main(["provision", *url]) == 0
    drain = ["fleet", "drain", "w9", "--reason", "disk swap", "--wait", "0.5", *url]
    assert cli.main(drain) == 0
    out = capsys.readouterr().out
    assert "fleet drain w9: recorded" in out and "offline: the command stands" in out
    assert cli.main(["fleet", "ls", "--json", *url]) == 0
    [row] = json.loads(capsys.readouterr().out)["nodes"]
    assert row["node"] == "w9" and row["state"] == "offline, draining"
    assert row["command"]["reason"] == "disk swap"
    assert cli.main(["fleet", "resume", "w9", "--wait", "0", *url]) == 0
    assert "fleet resume w9: recorded" in capsys.readouterr().out
    assert cli.main(["fleet", "ls", *url]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split() == [
        "NODE",
        "ROLES",
        "VERSION",
        "PROTO",
        "DEVICES",
        "UP",
        "RTT",
        "STATE",
    ]
    assert listed[-1].split()[0] == "w9" and listed[-1].endswith("offline")
    assert cli.main(["fleet", "drain", "not a node", *url]) == 2  # a bad id names itself
    assert [c.action for c in asyncio.run(audit(nats_server, None))] == ["drain", "resume"]


async def audit(server: NatsServer, seed: Path | None) -> list[FleetCommand]:
    """Every fleet command's audit event, oldest first."""
    bus = await connect(server, seed, "auditor")
    try:
        msgs = await bus.read_all(names.EVENTS_STREAM, names.all_fleet_events())
        return [decode(m.data, FleetCommand, subject=m.subject) for m in msgs]
    finally:
        await bus.close()


async def connect(server: NatsServer, seed: Path | None, name: str) -> NatsBus:
    cfg = BusConfig(
        servers=[server.url],
        name=name,
        nkey_seed=str(seed) if seed else None,
        request_timeout_s=1.0,
        connect_timeout_s=3.0,
    )
    return await NatsBus.connect(cfg)


# -- with auth on ----------------------------------------------------------------------------


@pytest.fixture
def auth(tmp_path: Path) -> Path:
    directory = tmp_path / "auth"
    init(directory)
    add_node(directory, "f1", permissions.NODE_ROLES)  # as `conclave up` makes its node's
    return directory


@pytest.fixture
def secured(tmp_path: Path, auth: Path) -> Iterator[NatsServer]:
    accounts = (auth / ACCOUNTS_FILE).read_text()
    server = NatsServer(ServerSpec("secured", tmp_path / "server", auth=accounts)).start()
    try:
        yield server
    finally:
        server.stop()


def test_only_admin_issues_fleet_commands_and_a_node_reads_its_own(
    secured: NatsServer, auth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The coordinator's registry and event grants are wildcards: fleet commands are denied
    to it all the same, as to a node carrying every role."""
    admin, url = auth / "admin.nk", ["--nats", secured.url]
    assert cli.main(["provision", *url, "--creds", str(admin)]) == 0
    drain = ["fleet", "drain", "f1", "--wait", "0", *url, "--creds", str(auth / "coordinator.nk")]
    assert cli.main(drain) == 1
    assert "only admin may issue fleet commands" in capsys.readouterr().err
    assert asyncio.run(audit(secured, admin)) == []  # refused before anything took effect

    async def refused_then_read() -> FleetCommand | None:
        node = await connect(secured, node_seed_path(auth, "f1"), "f1")
        try:
            with pytest.raises(NotIssued):
                await issue(node, command("drain", node="f1"))
            assert await Standing(node, "f1").read() is None  # it reads its own: none yet
            await issue_as(secured, admin, command("drain", node="f1"))
            return await Standing(node, "f1").read()
        finally:
            await node.close()

    standing = asyncio.run(refused_then_read())
    assert standing is not None and standing.action == "drain"
    [event] = asyncio.run(audit(secured, admin))
    assert event == standing and event.node == "f1"


async def issue_as(server: NatsServer, seed: Path, cmd: FleetCommand) -> None:
    bus = await connect(server, seed, "admin")
    try:
        await issue(bus, cmd)
    finally:
        await bus.close()


def test_the_issuer_names_the_identity_it_connects_with(auth: Path) -> None:
    admin = auth / "admin.nk"
    assert issuer(str(admin), "ops", "desk") == f"ops@desk ({public_key(admin.read_bytes())})"
    assert issuer(None, "ops", "desk") == "ops@desk"
    assert issuer(str(auth / "missing.nk"), "ops", "desk") == "ops@desk"
