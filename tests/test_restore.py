"""Archive and restore round trip through a real S3-compatible server into a fresh cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from schemas import names
from schemas.codec import decode, encode
from schemas.jobs import BestPointer, EvalResult, ModelEvent, PlayerSpec
from services.scheduler import STATE_KEY, LoopRecord
from shared import archive
from shared.archive import S3Store
from shared.bus.client import BusConfig, NatsBus
from shared.bus.ports import Bus
from shared.bus.server import NatsServer, ServerSpec
from shared.loop.policy import GameState, LoopState
from shared.work.models import ModelStore, sha256_hex
from tests.conftest import Processes, eventually
from tests.s3server import FAKE_AWS_ENV, MotoServer
from tests.test_syncer import archived, publish_games, s3_config, start_syncer


async def seed_cluster(bus: Bus, tmp: Path) -> tuple[bytes, bytes]:
    """A best model, a second model, a promotion and a loop state, as the loop would leave them."""
    models = ModelStore(bus, tmp / "seed")
    good, other = os.urandom(300_000), os.urandom(200_000)
    for data, generation in ((good, 3), (other, 4)):
        sha = await models.put(data)
        event = ModelEvent(
            kind="candidate", game="tictactoe", generation=generation, sha256=sha, at=time.time()
        )
        await bus.publish_durable(names.model_event_subject("candidate"), encode(event))
    best = BestPointer(
        game="tictactoe",
        generation=3,
        sha256=sha256_hex(good),
        term=7,
        promoted_at=time.time(),
        reason="sprt",
    )
    await bus.write(names.REGISTRY_BUCKET, names.best_key("tictactoe"), encode(best))
    promoted = ModelEvent(
        kind="promoted", game="tictactoe", generation=3, sha256=sha256_hex(good), at=time.time()
    )
    await bus.publish_durable(names.model_event_subject("promoted"), encode(promoted))
    state = LoopState({"tictactoe": GameState(generation=3, best=sha256_hex(good), trainings=3)})
    await bus.write(
        names.LOOP_BUCKET,
        STATE_KEY,
        encode(LoopRecord(term=7, state=state, updated_at=time.time())),
    )
    return good, other


async def test_restore_brings_back_models_pointer_history_and_games_and_refuses_corruption(
    nats_server: NatsServer,
    bus: Bus,
    processes: Processes,
    fresh_moto: MotoServer,
    aws_env: None,
    tmp_path: Path,
) -> None:
    store = S3Store(s3_config(fresh_moto))
    store.create_bucket()
    good, other = await seed_cluster(bus, tmp_path)
    games = await publish_games(bus, 12, seed=5)
    gen3 = PlayerSpec("gen3", sha256_hex(good), sims=8)
    result = EvalResult(
        job_id="tictactoe-g3-0",
        game="tictactoe",
        kind="gauntlet",
        a=gen3,
        b=PlayerSpec("random", agent="random"),
        wins_a=9,
        draws=1,
        wins_b=0,
        term=7,
        finished_at=time.time(),
        group="g3",
    )
    await bus.publish_durable(names.results_subject("tictactoe", "g3"), encode(result), "r-g3-0")
    start_syncer(processes, nats_server.url, fresh_moto, tmp_path, "s1")
    await eventually(lambda: len(archived(store)) == 12, 60, what="games archived")
    await eventually(
        lambda: (
            len(archive.list_models(store, "tictactoe")) == 2
            and store.head(archive.layout.registry_history_key("tictactoe")) is not None
            and bool(archive.archived_ranges(store, "tictactoe__results"))
        ),
        60,
        what="models and documents archived",
    )
    # A second syncer in a lease gap archived five of the games again, in a shard of its own.
    again = sorted(games.items())[:5]
    archive.write_shard(
        store,
        "tictactoe",
        [(1000 + i, data) for i, (_, data) in enumerate(again)],
        game_ids=[game_id for game_id, _ in again],
    )
    corrupt_key = archive.layout.model_key("tictactoe", sha256_hex(other))
    store.put_bytes(corrupt_key, b"flipped" + other[7:])

    fresh = NatsServer(ServerSpec("fresh", tmp_path / "fresh")).start()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "shared.cli.main",
                "restore",
                "--from",
                "s3://archive/conclave",
                "--s3-endpoint",
                fresh_moto.url,
                "--nats",
                fresh.url,
                "--cache-dir",
                str(tmp_path / "restore-cache"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **FAKE_AWS_ENV},
        )
        assert result.returncode == 1, result.stderr  # the corrupt model is reported
        assert "corrupt, not restored" in result.stdout and corrupt_key in result.stdout
        await check_restored(fresh.url, good, games, tmp_path)
    finally:
        fresh.stop()


async def check_restored(url: str, good: bytes, games: dict[str, bytes], tmp: Path) -> None:
    bus = await NatsBus.connect(BusConfig(servers=[url], name="check"))
    try:
        entry = await bus.last(names.REGISTRY_BUCKET, names.best_key("tictactoe"))
        best = decode(entry.value or b"", BestPointer)
        assert (best.generation, best.sha256, best.term) == (3, sha256_hex(good), 0)
        assert await ModelStore(bus, tmp / "check").read(best.sha256) == good
        record = decode((await bus.last(names.LOOP_BUCKET, STATE_KEY)).value or b"", LoopRecord)
        assert record.state.game("tictactoe").generation == 3 and record.term == 0
        msgs = await bus.read_all(names.GAMES_STREAM, names.games_subject("tictactoe"))
        assert sorted(m.data for m in msgs) == sorted(games.values())
        results = await bus.read_all(names.RESULTS_STREAM, names.results_subject("tictactoe", "g3"))
        assert [decode(m.data, EvalResult).wins_a for m in results] == [9]
        promoted = await bus.read_all(names.EVENTS_STREAM, names.model_event_subject("promoted"))
        assert [decode(m.data, ModelEvent).generation for m in promoted] == [3]
    finally:
        await bus.close()
