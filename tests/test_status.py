"""`conclave status`: live nodes, the leader, and bad entries reported by field."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from schemas import names
from schemas.codec import encode
from schemas.control import DeviceReport, Lease, NodeStatus, Resources, ServiceState
from schemas.jobs import DeadLetter, EvalJob, EvalResult, PlayerSpec, SelfplayJob
from services.scheduler import STATE_KEY, LoopRecord, allocation_shown
from shared.bus.ports import Bus
from shared.cli.status import games_info, gather, render_text
from shared.loop.allocation import allocate
from shared.loop.effects import issue
from shared.loop.policy import GameState, LoopState
from shared.work.jobs import submit


def status(
    node: str, sent_at: float, roles: list[str], workers: tuple[ServiceState, ...] = ()
) -> NodeStatus:
    services = [
        ServiceState(name="heartbeat", alive=True, pid=1, lag_p50_ms=0.2, lag_max_ms=4.5),
        ServiceState(name="leader", alive=False),
        *workers,
    ]
    return NodeStatus(
        node=node,
        roles=roles,
        services=services,
        games=["connect4", "tictactoe"],
        version="0.1.0",
        resources=Resources(2, 2**31),
        hostname="h",
        started_at=0.0,
        sent_at=sent_at,
    )


async def test_report_counts_live_nodes_by_role_and_names_the_leader(bus: Bus) -> None:
    now = time.time()
    await bus.write(names.NODES_BUCKET, "a", encode(status("a", now, ["coordinator"])), ttl_s=5)
    await bus.write(
        names.NODES_BUCKET, "b", encode(status("b", now - 30, ["coordinator"])), ttl_s=5
    )
    lease = Lease(node="a", instance="inst", term=0, acquired_at=now - 12, ttl_s=3)
    rev = await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, encode(lease), ttl_s=5)
    report = await gather(bus)
    assert report.leader is not None and (report.leader.node, report.leader.term) == ("a", rev)
    assert 11 <= report.leader.held_s <= 14
    assert [(n.id, n.alive) for n in report.nodes] == [("a", True), ("b", False)]
    assert report.nodes_alive == 1 and report.alive_by_role == {"coordinator": 1}
    assert report.nodes[0].loop_lag_ms == 4.5
    text = render_text(report)
    assert "leader: a" in text and "leader(down)" in text


async def test_garbage_status_entries_are_reported_with_the_field_not_fatal(bus: Bus) -> None:
    await bus.write(names.NODES_BUCKET, "junk", b'{"type":"conclave.node_status.v1","node":7}')
    report = await gather(bus)
    assert report.nodes == [] and report.leader is None
    assert len(report.problems) == 1 and "$.node" in report.problems[0]


async def test_games_section_reports_best_elo_queues_and_dead_letters(bus: Bus) -> None:
    state = LoopState({"tictactoe": GameState(generation=2, best="ab" * 32, trainings=2)})
    counts = {"tictactoe": [(0.0, 0), (1800.0, 500)]}
    await bus.write(
        names.LOOP_BUCKET,
        STATE_KEY,
        encode(LoopRecord(term=3, state=state, updated_at=0.0, ticks=1, game_counts=counts)),
    )
    gen2, rnd = PlayerSpec("gen2", "ab" * 32, sims=8), PlayerSpec("random", agent="random")
    job = EvalJob(
        job_id="tictactoe-g2-0",
        game="tictactoe",
        kind="gauntlet",
        a=gen2,
        b=rnd,
        games=20,
        term=3,
        group="g2",
    )
    await issue(bus, job)  # only an issued job's result counts
    result = EvalResult(
        job_id=job.job_id,
        game="tictactoe",
        kind="gauntlet",
        a=gen2,
        b=rnd,
        wins_a=15,
        draws=3,
        wins_b=2,
        term=3,
        finished_at=0.0,
        group="g2",
    )
    await bus.publish_durable(names.results_subject("tictactoe", "g2"), encode(result))
    await submit(
        bus,
        "selfplay",
        SelfplayJob(
            job_id="tictactoe-sp-1",
            game="tictactoe",
            model_sha256="",
            generation=2,
            games=10,
            sims=8,
            term=3,
        ),
    )
    letter = DeadLetter(
        kind="eval",
        job_id="tictactoe-m2-0",
        stream_seq=9,
        deliveries=5,
        reason="boom",
        job=b"{}",
        at=0.0,
    )
    await bus.publish_durable(names.dlq_subject("eval", "tictactoe", "m2"), encode(letter))

    [info] = await games_info(bus, [])
    assert (info.game, info.generation, info.best_sha256) == ("tictactoe", 2, "ab" * 32)
    assert info.best_elo is not None and info.best_elo > 0 and info.best_elo_ci
    assert info.queues["selfplay"] == 1 and info.dead_letters == 1
    assert info.games_per_hour == 1000.0


GB = 2**30
H100 = "NVIDIA H100 80GB HBM3"
BROKEN = "policy differs from the CPU's by 0.4 (tolerance 0.01)"


CPU = DeviceReport(device="cpu", name="Xeon", self_test="passed")
GPU = DeviceReport(
    device="cuda:0", name=H100, tier="gpu", self_test="passed", device_memory_total=80 * GB
)


def worker(name: str, device: DeviceReport, alive: bool = True, **changes: Any) -> ServiceState:
    """A worker's state as the heartbeat forwards it: its pulse's device report."""
    report = msgspec.structs.replace(device, **changes)
    return ServiceState(name=name, alive=alive, pid=7, compute=report)


def gpu_node(now: float) -> NodeStatus:
    """Two self-play workers sharing one GPU, a CPU trainer, and a dead worker's stale report."""
    workers = (
        worker(
            "selfplay-0",
            GPU,
            rss_bytes=GB,
            device_memory_bytes=2 * GB,
            positions_per_s={"6x128": 9000.0},
        ),
        worker(
            "selfplay-1",
            GPU,
            rss_bytes=GB,
            device_memory_bytes=GB,
            positions_per_s={"6x128": 8000.0, "4x64": 20000.0},
        ),
        worker("trainer", CPU, rss_bytes=GB // 2),
        worker("selfplay-2", CPU, alive=False, rss_bytes=50 * GB, self_test="boom"),
    )
    return status("g", now, ["selfplay", "trainer"], workers)


def broken_node(now: float) -> NodeStatus:
    """A node whose GPU computes wrong answers: both its workers refuse jobs."""
    bad = DeviceReport(device="cuda:0", tier="gpu", self_test=BROKEN, rss_bytes=300 * 2**20)
    return status("x", now, ["selfplay"], (worker("selfplay-0", bad), worker("evaluator", bad)))


async def test_status_shows_each_nodes_device_tier_memory_self_test_and_speed(bus: Bus) -> None:
    now = time.time()
    for node in (gpu_node(now), broken_node(now)):
        await bus.write(names.NODES_BUCKET, node.node, encode(node), ttl_s=5)
    report = await gather(bus)
    data = msgspec.json.decode(msgspec.json.encode(report))
    g, x = data["nodes"]
    assert g["games"] == ["connect4", "tictactoe"]
    assert g["compute"] == {
        "devices": ["cpu Xeon", f"cuda:0 {H100}"],
        "tiers": ["gpu", "cpu"],
        "rss_bytes": 2 * GB + GB // 2,  # the dead worker's stale report left out
        "device_memory_bytes": 3 * GB,
        "device_memory_total": 80 * GB,  # one GPU, however many workers share it
        "self_test": "passed",
        "failures": {},
        "positions_per_s": {"4x64": 20000.0, "6x128": 17000.0},
    }
    services = {s["name"]: s for s in g["services"]}
    assert services["selfplay-1"]["compute"]["positions_per_s"]["4x64"] == 20000.0
    assert services["heartbeat"]["compute"] is None
    assert x["compute"]["self_test"] == "failed"
    assert x["compute"]["failures"] == {"selfplay-0": BROKEN, "evaluator": BROKEN}

    text = render_text(report)
    g_line, x_line = (line for line in text.splitlines() if line.startswith("    "))
    assert g_line == (
        f"    cpu Xeon, cuda:0 {H100}; tier gpu/cpu; mem 2.5 GB; VRAM 3.0 GB/80.0 GB; "
        "self-test ok; pos/s 4x64 20000, 6x128 17000"
    )
    assert x_line == (
        "    cuda:0; tier gpu; mem 600 MB; "
        f"SELF-TEST FAILED, no jobs: evaluator,selfplay-0: {BROKEN}"
    )


async def test_a_worker_still_testing_shows_as_running_and_a_coordinator_shows_no_device(
    bus: Bus,
) -> None:
    now = time.time()
    testing = status("t", now, ["selfplay"], (worker("selfplay-0", CPU, self_test=""),))
    for node in (testing, status("c", now, ["coordinator"])):
        await bus.write(names.NODES_BUCKET, node.node, encode(node), ttl_s=5)
    report = await gather(bus)
    c, t = report.nodes
    assert c.compute is None and t.compute is not None and t.compute.self_test == "testing"
    [line] = (line for line in render_text(report).splitlines() if line.startswith("    "))
    assert "self-test running" in line


async def seed_allocation(bus: Bus) -> None:
    """Two games at base weights 1:2, 40% and 60% of the last ten minutes' self-play time."""
    planned = allocate({"tictactoe": 1.0, "tictacmo": 2.0}, {}, 600.0)
    state = LoopState({n: GameState(generation=0, best=n[:2] * 32, trainings=1) for n in planned})
    counts = {"tictactoe": [(0.0, 0), (600.0, 40)], "tictacmo": [(0.0, 0), (600.0, 60)]}
    shown = allocation_shown(planned, state, {"tictactoe": 240.0, "tictacmo": 360.0})
    seconds = {"tictactoe": 1240.0, "tictacmo": 2360.0}
    record = LoopRecord(
        term=1,
        state=state,
        updated_at=600.0,
        game_counts=counts,
        allocation=shown,
        selfplay_seconds=seconds,
    )
    await bus.write(names.LOOP_BUCKET, STATE_KEY, encode(record))


async def test_status_shows_each_games_self_play_share_target_and_actual(bus: Bus) -> None:
    await seed_allocation(bus)
    report = await gather(bus)
    as_json = msgspec.json.decode(msgspec.json.encode(report))
    shares = {g["game"]: g["selfplay"] for g in as_json["games"]}
    assert shares["tictacmo"]["target"] == round(2 / 3, 4) and shares["tictacmo"]["actual"] == 0.6
    assert shares["tictactoe"]["target"] == round(1 / 3, 4)
    assert shares["tictactoe"]["actual"] == 0.4
    seconds = {g["game"]: g["selfplay_seconds"] for g in as_json["games"]}
    assert seconds == {"tictactoe": 1240.0, "tictacmo": 2360.0}  # so far, for measuring a window
    text = render_text(report)
    for weight, target, actual in ((2, 67, 60), (1, 33, 40)):
        factors = f"weight {weight} x learning 1.00 x staleness 1.00"
        assert f"self-play share: target {target}% ({factors}), actual {actual}%" in text
