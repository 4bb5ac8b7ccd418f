"""The selfplay service as a real process: games published before the job is acked, kill safety."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

from schemas import names
from schemas.codec import decode, encode
from schemas.control import ServicePulse
from schemas.game import decode_record
from schemas.jobs import ModelEvent, SelfplayJob
from shared.bus.message import Message
from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.runtime.supervisor import Child, ChildSpec, Limits, python_module_argv
from shared.work.jobs import JobSettings, ensure_consumer, last_failure, submit
from shared.work.models import ModelStore
from tests.conftest import Processes, eventually, process_config


async def games_in_stream(bus: Bus) -> list[str]:
    info = await bus.js.stream_info(names.GAMES_STREAM)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await bus.js.get_msg(names.GAMES_STREAM, seq=seq)
        ids.append(decode_record(msg.data or b"").game_id)
    return ids


async def queue_empty(bus: Bus) -> bool:
    return (await bus.js.stream_info(names.JOBS_STREAM)).state.messages == 0


def start_worker(
    processes: Processes, url: str, tmp_path: Path, node: str = "w1", **settings: object
) -> object:
    cfg = {
        "node_id": node,
        "cache_dir": str(tmp_path / node),
        "concurrent_games": 4,
        "jobs": {"ack_wait_s": 3.0, "max_deliver": 5},
        **settings,
    }
    return processes.service("services.selfplay", process_config(url, node, "selfplay"), cfg)


async def test_job_games_are_published_then_the_job_acknowledged(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    await ensure_consumer(bus, "selfplay", JobSettings(ack_wait_s=3.0, max_deliver=5))
    await submit(
        bus,
        "selfplay",
        SelfplayJob(
            job_id="sp-1", game="tictactoe", model_sha256="", generation=0, games=6, sims=8, term=1
        ),
    )
    pulses: list[ServicePulse] = []

    async def on_pulse(msg: Message) -> None:
        pulses.append(decode(msg.data, ServicePulse))

    await bus.subscribe(names.pulse_subject("w1", "selfplay"), on_pulse)
    start_worker(processes, nats_server.url, tmp_path)
    await eventually(lambda: queue_empty(bus), 60, what="job acknowledged")
    ids = await games_in_stream(bus)
    assert len(ids) == 6 and len(set(ids)) == 6
    # Its pulses report the work done (what status, metrics and the dashboard show per node).
    counted = await eventually(
        lambda: pulses and pulses[-1].counters.get("games") == 6, 10, what="games counted"
    )
    assert counted and pulses[-1].counters["simulations"] > 0
    assert pulses[-1].doing == ""  # idle again


async def test_a_worker_killed_mid_job_loses_no_acknowledged_game(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    await ensure_consumer(bus, "selfplay", JobSettings(ack_wait_s=3.0, max_deliver=5))
    await submit(
        bus,
        "selfplay",
        SelfplayJob(
            job_id="sp-2",
            game="tictactoe",
            model_sha256="",
            generation=0,
            games=400,
            sims=16,
            term=1,
        ),
    )
    first = start_worker(processes, nats_server.url, tmp_path)
    await eventually(lambda: _some_games(bus), 60, what="first games")
    first.kill()  # type: ignore[attr-defined]
    first.wait()  # type: ignore[attr-defined]
    before = await games_in_stream(bus)
    start_worker(processes, nats_server.url, tmp_path, node="w2")
    await eventually(lambda: queue_empty(bus), 120, what="redelivered job acknowledged")
    after = await games_in_stream(bus)
    assert after[: len(before)] == before, "an acknowledged game was lost"
    assert len(after) == len(set(after)), "a game was stored twice"
    assert len(after) >= 400


async def test_a_job_killed_by_sigkill_is_finished_elsewhere_with_the_reason_recorded(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    """As the OOM killer would: the supervisor restarts the worker, which records why its
    predecessor's job failed; the job is redelivered and finished, no game stored twice."""
    await ensure_consumer(bus, "selfplay", JobSettings(ack_wait_s=3.0, max_deliver=5))
    job = SelfplayJob(
        job_id="sp-4", game="tictactoe", model_sha256="", generation=0, games=300, sims=16, term=1
    )
    await submit(bus, "selfplay", job)
    process = json.dumps(process_config(nats_server.url, "w1", "selfplay"))
    config = json.dumps({"node_id": "w1", "cache_dir": str(tmp_path / "w1"), "concurrent_games": 4})

    def argv(fd: int) -> list[str]:
        told = json.dumps({**json.loads(process), "pulse_fd": fd})
        return python_module_argv("services.selfplay", "--process", told, "--config", config)

    spec = ChildSpec("selfplay", argv, tmp_path / "w1.log", restarts_told=True)
    child, stop = Child(spec, Limits(startup_s=60.0)), asyncio.Event()
    supervising = asyncio.create_task(child.run(stop))
    try:
        await eventually(lambda: child.doing == "selfplay sp-4", 60, what="the job in hand")
        await eventually(lambda: _some_games(bus), 60, what="first games")
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        reason = await eventually(lambda: _failure(bus, "sp-4"), 60, what="the kill's reason")
        assert "killed by SIGKILL" in reason and "w1" in reason, reason
        start_worker(processes, nats_server.url, tmp_path, node="w2")
        await eventually(lambda: queue_empty(bus), 120, what="redelivered job acknowledged")
    finally:
        stop.set()
        await asyncio.wait_for(supervising, 30)
    ids = await games_in_stream(bus)
    assert len(ids) == len(set(ids)) and len(ids) >= 300
    assert await bus.subject_counts(names.DLQ_STREAM, names.all_dead_letters()) == {}


async def test_a_job_over_the_memory_budget_is_refused_with_the_reason_and_played_elsewhere(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    await ensure_consumer(bus, "selfplay", JobSettings(ack_wait_s=3.0, max_deliver=5))
    job = SelfplayJob(
        job_id="sp-3", game="tictactoe", model_sha256="", generation=0, games=6, sims=8, term=1
    )
    await submit(bus, "selfplay", job)
    small = start_worker(processes, nats_server.url, tmp_path, "w-small", memory_budget_mb=1.0)
    reason = await eventually(lambda: _failure(bus, "sp-3"), 60, what="the refusal")
    assert reason.startswith("memory: needs ~") and "the budget is 1 MB" in reason, reason
    assert "on w-small" in reason
    assert not await games_in_stream(bus)
    small.terminate()  # type: ignore[attr-defined]
    start_worker(processes, nats_server.url, tmp_path, node="w-big")
    await eventually(lambda: queue_empty(bus), 60, what="played by the worker it fits")
    assert len(await games_in_stream(bus)) == 6
    assert await bus.subject_counts(names.DLQ_STREAM, names.all_dead_letters()) == {}


async def _failure(bus: Bus, job_id: str) -> str | None:
    reason = await last_failure(bus, job_id)
    return None if reason.startswith("no failure report") else reason


async def _some_games(bus: Bus) -> bool:
    return (await bus.js.stream_info(names.GAMES_STREAM)).state.messages >= 8


async def test_a_promoted_model_is_prefetched_into_the_workers_cache(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    start_worker(processes, nats_server.url, tmp_path, adopt_window_s=2.0)
    digest = await ModelStore(bus, tmp_path / "trainer").put(os.urandom(2_000_000))
    event = ModelEvent(
        kind="promoted", game="tictactoe", generation=1, sha256=digest, at=time.time()
    )

    async def cached() -> bool:
        await bus.publish(names.model_event_subject("promoted"), encode(event))
        return (tmp_path / "w1" / digest).exists()

    await eventually(cached, 30, every=1.0, what="the promoted model in the worker's cache")
