"""The syncer against a real S3-compatible server (moto) and a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from schemas import names
from schemas.game import decode_record, encode_record
from shared import archive
from shared.archive import S3Config, S3Store
from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.cli.status import gather
from shared.learn.games import get_game
from shared.learn.inference import uniform_evaluator
from shared.learn.selfplay import SelfPlayConfig, self_play
from tests.conftest import Processes, eventually, process_config
from tests.s3server import FAKE_AWS_ENV, MotoServer

pytestmark = pytest.mark.timeout(400)

GAME = get_game("tictactoe")


def s3_config(moto: MotoServer) -> S3Config:
    return S3Config(
        bucket="archive",
        endpoint_url=moto.url,
        connect_timeout_s=1.0,
        read_timeout_s=2.0,
        max_attempts=1,
    )


def start_syncer(
    processes: Processes, url: str, moto: MotoServer, tmp: Path, node: str
) -> subprocess.Popen[bytes]:
    cfg = {
        "node_id": node,
        "cache_dir": str(tmp / node),
        "shard_games": 10,
        "flush_s": 1.0,
        "s3": json.loads(json.dumps(_as_dict(s3_config(moto)))),
    }
    proc = process_config(url, node, "syncer")
    argv = [
        sys.executable,
        "-m",
        "services.syncer",
        "--process",
        json.dumps(proc),
        "--config",
        json.dumps(cfg),
    ]
    env = {**os.environ, **FAKE_AWS_ENV}
    return processes.spawn(argv, processes.log_dir / f"{node}.log", env=env)


def _as_dict(cfg: S3Config) -> dict[str, object]:
    import msgspec

    return msgspec.to_builtins(cfg)  # type: ignore[no-any-return]


async def publish_games(bus: Bus, count: int, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    config = SelfPlayConfig(concurrent_games=count, num_simulations=4)
    published = {}
    for record in self_play(GAME, uniform_evaluator, rng, config, num_games=count):
        data = encode_record(record)
        await bus.publish_durable(names.games_subject("tictactoe"), data, msg_id=record.game_id)
        published[record.game_id] = data
    return published


def archived(store: S3Store) -> list[tuple[str, bytes]]:
    out = []
    for manifest in archive.list_manifests(store, "tictactoe"):
        for data in archive.read_shard(store, "tictactoe", manifest):
            out.append((decode_record(data).game_id, data))
    return out


async def test_archive_survives_an_outage_and_a_killed_syncer(
    nats_server: NatsServer,
    bus: Bus,
    processes: Processes,
    fresh_moto: MotoServer,
    aws_env: None,
    tmp_path: Path,
) -> None:
    store = S3Store(s3_config(fresh_moto))
    store.create_bucket()
    first = start_syncer(processes, nats_server.url, fresh_moto, tmp_path, "s1")
    games = await publish_games(bus, 25, seed=1)
    await eventually(lambda: len(archived(store)) == 25, 60, what="first games archived")

    assert fresh_moto.proc is not None
    os.kill(fresh_moto.proc.pid, signal.SIGSTOP)  # S3 stops answering for 30 s
    outage_started = time.monotonic()
    try:
        games |= await publish_games(bus, 20, seed=2)
        await asyncio.sleep(15)  # halfway through the outage
        first.send_signal(signal.SIGKILL)  # and the syncer dies meanwhile
        first.wait()
        games |= await publish_games(bus, 10, seed=4)
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))  # the rest of it
    finally:
        os.kill(fresh_moto.proc.pid, signal.SIGCONT)
    games |= await publish_games(bus, 15, seed=3)
    start_syncer(processes, nats_server.url, fresh_moto, tmp_path, "s2")

    await eventually(lambda: len(archived(store)) >= len(games), 120, what="archive caught up")
    stored = archived(store)
    ids = [game_id for game_id, _ in stored]
    assert len(ids) == len(set(ids)), "a game was archived twice"
    assert dict(stored) == games, "archived bytes differ from what was published"

    async def caught_up() -> bool:
        report = await gather(bus)
        return report.archive is not None and report.archive.games_not_archived == 0

    await eventually(caught_up, 30, what="status to show no archive lag")
