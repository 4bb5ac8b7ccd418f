"""The evaluator service as a real process: results stored before the job is acked, failures."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.jobs import EvalJob, EvalResult, ModelEvent, PlayerSpec, job_group
from services.evaluator import BadPlayer, EvaluatorConfig, check_spec
from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.net import NetConfig, PolicyValueNet, checkpoint_bytes
from shared.work.jobs import JobSettings, Puller, ensure_consumer, last_failure, submit
from shared.work.models import ModelStore
from tests.conftest import Processes, eventually, process_config

RANDOM = PlayerSpec("random", agent="random")
ONESTEP = PlayerSpec("onestep", agent="onestep")


def start_evaluator(
    processes: Processes, url: str, tmp_path: Path, settings: JobSettings
) -> subprocess.Popen[bytes]:
    cfg = {
        "node_id": "e1",
        "cache_dir": str(tmp_path / "e1"),
        "concurrent_games": 8,
        "jobs": {"ack_wait_s": settings.ack_wait_s, "max_deliver": settings.max_deliver},
    }
    return processes.service("services.evaluator", process_config(url, "e1", "evaluator"), cfg)


async def results(bus: Bus) -> dict[str, EvalResult]:
    info = (await bus.js.stream_info(names.RESULTS_STREAM)).state
    found = {}
    for seq in range(info.first_seq, info.last_seq + 1 if info.messages else info.first_seq):
        msg = await bus.js.get_msg(names.RESULTS_STREAM, seq=seq)
        result = decode(msg.data or b"", EvalResult)
        found[result.job_id] = result
    return found


async def queue_empty(bus: Bus) -> bool:
    return (await bus.js.stream_info(names.JOBS_STREAM)).state.messages == 0


async def match_job_being_played(bus: Bus) -> bool:
    info = await bus.js.consumer_info(names.JOBS_STREAM, names.job_consumer("eval", "match"))
    return bool(info.num_ack_pending == 1)


async def store_tiny_model(bus: Bus, tmp_path: Path) -> str:
    net = PolicyValueNet(
        NetConfig(blocks=1, channels=8, value_hidden=8),
        TICTACTOE.encoding_shape,
        TICTACTOE.num_actions,
    )
    return await ModelStore(bus, tmp_path / "writer").put(checkpoint_bytes(net, "tictactoe", 1))


async def test_matches_are_played_and_results_stored_before_the_jobs_are_acked(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    settings = JobSettings(ack_wait_s=10.0, max_deliver=3)
    await ensure_consumer(bus, "eval", settings)
    model = PlayerSpec("gen1", sha256=await store_tiny_model(bus, tmp_path), sims=8)
    gauntlet = EvalJob(
        job_id="ev-1",
        game="tictactoe",
        kind="gauntlet",
        a=RANDOM,
        b=ONESTEP,
        games=20,
        term=1,
        seed=3,
    )
    await submit(bus, "eval", gauntlet)
    match = EvalJob(
        job_id="ev-2",
        game="tictactoe",
        kind="match",
        a=model,
        b=RANDOM,
        games=6,
        term=1,
        seed=7,
        group="m1",
    )
    await submit(bus, "eval", match)
    start_evaluator(processes, nats_server.url, tmp_path, settings)
    await eventually(lambda: queue_empty(bus), 20, what="both jobs acknowledged")
    stored = await results(bus)
    first, second = stored["ev-1"], stored["ev-2"]
    assert (first.a, first.b, first.kind) == (RANDOM, ONESTEP, "gauntlet")
    assert first.wins_a + first.draws + first.wins_b == 20
    assert first.wins_b > first.wins_a
    assert (second.a, second.b) == (model, RANDOM)
    assert second.wins_a + second.draws + second.wins_b == 6
    for job in (gauntlet, match):  # filed under the job's own game and group
        subject = names.results_subject(job.game, job_group(job))
        filed = await bus.js.get_msg(names.RESULTS_STREAM, subject=subject)
        assert decode(filed.data or b"", EvalResult).job_id == job.job_id


async def test_unusable_players_are_retried_with_the_reason_reported(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    settings = JobSettings(ack_wait_s=2.0, max_deliver=2)
    await ensure_consumer(bus, "eval", settings)
    missing = PlayerSpec("gen9", sha256="ab" * 32, sims=8)
    bad_agent = PlayerSpec("mcts:x", agent="mcts:x")
    await submit(
        bus,
        "eval",
        EvalJob(
            job_id="ev-3", game="tictactoe", kind="match", a=missing, b=RANDOM, games=4, term=1
        ),
    )
    await submit(
        bus,
        "eval",
        EvalJob(
            job_id="ev-5", game="tictactoe", kind="match", a=RANDOM, b=bad_agent, games=4, term=1
        ),
    )
    start_evaluator(processes, nats_server.url, tmp_path, settings)

    def second_failure(job_id: str) -> Callable[[], Awaitable[str]]:
        async def reason() -> str:
            text = await last_failure(bus, job_id)
            return text if "delivery 2" in text else ""

        return reason

    reason = await eventually(second_failure("ev-3"), 15, what="ev-3's second failure report")
    assert "ab" * 32 in reason and "player a (gen9)" in reason
    reason = await eventually(second_failure("ev-5"), 15, what="ev-5's second failure report")
    assert "'mcts:x'" in reason and "player b" in reason
    assert await results(bus) == {}


def test_a_player_is_an_agent_or_a_searched_model() -> None:
    check_spec(RANDOM)
    check_spec(PlayerSpec("bootstrap", sims=4))
    with pytest.raises(BadPlayer, match="both agent and sha256"):
        check_spec(PlayerSpec("x", sha256="ab" * 32, agent="random", sims=4))
    with pytest.raises(BadPlayer, match="sims"):
        check_spec(PlayerSpec("gen1", sha256="ab" * 32))


@pytest.mark.parametrize("field", ["threads", "concurrent_games", "opening_plies", "keepalive_s"])
def test_a_bad_config_names_the_field(field: str) -> None:
    config = {"node_id": "e1", "cache_dir": "/tmp/e1", field: -1}
    with pytest.raises(BadMessage, match=field):
        decode(json.dumps(config).encode(), EvaluatorConfig)


async def test_a_stopped_evaluator_hands_its_job_back(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    settings = JobSettings(ack_wait_s=60.0, max_deliver=3)
    await ensure_consumer(bus, "eval", settings)
    slow = PlayerSpec("mcts:2000", agent="mcts:2000")
    other = PlayerSpec("mcts:2000-b", agent="mcts:2000")
    await submit(
        bus,
        "eval",
        EvalJob(job_id="ev-4", game="connect4", kind="match", a=slow, b=other, games=200, term=1),
    )
    proc = start_evaluator(processes, nats_server.url, tmp_path, settings)

    await eventually(lambda: match_job_being_played(bus), 15, what="the job being played")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    redelivered = await Puller(bus, "eval", EvalJob).next(timeout_s=5.0)  # well inside ack wait
    assert redelivered is not None
    assert (redelivered.job.job_id, redelivered.delivered) == ("ev-4", 2)


async def test_a_worker_takes_matches_before_gauntlets_before_rating_games(bus: Bus) -> None:
    await ensure_consumer(bus, "eval", JobSettings())
    for job_id, kind in (("r1", "rating"), ("g1", "gauntlet"), ("r2", "rating"), ("m1", "match")):
        await submit(
            bus,
            "eval",
            EvalJob(
                job_id=job_id, game="tictactoe", kind=kind, a=RANDOM, b=ONESTEP, games=2, term=1
            ),
        )
    puller = Puller(bus, "eval", EvalJob, probe_s=0.2)
    order = []
    while (delivery := await puller.next(timeout_s=0.5)) is not None:
        order.append(delivery.job.job_id)
        await delivery.done()
    assert order == ["m1", "g1", "r1", "r2"]


async def test_a_match_waits_behind_at_most_one_job_of_a_rating_flood(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    settings = JobSettings(ack_wait_s=30.0, max_deliver=3)
    await ensure_consumer(bus, "eval", settings)
    slow = PlayerSpec("mcts:40", agent="mcts:40")
    for k in range(12):
        job = EvalJob(
            job_id=f"flood-{k}",
            game="tictactoe",
            kind="rating",
            a=ONESTEP,
            b=slow,
            games=10,
            term=1,
            seed=k + 1,
        )
        await submit(bus, "eval", job)
    start_evaluator(processes, nats_server.url, tmp_path, settings)

    async def rating_played() -> bool:
        return len(await results(bus)) >= 1

    await eventually(rating_played, 30, what="a rating job played")
    matches = [
        EvalJob(
            job_id=f"m-{k}",
            game="tictactoe",
            kind="match",
            a=RANDOM,
            b=ONESTEP,
            games=6,
            term=1,
            seed=k + 1,
            group="m1",
        )
        for k in range(3)
    ]
    for job in matches:
        await submit(bus, "eval", job)

    async def matches_played() -> bool:
        played = await results(bus)
        return all(job.job_id in played for job in matches)

    await eventually(matches_played, 60, what="every match job played")
    stored = await results(bus)
    ratings = [r for r in stored.values() if r.kind == "rating"]
    assert len(ratings) < 12, "the flood was not all played before the matches"
    for job in matches:
        m = stored[job.job_id]
        started = m.finished_at - m.elapsed_s
        submitted = started - m.waited_s
        assert m.elapsed_s > 0 and m.waited_s >= 0 and m.cpu_s > 0
        ahead = [
            r
            for r in ratings
            if r.finished_at > submitted and r.finished_at - r.elapsed_s < started
        ]
        assert len(ahead) <= 1, f"{job.job_id} waited behind {[r.job_id for r in ahead]}"


async def test_match_jobs_of_a_decided_match_are_dropped_unplayed(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    settings = JobSettings(ack_wait_s=10.0, max_deliver=3)
    await ensure_consumer(bus, "eval", settings)
    model = PlayerSpec("gen1", sha256=await store_tiny_model(bus, tmp_path), sims=4)
    decided = ModelEvent(
        kind="promoted", game="tictactoe", generation=1, sha256=model.sha256, at=0.0
    )
    key = names.decided_key("tictactoe", model.sha256)
    await bus.write(names.REGISTRY_BUCKET, key, encode(decided))
    stale = EvalJob(
        job_id="m-stale",
        game="tictactoe",
        kind="match",
        a=model,
        b=RANDOM,
        games=6,
        term=1,
        group="m1",
    )
    live = EvalJob(
        job_id="g-live",
        game="tictactoe",
        kind="gauntlet",
        a=model,
        b=RANDOM,
        games=4,
        term=1,
        group="g1-0",
    )
    for job in (stale, live):
        await submit(bus, "eval", job)
    start_evaluator(processes, nats_server.url, tmp_path, settings)
    await eventually(lambda: queue_empty(bus), 20, what="both jobs acknowledged")
    assert set(await results(bus)) == {"g-live"}


async def test_a_match_job_being_played_is_dropped_once_its_match_is_decided(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    settings = JobSettings(ack_wait_s=60.0, max_deliver=3)
    await ensure_consumer(bus, "eval", settings)
    model = PlayerSpec("gen1", sha256=await store_tiny_model(bus, tmp_path), sims=2000)
    long_job = EvalJob(
        job_id="m-long",
        game="tictactoe",
        kind="match",
        a=model,
        b=RANDOM,
        games=400,
        term=1,
        group="m1",
    )
    await submit(bus, "eval", long_job)
    start_evaluator(processes, nats_server.url, tmp_path, settings)

    await eventually(lambda: match_job_being_played(bus), 20, what="the match job being played")
    decided = ModelEvent(
        kind="rejected", game="tictactoe", generation=1, sha256=model.sha256, at=0.0
    )
    await bus.write(
        names.REGISTRY_BUCKET, names.decided_key("tictactoe", model.sha256), encode(decided)
    )
    await eventually(lambda: queue_empty(bus), 20, what="the job acknowledged unfinished")
    assert await results(bus) == {}
