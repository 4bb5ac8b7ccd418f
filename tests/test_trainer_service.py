"""The trainer as a real process: every game once, bad records refused, a usable checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from schemas import names
from schemas.codec import decode
from schemas.game import encode_record
from schemas.jobs import BestPointer, DeadLetter, ModelMeta, TrainJob
from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.learn.games import get_game
from shared.learn.inference import uniform_evaluator
from shared.learn.selfplay import SelfPlayConfig, self_play
from shared.lease.fencing import fenced_put
from shared.work.jobs import JobSettings, ensure_consumer, submit
from tests.conftest import Processes, eventually, process_config

GAME = get_game("tictactoe")


async def trained(bus: Bus, job_id: str) -> ModelMeta | None:
    entry = await bus.last(names.REGISTRY_BUCKET, names.trained_key(job_id))
    return decode(entry.value, ModelMeta) if entry.value else None


def start_tiny_trainer(
    processes: Processes, url: str, tmp_path: Path, **extra: Any
) -> subprocess.Popen[bytes]:
    """A trainer service process with a tiny net and window, as node t1."""
    cfg = {
        "node_id": "t1",
        "cache_dir": str(tmp_path / "t1"),
        "window_games": 100,
        "net": {"blocks": 1, "channels": 8, "value_hidden": 8},
        "train": {"batch_size": 16},
        **extra,
    }
    return processes.service("services.trainer", process_config(url, "t1", "trainer"), cfg)


def conclave(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "shared.cli.main", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)


async def test_trainer_keeps_each_game_once_refuses_bad_records_and_writes_a_checkpoint(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    config = SelfPlayConfig(concurrent_games=10, num_simulations=8)
    records = list(self_play(GAME, uniform_evaluator, rng, config, num_games=10))
    subject = names.games_subject("tictactoe")
    for record in records:
        await bus.publish_durable(subject, encode_record(record), msg_id=record.game_id)
    for record in records[:3]:  # the same games again, past any dedupe window
        await bus.publish_durable(subject, encode_record(record), msg_id=f"again-{record.game_id}")
    illegal = msgspec.structs.replace(
        records[0], game_id="bad", moves=[0, 0, *records[0].moves[2:]]
    )
    await bus.publish_durable(subject, encode_record(illegal), msg_id="bad")

    await ensure_consumer(bus, "train", JobSettings(ack_wait_s=30))
    start_tiny_trainer(processes, nats_server.url, tmp_path)
    await submit(
        bus,
        "train",
        TrainJob(
            job_id="tictactoe-t1", game="tictactoe", generation=0, parent_sha256="", steps=5, term=1
        ),
    )
    meta = await eventually(lambda: trained(bus, "tictactoe-t1"), 60, what="a trained model")
    assert meta.window_games == 10 and meta.duplicates_skipped == 3
    assert meta.rejected_records == 1 and meta.steps == 5
    letters = await bus.read_all(names.DLQ_STREAM, "dlq.records.>")
    [letter] = [decode(m.data, DeadLetter) for m in letters]
    assert letter.reason.startswith("RejectedRecord") and letter.job == encode_record(illegal)

    pointer = BestPointer(
        game="tictactoe", generation=0, sha256=meta.sha256, term=1, promoted_at=0.0
    )
    await fenced_put(bus, names.REGISTRY_BUCKET, names.best_key("tictactoe"), pointer, BestPointer)
    exported = conclave(
        "models",
        "export",
        "--game",
        "tictactoe",
        "--out",
        str(tmp_path / "x"),
        "--nats",
        nats_server.url,
    )
    assert exported.returncode == 0, exported.stderr
    path = Path(exported.stdout.strip())
    moves = conclave(
        "bestmove",
        "--game",
        "tictactoe",
        "--checkpoint",
        str(path),
        "--sims",
        "8",
        stdin="5\n159\n",
    )
    answers = moves.stdout.split()
    assert moves.returncode == 0 and len(answers) == 2 and all(a in "12346789" for a in answers)
