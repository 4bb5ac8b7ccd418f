"""No consumer crashes on a message another node wrote: bad evaluation results, node keys,
candidate events and pulse floods are skipped or dead-lettered, and the consumer goes on."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from schemas import names
from schemas.codec import decode, encode
from schemas.control import MAX_SERVICES, NodeStatus, Resources, ServicePulse, ServiceState
from schemas.jobs import DeadLetter, EvalJob, EvalResult, ModelEvent, ModelMeta, PlayerSpec
from services.heartbeat import KNOWN_KINDS, HeartbeatConfig, Pulses
from services.heartbeat import run as heartbeat_run
from services.syncer import (
    MODELS_CONSUMER,
    Archiver,
    SyncerConfig,
    archive_one_model,
    results_name,
)
from shared import archive
from shared.bus.client import BusConfig, NatsBus
from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.cli.dashboard import Unreadable, model_events
from shared.cli.status import gather, render_text
from shared.loop.effects import Effects, EffectSettings, issue
from shared.loop.observe import observe_game, train_job_id
from shared.loop.policy import GameState, LoopConfig, Trained
from shared.node.console import Console
from shared.node.launcher import ROLE_SERVICES
from shared.work.models import ModelStore
from tests.conftest import eventually

GAME = "tictactoe"
GEN1 = PlayerSpec("gen1", "ab" * 32, sims=8)
RANDOM = PlayerSpec("random", agent="random")
DEEP = "[" * 5000 + "]" * 5000


def raw(message: msgspec.Struct, **change: Any) -> bytes:
    """`message` as JSON with fields changed or added, past any check its constructor makes;
    the value "@DEEP@" becomes 5000 nested arrays."""
    doc = json.loads(encode(message))
    doc.update(change)
    return json.dumps(doc).encode().replace(b'"@DEEP@"', DEEP.encode())


async def test_bad_results_do_not_stop_the_consoles_ratings(bus: Bus, tmp_path: Path) -> None:
    job = EvalJob(
        job_id=f"{GAME}-g1-0",
        game=GAME,
        kind="gauntlet",
        a=GEN1,
        b=RANDOM,
        games=10,
        term=1,
        group="g1",
    )
    await issue(bus, job)
    good = EvalResult(
        job_id=job.job_id,
        game=GAME,
        kind="gauntlet",
        a=GEN1,
        b=RANDOM,
        wins_a=7,
        draws=2,
        wins_b=1,
        term=1,
        finished_at=1.0,
        group="g1",
    )
    subject = names.results_subject(GAME, "g1")
    player = msgspec.to_builtins(GEN1)
    for bad in (
        raw(good, job_id=f"{GAME}-g1-1", b=player),  # gen1 against itself
        raw(good, job_id=f"{GAME}-g1-2", wins_b=-5),
        raw(good, job_id=f"{GAME}-g1-3", extra="@DEEP@"),
    ):
        await bus.publish_durable(subject, bad)
    await bus.publish_durable(subject, encode(good))

    console = Console(bus.cfg, tmp_path, GAME, None, 1.0)
    assert GAME in await console.progress_line(bus)
    await console._write_ratings(bus)
    table = (tmp_path / "run" / GAME / "ratings.md").read_text()
    assert "| gen1 | +" in table and "| random | +0 |" in table


async def test_a_deeply_nested_node_key_is_shown_unreadable(bus: Bus) -> None:
    now = time.time()
    services = [ServiceState(name="heartbeat", alive=True, pid=1, lag_p50_ms=0.2, lag_max_ms=4.5)]
    fine = NodeStatus(
        node="ok",
        roles=["selfplay"],
        services=services,
        version="0.1.0",
        resources=Resources(2, 2**31),
        hostname="h",
        started_at=0.0,
        sent_at=now,
    )
    await bus.write(names.NODES_BUCKET, "ok", encode(fine))
    await bus.write(names.NODES_BUCKET, "evil", raw(fine, node="evil", roles="@DEEP@"))
    report = await gather(bus)
    assert [n.id for n in report.nodes] == ["ok"] and report.nodes_alive == 1
    [problem] = report.problems
    assert problem.startswith("node evil: unreadable") and "nested" in problem
    assert "problem: node evil" in render_text(report)


async def test_an_invalid_candidate_is_dead_lettered_and_the_next_one_archived(
    bus: Bus, tmp_path: Path
) -> None:
    models = ModelStore(bus, tmp_path / "cache")
    sha = await models.put(b"a checkpoint")
    candidate = ModelEvent(kind="candidate", game=GAME, generation=1, sha256=sha, at=1.0)
    subject = names.model_event_subject("candidate")
    await bus.publish_durable(subject, raw(candidate, game="no such game"))
    await bus.publish_durable(subject, encode(candidate))

    store = archive.LocalStore(tmp_path / "archive")
    cfg = SyncerConfig("n1", str(tmp_path / "cache"), local_dir=str(tmp_path / "archive"))
    arch = Archiver(bus, cfg, store, "file://archive")
    sub = await bus.pull(names.EVENTS_STREAM, subject, MODELS_CONSUMER)
    for msg in await sub.fetch(2, 2.0):
        await archive_one_model(arch, models, msg)

    [dead] = await bus.read_all(names.DLQ_STREAM, names.dlq_subject("model", "unknown", "*"))
    letter = decode(dead.data, DeadLetter)
    assert "$.game" in letter.reason and "no such game" in letter.reason
    assert arch.newest_model == sha
    assert sha in archive.list_models(store, GAME)
    info = await bus.js.consumer_info(names.EVENTS_STREAM, MODELS_CONSUMER)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_a_result_whose_game_cannot_be_archived_is_dead_lettered(
    bus: Bus, tmp_path: Path
) -> None:
    long_game = "g" * 60  # a subject token, but with the results suffix no archive name
    await bus.publish_durable(names.results_subject(long_game, "g1"), b"{}")
    store = archive.LocalStore(tmp_path / "archive")
    cfg = SyncerConfig("n1", str(tmp_path / "cache"), local_dir=str(tmp_path / "archive"))
    arch = Archiver(bus, cfg, store, "file://archive", name_of=results_name)
    sub = await bus.pull(names.RESULTS_STREAM, "results.>", "t")
    [msg] = await sub.fetch(1, 2.0)
    await arch.take(msg)
    [dead] = await bus.read_all(names.DLQ_STREAM, names.dlq_subject("archive", "*", "*"))
    assert long_game in decode(dead.data, DeadLetter).reason and not arch.pending
    info = await bus.js.consumer_info(names.RESULTS_STREAM, "t")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_ten_thousand_service_names_leave_the_status_readable_and_fresh(
    bus: Bus, nats_server: NatsServer
) -> None:
    expected = ["heartbeat", "selfplay", "trainer"]
    cfg = HeartbeatConfig("n1", ["selfplay"], expected, every_s=0.1, detect_gpus=False)
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeat_run(bus, cfg, stop))
    try:
        await status_when(bus, "n1", lambda s: True)  # it listens to pulses before it writes
        await flood(nats_server.url, "n1", 10_000)
        await pulse(bus, "n1", "trainer")  # after the flood: it shows once the flood is read
        status, size = await status_when(bus, "n1", lambda s: alive(s, "trainer"))
    finally:
        stop.set()
        await beating
    assert size < bus.nc.max_payload
    listed = {s.name for s in status.services}
    assert set(expected) <= listed and len(listed) <= MAX_SERVICES
    assert time.time() - status.sent_at < 1.0


def alive(status: NodeStatus, service: str) -> bool:
    return any(s.name == service and s.alive for s in status.services)


async def flood(url: str, node: str, count: int) -> None:
    """`count` pulses from as many invented services, on their own connection."""
    bus = await NatsBus.connect(BusConfig(servers=[url], name="flood"))
    try:
        for i in range(count):
            await bus.nc.publish(names.pulse_subject(node, f"svc{i}"), pulse_bytes(node, f"svc{i}"))
        await bus.flush()
    finally:
        await bus.close()


async def pulse(bus: Bus, node: str, service: str) -> None:
    await bus.nc.publish(names.pulse_subject(node, service), pulse_bytes(node, service))
    await bus.flush()


def pulse_bytes(node: str, service: str) -> bytes:
    counters = {f"c{k}": float(k) for k in range(40)}
    now = time.time()
    return encode(
        ServicePulse(
            node=node,
            service=service,
            pid=7,
            lag_p50_ms=0.1,
            lag_max_ms=0.2,
            started_at=now,
            sent_at=now,
            counters=counters,
            doing="x" * 200,
        )
    )


async def status_when(
    bus: Bus, node: str, ready: Callable[[NodeStatus], bool]
) -> tuple[NodeStatus, int]:
    """The node's stored status once it is `ready`, and its size; every one read decodes."""

    async def stored() -> tuple[NodeStatus, int] | None:
        entry = await bus.last(names.NODES_BUCKET, node)
        if entry.value is None:
            return None
        status = decode(entry.value, NodeStatus)
        return (status, len(entry.value)) if ready(status) else None

    found: tuple[NodeStatus, int] = await eventually(
        stored, 10, every=0.1, what=f"the status of {node} ready"
    )
    return found


def test_pulses_keep_expected_then_known_services_within_the_cap() -> None:
    pulses = Pulses(["heartbeat"], max_extra=2)
    for t, name in enumerate(["junk1", "junk2", "junk3", "selfplay-9", "heartbeat", "junk4"]):
        pulses.take(
            ServicePulse(
                node="n1",
                service=name,
                pid=1,
                lag_p50_ms=0.0,
                lag_max_ms=0.0,
                started_at=0.0,
                sent_at=0.0,
            ),
            now=float(t),
        )
    assert set(pulses.latest) == {"heartbeat", "junk2", "selfplay-9"}
    assert pulses.dropped == 2  # junk3 and junk4; selfplay-9 pushed junk1 (the oldest) out
    assert [s.name for s in pulses.states(["heartbeat"], 3.0)] == [
        "heartbeat",
        "junk2",
        "selfplay-9",
    ]


def test_the_heartbeats_known_services_are_the_launchers() -> None:
    launched = set(itertools.chain.from_iterable(ROLE_SERVICES.values()))
    assert {"heartbeat", *launched} == KNOWN_KINDS


async def test_the_dashboard_skips_unreadable_and_unknown_game_events(bus: Bus) -> None:
    promoted = ModelEvent(kind="promoted", game=GAME, generation=1, sha256="ab" * 32, at=1.0)
    subject = names.model_event_subject("promoted")
    await bus.publish_durable(subject, raw(promoted, detail="@DEEP@"))
    await bus.publish_durable(subject, raw(promoted, game="no such game"))
    await bus.publish_durable(subject, encode(promoted))
    assert await model_events(bus, Unreadable()) == [promoted]


async def test_an_unreadable_trained_marker_fails_the_training_not_every_tick(bus: Bus) -> None:
    """A trainer's garbage at `trained.<job>` made every scheduler tick fail (BadMessage)."""
    state = GameState(generation=0, best=GEN1.sha256, trainings=1, training_in_progress=True)
    key = names.trained_key(train_job_id(GAME, 1))
    await bus.write(names.REGISTRY_BUCKET, key, DEEP.encode())
    snapshot = await observe_game(bus, GAME, state, LoopConfig(games=(GAME,)))
    assert snapshot.trained is None and snapshot.failed_training == 1


async def test_a_trained_marker_counts_only_for_its_job_game_and_a_stored_model(
    bus: Bus, tmp_path: Path
) -> None:
    """Job ids are predictable: a forged marker naming a model never stored cost a whole
    match of dead-lettered jobs before the candidate was rejected."""
    state = GameState(generation=0, best=GEN1.sha256, trainings=1, training_in_progress=True)
    job = train_job_id(GAME, 1)
    sha = await ModelStore(bus, tmp_path).put(b"a checkpoint")
    real = ModelMeta(
        sha256=sha,
        game=GAME,
        generation=1,
        parent_sha256=GEN1.sha256,
        size_bytes=12,
        window_first_seq=1,
        window_last_seq=9,
        positions=100,
        steps=50,
        policy_loss=1.0,
        value_loss=0.5,
        created_at=0.0,
        train_job=job,
    )
    forged = [
        msgspec.structs.replace(real, sha256="ef" * 32),  # no such model
        msgspec.structs.replace(real, train_job=f"{GAME}-t7"),
        msgspec.structs.replace(real, game="connect4"),
    ]
    for marker in [*forged, real]:
        await bus.write(names.REGISTRY_BUCKET, names.trained_key(job), encode(marker))
        snapshot = await observe_game(bus, GAME, state, LoopConfig(games=(GAME,)))
        counted = snapshot.trained == Trained(1, sha)
        assert counted == (marker is real) and (snapshot.failed_training == 1) != counted


async def test_unreadable_model_metadata_means_no_resignation_not_a_failed_tick(bus: Bus) -> None:
    """With resignation on, a trainer's garbage at the best model's metadata failed every tick."""
    await bus.write(names.REGISTRY_BUCKET, names.model_key(GAME, GEN1.sha256), b"\xff")
    effects = Effects(bus, LoopConfig(games=(GAME,)), EffectSettings(resign=True), term=1)
    assert await effects.resign_value(GAME, GEN1.sha256) is None
