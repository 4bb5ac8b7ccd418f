"""Training you can watch: progress while the gradient steps run, on the bus and in the console."""

from __future__ import annotations

import asyncio
import csv
import math
from pathlib import Path

import numpy as np
import pytest

from schemas import names
from schemas.codec import decode, encode
from schemas.game import decode_record, encode_record
from schemas.jobs import ModelMeta, TrainJob, TrainProgress
from services.trainer import ProgressMeter
from shared.bus.client import BusConfig
from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.learn.games import get_game
from shared.learn.inference import uniform_evaluator
from shared.learn.netconfig import NetConfig, TrainSettings
from shared.learn.replay import ReplayWindow, positions_of
from shared.learn.selfplay import SelfPlayConfig, self_play
from shared.learn.training import StepsDone, new_net, train
from shared.loop.progress import last_train_progress, train_history
from shared.node.console import SCALARS_HEADER, Console
from shared.work.jobs import JobSettings, ensure_consumer, submit
from tests.conftest import Processes, eventually
from tests.test_trainer_service import start_tiny_trainer

GAME = get_game("tictactoe")
JOB = TrainJob(
    job_id="tictactoe-t3", game="tictactoe", generation=3, parent_sha256="", steps=10, term=1
)


def played(games: int) -> list[bytes]:
    config = SelfPlayConfig(concurrent_games=games, num_simulations=8)
    records = self_play(GAME, uniform_evaluator, np.random.default_rng(0), config, num_games=games)
    return [encode_record(record) for record in records]


def test_train_calls_back_every_n_steps_with_the_steps_since_the_last_call() -> None:
    window = ReplayWindow(100, 8)
    for seq, data in enumerate(played(10), 1):
        window.add(positions_of(GAME, decode_record(data), seq))
    net = new_net(GAME, NetConfig(blocks=1, channels=8, value_hidden=8))
    calls: list[StepsDone] = []
    settings = TrainSettings(batch_size=8)
    rng = np.random.default_rng(0)
    report = train(net, GAME, window, 7, settings, rng, on_progress=calls.append, progress_every=3)

    assert [c.step for c in calls] == [3, 6, 7] and [c.positions for c in calls] == [24, 24, 8]
    assert report.steps == 7 and report.positions == 56
    weighted = sum(c.policy_loss * n for c, n in zip(calls, (3, 3, 1), strict=True)) / 7
    assert weighted == pytest.approx(report.policy_loss)
    assert all(math.isfinite(c.value_loss) for c in calls)


def test_the_meter_reports_by_time_with_window_means_and_ends_done() -> None:
    now = [0.0]
    emitted: list[TrainProgress] = []
    meter = ProgressMeter(JOB, 2.0, emitted.append, clock=lambda: now[0])
    meter(StepsDone(step=1, positions=100, policy_loss=1.0, value_loss=0.5))
    now[0] = 2.0
    meter(
        StepsDone(step=3, positions=200, policy_loss=4.0, value_loss=0.2)
    )  # two steps with these means
    [first] = emitted
    assert (first.step, first.steps, first.done) == (3, 10, False)
    assert first.policy_loss == pytest.approx(3.0) and first.value_loss == pytest.approx(0.3)
    assert first.samples_per_s == pytest.approx(150.0) and first.job_id == JOB.job_id

    now[0] = 3.0
    meter(
        StepsDone(step=4, positions=100, policy_loss=math.nan, value_loss=0.1)
    )  # a non-finite loss is sent as None
    final = meter.final()
    assert final.done and final.step == 4 and final.policy_loss is None
    assert final.value_loss == pytest.approx(0.1) and final.samples_per_s == pytest.approx(100.0)
    assert decode(encode(final), TrainProgress) == final
    again = meter.final()  # no step since: the last report again, done
    assert again.done and (again.step, again.value_loss) == (4, final.value_loss)


def test_a_training_without_steps_ends_with_one_done_report() -> None:
    meter = ProgressMeter(JOB, 2.0, lambda report: None)
    final = meter.final()
    assert final.done and final.step == 0 and final.policy_loss is None
    assert decode(encode(final), TrainProgress) == final


async def test_a_trainer_publishes_progress_while_it_trains_then_a_done_report(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    for i, data in enumerate(played(10)):
        await bus.publish_durable(names.games_subject("tictactoe"), data, msg_id=f"g{i}")
    await ensure_consumer(bus, "train", JobSettings(ack_wait_s=30))
    assert await last_train_progress(bus, "tictactoe") is None
    # progress_every_s 0: a report after every step
    start_tiny_trainer(processes, nats_server.url, tmp_path, progress_every_s=0.0)
    await submit(
        bus,
        "train",
        TrainJob(
            job_id="tictactoe-t1",
            game="tictactoe",
            generation=1,
            parent_sha256="",
            steps=12,
            term=1,
        ),
    )

    async def trained() -> ModelMeta | None:
        entry = await bus.last(names.REGISTRY_BUCKET, names.trained_key("tictactoe-t1"))
        return decode(entry.value, ModelMeta) if entry.value else None

    meta = await eventually(trained, 60, what="a trained model")

    async def finished() -> TrainProgress | None:
        last = await last_train_progress(bus, "tictactoe")
        return last if last is not None and last.done else None

    final = await eventually(finished, 10, what="the done report")
    history = await train_history(bus, "tictactoe")
    *during, last = history
    assert last == final
    assert during and not any(r.done for r in during) and final.done
    assert [r.step for r in during] == list(range(1, 13)) and final.step == meta.steps == 12
    assert all(r.at <= meta.created_at and r.job_id == "tictactoe-t1" for r in history)
    assert all(r.policy_loss is not None and r.samples_per_s > 0 for r in during)


async def test_the_console_logs_every_report_to_csv_and_prints_training_lines(
    nats_server: NatsServer, bus: Bus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    console = Console(BusConfig([nats_server.url], "console"), tmp_path, "tictactoe", None, 3600)
    stop = asyncio.Event()
    task = asyncio.create_task(console.run(stop, training=True))
    subject = names.train_progress_subject("tictactoe")
    during = TrainProgress(
        game="tictactoe",
        job_id="tictactoe-t4",
        generation=4,
        step=300,
        steps=600,
        policy_loss=1.2344,
        value_loss=0.4567,
        samples_per_s=812.3,
        at=1e9,
    )
    final = TrainProgress(
        game="tictactoe",
        job_id="tictactoe-t4",
        generation=4,
        step=600,
        steps=600,
        policy_loss=None,
        value_loss=0.25,
        samples_per_s=790.0,
        at=1e9 + 5,
        done=True,
    )
    try:

        async def logged() -> bool:  # published until the console has subscribed
            await bus.publish(subject, encode(during))
            return console.scalars_path.exists()

        await eventually(logged, 30, every=0.2, what="the first row")
        await bus.publish(subject, encode(final))
        rows = await eventually(lambda: _done_rows(console.scalars_path), 30, what="a done row")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert rows[0] == list(SCALARS_HEADER) and len(rows) >= 3
    assert rows[1] == ["1000000000.000", "4", "300", "600", "1.2344", "0.4567", "812.3"]
    assert rows[-1] == ["1000000005.000", "4", "600", "600", "", "0.25", "790.0"]
    out = capsys.readouterr().out
    assert "tictactoe training gen 4: step 300/600, loss 1.234+0.457, 812 samples/s" in out
    assert "tictactoe training gen 4: step 600/600, done, loss -+0.250, 790 samples/s" in out


def _done_rows(path: Path) -> list[list[str]] | None:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows if rows[-1][2] == "600" else None
