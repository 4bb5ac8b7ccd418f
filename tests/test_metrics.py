"""The Prometheus endpoint: parses with its own parser and agrees with `conclave status`."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import pytest
from prometheus_client.exposition import start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from schemas import names
from schemas.codec import encode
from schemas.control import DeviceReport, Lease, NodeStatus, Resources, ServiceState
from schemas.jobs import SelfplayJob
from services.scheduler import STATE_KEY, LoopRecord
from shared.bus.ports import Bus
from shared.cli.metrics import BusCollector, families
from shared.cli.status import gather
from shared.loop.phase import MatchPhase, Phase
from shared.loop.policy import GameState, LoopState
from shared.work.jobs import submit
from tests.test_status import seed_allocation

BROKEN = "value differs from the CPU's by 0.3"
GPU = DeviceReport(
    device="cuda:0",
    name="NVIDIA L4",
    tier="gpu",
    self_test="passed",
    positions_per_s={"4x64": 15000.0, "6x128": 6000.0},
    rss_bytes=2**30,
    device_memory_bytes=3 * 2**30,
    device_memory_total=24 * 2**30,
)

MATCH = Phase(
    "match",
    generation=2,
    games=0,
    games_needed=400,
    match=MatchPhase(
        candidate="cd" * 32,
        games=40,
        scheduled=60,
        max_games=200,
        wins=30,
        draws=4,
        losses=6,
        llr=1.5,
        lower=-2.94,
        upper=2.94,
        elo=120.0,
    ),
)


def node(node_id: str, roles: list[str], lag: float) -> NodeStatus:
    now = time.time()
    work = {"games": 120.0, "simulations": 9000.0} if "selfplay" in roles else {}
    services = [
        ServiceState(
            name="heartbeat", alive=True, pid=1, lag_p50_ms=0.1, lag_max_ms=lag, counters=work
        )
    ]
    if "selfplay" in roles:  # one worker on the GPU; one whose CPU fails its self-test
        broken = DeviceReport(device="cpu", self_test=BROKEN, rss_bytes=2**28)
        services += [
            ServiceState(name="selfplay-0", alive=True, compute=GPU),
            ServiceState(name="evaluator", alive=True, compute=broken),
        ]
    return NodeStatus(
        node=node_id,
        roles=roles,
        services=services,
        version="0.1.0",
        resources=Resources(2, 2**30),
        hostname="h",
        started_at=now,
        sent_at=now,
    )


async def seed(bus: Bus) -> None:
    await bus.write(names.NODES_BUCKET, "n1", encode(node("n1", ["coordinator"], 3.5)), ttl_s=30)
    await bus.write(names.NODES_BUCKET, "n2", encode(node("n2", ["selfplay"], 7.0)), ttl_s=30)
    lease = Lease(node="n1", instance="i1", term=0, acquired_at=time.time(), ttl_s=3)
    await bus.write(names.ELECTION_BUCKET, names.LEADER_KEY, encode(lease))
    state = LoopState({"tictactoe": GameState(generation=2, best="ab" * 32, trainings=2)})
    record = LoopRecord(
        term=4,
        state=state,
        updated_at=time.time(),
        phases={"tictactoe": MATCH},
        evaluation_share=0.12,
    )
    await bus.write(names.LOOP_BUCKET, STATE_KEY, encode(record))
    for i in range(3):
        job = SelfplayJob(
            job_id=f"sp-{i}",
            game="tictactoe",
            model_sha256="ab" * 32,
            generation=2,
            games=10,
            sims=8,
            term=4,
            group="sp",
        )
        await submit(bus, "selfplay", job)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_parse_and_match_status_for_the_same_moment(bus: Bus) -> None:
    await seed(bus)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BusCollector(bus, asyncio.get_running_loop()))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        samples = await asyncio.to_thread(scrape, server.server_port)
        report = await gather(bus)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert samples[("conclave_nodes_alive", ())] == report.nodes_alive == 2
    for role, count in report.alive_by_role.items():
        assert samples[("conclave_nodes_alive_by_role", (("role", role),))] == count
    assert report.leader is not None
    term = samples[("conclave_leader_term_total", (("node", "n1"),))]
    assert term == report.leader.term and samples[("conclave_leader_present", ())] == 1
    [game] = report.games
    assert samples[("conclave_best_generation", (("game", "tictactoe"),))] == game.generation == 2
    queued = samples[("conclave_jobs_queued", (("game", "tictactoe"), ("kind", "selfplay")))]
    assert queued == game.queues["selfplay"] == 3
    assert samples[("conclave_games_total", (("game", "tictactoe"),))] == game.games_total
    for n in report.nodes:
        lag = samples[("conclave_loop_lag_ms", (("node", n.id), ("service", "heartbeat")))]
        assert lag == n.services[0].loop_lag_ms
    assert game.phase == MATCH and game.evaluation_share == 0.12
    tictactoe = (("game", "tictactoe"),)
    assert samples[("conclave_match_llr", tictactoe)] == 1.5
    assert samples[("conclave_evaluation_share", tictactoe)] == 0.12
    assert samples[("conclave_phase", (("game", "tictactoe"), ("phase", "match")))] == 1
    # The one self-play queue holding jobs: "selfplay", or its default tier's lane once tiered.
    [(queue, waited)] = [
        (q, a) for q, a in game.queue_age_s.items() if q.startswith("selfplay") and a is not None
    ]
    age = samples[("conclave_queue_age_seconds", (("game", "tictactoe"), ("queue", queue)))]
    assert waited is not None and 0 <= age <= waited  # the scrape came first
    assert game.queue_age_s["eval.match"] is None
    games = (("kind", "games"), ("node", "n2"), ("service", "heartbeat"))
    assert samples[("conclave_work_total", games)] == 120.0

    worker = (("device", "cuda:0"), ("node", "n2"), ("service", "selfplay-0"), ("tier", "gpu"))
    assert samples[("conclave_rss_bytes", worker)] == GPU.rss_bytes
    assert samples[("conclave_device_memory_bytes", worker)] == GPU.device_memory_bytes
    assert samples[("conclave_device_memory_total_bytes", worker)] == GPU.device_memory_total
    net = (("device", "cuda:0"), ("net", "4x64"), *worker[1:])  # labels sorted by name
    assert samples[("conclave_positions_per_second", net)] == 15000.0
    assert samples[("conclave_self_test_ok", worker)] == 1
    failed = (("device", "cpu"), ("node", "n2"), ("service", "evaluator"), ("tier", "cpu"))
    assert samples[("conclave_self_test_ok", failed)] == 0
    assert samples[("conclave_rss_bytes", failed)] == 2**28
    [n2] = [n for n in report.nodes if n.id == "n2"]
    assert n2.compute is not None and n2.compute.failures == {"evaluator": BROKEN}


async def test_metrics_show_each_games_self_play_share_as_status_does(bus: Bus) -> None:
    await seed_allocation(bus)
    report = await gather(bus)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families(report)
        for s in family.samples
    }
    for g in report.games:
        assert g.selfplay is not None and g.selfplay.actual is not None
        game = ("game", g.game)
        assert samples[("conclave_selfplay_share", (game, ("kind", "target")))] == g.selfplay.target
        assert samples[("conclave_selfplay_share", (game, ("kind", "actual")))] == g.selfplay.actual
        weight = samples[("conclave_selfplay_factor", (("factor", "weight"), game))]
        assert weight == g.selfplay.weight
    targets = [v for (name, labels), v in samples.items() if ("kind", "target") in labels]
    assert sum(targets) == pytest.approx(1.0, abs=1e-3)
