"""trainer service: keeps a replay window per game from the games stream and runs training jobs.

On start it reads only the tail of the games stream that fits the windows, so a restart does not
re-read everything. Records are untrusted: each is checked against its game's rules
(`shared.learn.recordcheck`, in a worker thread) before use, and one that fails, or raises
anything at all, is dead-lettered with the field at fault; a game id seen twice is kept once.

A training job warm-starts from its parent checkpoint, writes the new checkpoint to the object
store and its metadata to KV `registry`, then announces a candidate. A step with a non-finite
loss or gradients is skipped (and counted); a job with no finite step fails, and a net with a
non-finite weight is never written. While it trains it reports its progress on
`events.train.progress.<game>` every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.game import GameRecord, decode_record
from schemas.jobs import DeadLetter, ModelEvent, ModelMeta, TrainJob, TrainProgress
from shared.bus.errors import BusError
from shared.bus.message import Message
from shared.bus.ports import Bus, Delivery, WorkQueue
from shared.learn.device import CPU
from shared.learn.games import UnknownGame, game_names, get_game
from shared.learn.games.base import num_players
from shared.learn.net import (
    CheckpointError,
    NetConfig,
    PolicyValueNet,
    checkpoint_bytes,
    load_checkpoint,
)
from shared.learn.recordcheck import resign_flag
from shared.learn.replay import GamePositions, RejectedRecord, ReplayWindow, positions_of
from shared.learn.resign import ResignSettings
from shared.learn.training import (
    NonFiniteTraining,
    StepsDone,
    TrainReport,
    TrainSettings,
    new_net,
    train,
)
from shared.runtime.counters import Counters
from shared.runtime.service import main as service_main
from shared.runtime.service import wait_or_stop
from shared.work.compute import start_compute, tier_of
from shared.work.jobs import JobSettings, Puller, await_consumer, job_seed
from shared.work.models import ModelStore

log = logging.getLogger("conclave.trainer")

INGEST_BATCH = 256
MAX_THRESHOLDS = 4096  # models whose resign threshold is remembered
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INDEX = re.compile(r"\[\d+\]")
PROGRESS_DRAIN_S = 10.0  # the most a finished training waits for its progress reports to go out


class TrainerGame(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A configuration's own training settings (`conclave up --config`)."""

    window_games: int
    max_reuse: int
    net: NetConfig
    train: TrainSettings


class TrainerConfig(msgspec.Struct, frozen=True):
    node_id: str
    cache_dir: str
    threads: int = 1
    device: str = "auto"  # shared.learn.device: auto = CUDA, then MPS, then CPU
    precision: str = "auto"
    tier: str = "auto"  # the job tier pulled first (schemas.names.TIERS); auto: by the device
    games: tuple[str, ...] = ()  # the games this worker plays; () = every one installed
    window_games: int = 20000
    max_reuse: int = 8
    root_value_weight: float = 0.5  # value target = mix of outcome and search root value
    net: NetConfig = NetConfig()
    train: TrainSettings = TrainSettings()
    keepalive_s: float = 10.0
    jobs: JobSettings = JobSettings(ack_wait_s=60.0)
    progress_every_s: float = 2.0  # how often a training reports its progress
    resign: ResignSettings = ResignSettings()
    per_game: dict[str, TrainerGame] = {}  # a configuration's own; the fields above otherwise

    def for_game(self, name: str) -> TrainerGame:
        own = self.per_game.get(name)
        return own or TrainerGame(self.window_games, self.max_reuse, self.net, self.train)

    def widest_window(self) -> int:
        return max([self.window_games, *(g.window_games for g in self.per_game.values())])


class Trainer:
    def __init__(self, bus: Bus, cfg: TrainerConfig, counters: Counters | None = None) -> None:
        self.bus, self.cfg = bus, cfg
        self.counters = Counters() if counters is None else counters
        self.windows: dict[str, ReplayWindow] = {}
        self.rejected: Counter[str] = Counter()
        self.thresholds: Thresholds = {}
        self.pending: list[tuple[int, bytes]] = []
        self.arrived = asyncio.Event()
        self.ingest_pool = ThreadPoolExecutor(1, thread_name_prefix="ingest")
        self.train_pool = ThreadPoolExecutor(1, thread_name_prefix="train")
        self.models = ModelStore(bus, Path(cfg.cache_dir))
        self.last_seq = 0
        self.compute = CPU  # until `serve` has chosen the device

    def window(self, game: str) -> ReplayWindow:
        if game not in self.windows:
            own = self.cfg.for_game(game)
            self.windows[game] = ReplayWindow(own.window_games, own.max_reuse)
        return self.windows[game]

    # -- feeding the windows --------------------------------------------------------------------

    async def follow_games(self) -> None:
        """Subscribe to the games stream from where the windows' tail begins."""
        first, last = await self.bus.stream_seqs(names.GAMES_STREAM)
        start = max(first, last - 2 * self.cfg.widest_window() + 1, 1)
        await self.bus.follow(names.GAMES_STREAM, names.games_subject("*"), start, self._on_game)

    async def _on_game(self, msg: Message) -> None:
        self.pending.append((msg.seq, msg.data))
        self.arrived.set()

    async def ingest(self, stop: asyncio.Event) -> None:
        """Check arrived records off the loop, in batches, and add them to the windows."""
        while not stop.is_set():
            await self.arrived.wait()
            self.arrived.clear()
            while self.pending:
                batch, self.pending = self.pending[:INGEST_BATCH], self.pending[INGEST_BATCH:]
                await self.take(batch)
                self.last_seq = max(self.last_seq, batch[-1][0])

    async def take(self, batch: list[tuple[int, bytes]]) -> None:
        """Decode and check one batch; keep the good records, dead-letter every other one.

        No record can stop the intake: any exception a record raises refuses that record.
        """
        loop = asyncio.get_running_loop()
        decoded, unreadable = await loop.run_in_executor(self.ingest_pool, decode_all, batch)
        thresholds = await self.resign_thresholds([d.record for d in decoded])
        kept, refused = await loop.run_in_executor(
            self.ingest_pool, check_all, decoded, thresholds, self.cfg.root_value_weight
        )
        for game, positions in kept:
            self.window(game).add(positions)
        for rejection in [*unreadable, *refused]:
            await self.quarantine(rejection)

    async def resign_thresholds(self, records: list[GameRecord]) -> Thresholds:
        """The resign threshold given to the model of each record with a resignation field set."""
        wanted = {(r.game, r.model_sha256) for r in records if resign_flag(r)}
        found: Thresholds = {}
        for key in wanted:
            if key not in self.thresholds:
                try:
                    self.thresholds[key] = await self.model_threshold(*key)
                except BusError as e:  # refused now, looked up again for the next record
                    log.warning("resign threshold of model %s not read: %s", key[1][:12], e)
            found[key] = self.thresholds.get(key)
        if len(self.thresholds) > MAX_THRESHOLDS:  # forged digests must not grow it for ever
            self.thresholds.clear()
        return found

    async def model_threshold(self, game: str, sha256: str) -> float | None:
        """The threshold the training that made the model calibrated (None: none, or no such
        model); self-play resigned at most at it (`shared.loop.effects.resign_value`)."""
        if not _SHA256.fullmatch(sha256) or not _is_token(game):
            return None
        key = names.model_key(game, sha256)
        entry = await self.bus.last(names.REGISTRY_BUCKET, key)
        if entry.value is None:
            return None
        try:
            return decode(entry.value, ModelMeta, subject=key).resign_threshold
        except BadMessage:
            return None

    async def quarantine(self, rejection: Rejection) -> None:
        """A record the trainer will not use goes to the dead-letter stream with the reason."""
        seq = rejection.seq
        self.rejected[rejection.kind] += 1
        self.counters.add("records_rejected")
        log.warning("rejected game record #%d: %s", seq, rejection.reason)
        letter = DeadLetter(
            kind=names.REJECTED_RECORDS,
            job_id="",
            stream_seq=seq,
            deliveries=0,
            reason=rejection.reason[:2000],
            job=rejection.data[:65536],
            at=time.time(),
        )
        subject = names.dlq_subject(names.REJECTED_RECORDS, rejection.game, names.REJECTED_GROUP)
        try:
            await self.bus.publish_durable(subject, encode(letter), msg_id=f"dlq-record-{seq}")
        except BusError as e:
            log.warning("rejected record #%d not dead-lettered: %s", seq, e)

    # -- training jobs --------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        device, precision = self.cfg.device, self.cfg.precision
        compute = await start_compute(
            self.train_pool, device, precision, self.counters, stop, self.cfg.tier
        )
        if compute is None:
            return
        self.compute = compute
        puller: WorkQueue[TrainJob] = Puller(
            self.bus,
            "train",
            TrainJob,
            counters=self.counters,
            tier=tier_of(compute, self.cfg.tier),
            games=self.cfg.games or None,
            node=self.cfg.node_id,
        )
        while not stop.is_set():
            try:
                delivery = await puller.next(timeout_s=2.0)
            except BusError as e:
                log.warning("cannot pull train jobs: %s", e)
                await wait_or_stop(stop, 1.0)
                continue
            if delivery is not None:
                await self.work(delivery)

    async def work(self, delivery: Delivery[TrainJob]) -> None:
        job = delivery.job
        async with delivery.kept_alive(self.cfg.keepalive_s):
            try:
                meta = await self.run_job(job)
            except (CheckpointError, BusError, UnknownGame, ValueError) as e:
                log.error("train job %s failed: %r", job.job_id, e, extra={"job": job.job_id})
                await delivery.retry(self.bus, self.cfg.node_id, repr(e), delay_s=5.0)
                return
        await delivery.done()
        log.info("generation %d trained: %s", meta.generation, meta.sha256[:12])

    async def run_job(self, job: TrainJob) -> ModelMeta:
        game = get_game(job.game)
        parent = await self.models.read(job.parent_sha256) if job.parent_sha256 else None
        loop = asyncio.get_running_loop()
        window = self.window(job.game)
        net, report = await self.train_reporting(job, game, parent, window)
        self.counters.add("train_steps_skipped", report.skipped)
        if report.skipped:
            log.warning(
                "train job %s skipped %d steps (first: %s)",
                job.job_id,
                report.skipped,
                report.first_fault,
                extra={"job": job.job_id},
            )
        if report.steps == 0 and report.skipped:
            raise NonFiniteTraining(
                f"all {report.skipped} steps had a non-finite loss or gradients "
                f"(first: {report.first_fault}); no checkpoint written"
            )
        # Generation 0 may start with no games: it is the untrained initial network.
        if report.steps == 0 and job.parent_sha256:
            raise ValueError(f"no positions to train on for {job.game} (window empty)")
        self.counters.add("train_steps", report.steps)
        self.counters.add("train_positions", report.positions)
        data = await loop.run_in_executor(
            self.train_pool, checkpoint_bytes, net, job.game, job.generation
        )
        digest = await self.models.put(data)
        first, last = window.seq_range()
        resign = window.resign_report(self.cfg.resign)
        meta = ModelMeta(
            sha256=digest,
            game=job.game,
            generation=job.generation,
            parent_sha256=job.parent_sha256,
            size_bytes=len(data),
            window_first_seq=first,
            window_last_seq=last,
            positions=report.positions,
            steps=report.steps,
            policy_loss=_finite(report.policy_loss),
            value_loss=_finite(report.value_loss),
            created_at=time.time(),
            train_job=job.job_id,
            window_games=len(window.games),
            duplicates_skipped=window.duplicates,
            rejected_records=sum(self.rejected.values()),
            resign_threshold=resign.threshold,
            resign_samples=resign.samples,
            resign_checked=resign.checked,
            false_resigns=resign.false,
        )
        await self.bus.write(names.REGISTRY_BUCKET, names.model_key(job.game, digest), encode(meta))
        self.thresholds[(job.game, digest)] = meta.resign_threshold
        await self.bus.write(names.REGISTRY_BUCKET, names.trained_key(job.job_id), encode(meta))
        event = ModelEvent(
            kind="candidate",
            game=job.game,
            generation=job.generation,
            sha256=digest,
            at=time.time(),
        )
        await self.bus.publish_durable(names.model_event_subject("candidate"), encode(event))
        return meta

    async def train_reporting(
        self, job: TrainJob, game: Any, parent: bytes | None, window: ReplayWindow
    ) -> tuple[PolicyValueNet, TrainReport]:
        """Train in the worker thread while a task publishes its progress, then the final report."""
        queue: asyncio.Queue[TrainProgress | None] = asyncio.Queue()
        every_s, clock = self.cfg.progress_every_s, self.bus.clock.monotonic
        meter = ProgressMeter(job, every_s, _emitter(queue), clock=clock)
        publisher = asyncio.create_task(self.publish_progress(queue), name="train-progress")
        loop = asyncio.get_running_loop()
        try:
            net, report = await loop.run_in_executor(
                self.train_pool,
                self._train,
                game,
                parent,
                window,
                job.steps,
                meter,
                job_seed(job.job_id),
            )
            queue.put_nowait(meter.final())
        finally:
            queue.put_nowait(None)
            await _drain(publisher)
        return net, report

    async def publish_progress(self, queue: asyncio.Queue[TrainProgress | None]) -> None:
        """Publish queued reports in order until None; a failed publish is logged and skipped.

        A core publish (EVENTS stores it all the same): telemetry never waits for a stream ack.
        """
        while (report := await queue.get()) is not None:
            subject = names.train_progress_subject(report.game)
            try:
                await self.bus.publish(subject, encode(report))
            except BusError as e:
                log.warning("training progress not published: %s", e)

    def _train(
        self,
        game: Any,
        parent: bytes | None,
        window: ReplayWindow,
        steps: int,
        meter: ProgressMeter,
        seed: int,
    ) -> tuple[PolicyValueNet, TrainReport]:
        import torch

        torch.set_num_threads(self.cfg.threads)
        torch.manual_seed(seed)  # a first net's initial weights: the job replays the same way
        players = num_players(game)
        own = self.cfg.for_game(game.name)
        net = load_checkpoint(parent, game.name, players).net if parent else new_net(game, own.net)
        rng = np.random.default_rng(seed)
        report = train(
            net, game, window, steps, own.train, rng, on_progress=meter, compute=self.compute
        )
        return net, report


class ProgressMeter:
    """Folds `train`'s step reports (in the training thread) into a TrainProgress every
    `every_s` seconds, handed to `emit`; `final` is the last report, with done=True."""

    def __init__(
        self,
        job: TrainJob,
        every_s: float,
        emit: Callable[[TrainProgress], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job, self.every_s, self.emit, self.clock = job, every_s, emit, clock
        self.since = clock()
        self.step = 0
        self.learning_rate = 0.0
        self.last: TrainProgress | None = None
        self._clear()

    def __call__(self, done: StepsDone) -> None:
        steps = done.step - self.step
        self.step = done.step
        self.steps += steps
        self.positions += done.positions
        self.policy_sum += done.policy_loss * steps
        self.value_sum += done.value_loss * steps
        self.learning_rate = done.learning_rate
        if self.clock() - self.since >= self.every_s:
            self.emit(self._report(done=False))

    def final(self) -> TrainProgress:
        if self.steps == 0 and self.last is not None:
            return msgspec.structs.replace(self.last, at=time.time(), done=True)
        return self._report(done=True)

    def _report(self, done: bool) -> TrainProgress:
        now = self.clock()
        elapsed = now - self.since
        self.last = TrainProgress(
            game=self.job.game,
            job_id=self.job.job_id,
            generation=self.job.generation,
            step=self.step,
            steps=self.job.steps,
            policy_loss=_finite(self.policy_sum / self.steps) if self.steps else None,
            value_loss=_finite(self.value_sum / self.steps) if self.steps else None,
            samples_per_s=self.positions / elapsed if elapsed > 0 else 0.0,
            at=time.time(),
            done=done,
            learning_rate=self.learning_rate,
        )
        self.since = now
        self._clear()
        return self.last

    def _clear(self) -> None:
        self.steps, self.positions = 0, 0
        self.policy_sum, self.value_sum = 0.0, 0.0


def _emitter(queue: asyncio.Queue[TrainProgress | None]) -> Callable[[TrainProgress], None]:
    """Hand reports from another thread to `queue` on the running loop."""
    loop = asyncio.get_running_loop()

    def emit(report: TrainProgress) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to publish it
            loop.call_soon_threadsafe(queue.put_nowait, report)

    return emit


async def _drain(publisher: asyncio.Task[None]) -> None:
    """Wait, within PROGRESS_DRAIN_S, for the progress publisher to send what it was given."""
    try:
        await asyncio.wait_for(publisher, PROGRESS_DRAIN_S)
    except TimeoutError:
        log.warning("training progress reports dropped: not published in %.0f s", PROGRESS_DRAIN_S)


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """A record refused: why, the DLQ subject's game token, and its kind for the counts."""

    seq: int
    data: bytes
    reason: str
    game: str
    kind: str


class Decoded(NamedTuple):
    seq: int
    data: bytes
    record: GameRecord


Thresholds = dict[tuple[str, str], float | None]  # (game, model sha256) -> resign threshold


def decode_all(batch: list[tuple[int, bytes]]) -> tuple[list[Decoded], list[Rejection]]:
    """Decode each record; one that does not decode is refused with the field at fault."""
    decoded, refused = [], []
    for seq, data in batch:
        try:
            decoded.append(Decoded(seq, data, decode_record(data)))
        except BadMessage as e:
            reason = f"field {e.field}: {e.reason}"
            refused.append(
                Rejection(
                    seq=seq,
                    data=data,
                    reason=reason,
                    game="unknown",
                    kind=f"unreadable at {e.field}",
                )
            )
        except Exception as e:  # any record may be hostile; none may stop the intake
            refused.append(_rejection(seq, data, "unknown", e))
    return decoded, refused


def check_all(
    decoded: list[Decoded], thresholds: Thresholds, root_value_weight: float
) -> tuple[list[tuple[str, GamePositions]], list[Rejection]]:
    """Check each record under its game's rules (`shared.learn.recordcheck`); make its positions."""
    kept, refused = [], []
    known = set(game_names())
    for seq, data, record in decoded:
        game = record.game if record.game in known else "unknown"  # the DLQ subject's token
        threshold = thresholds.get((record.game, record.model_sha256))
        try:
            rules = get_game(record.game)
            kept.append((game, positions_of(rules, record, seq, root_value_weight, threshold)))
        except Exception as e:  # any record may be hostile; none may stop the intake
            refused.append(_rejection(seq, data, game, e))
    return kept, refused


def _rejection(seq: int, data: bytes, game: str, error: Exception) -> Rejection:
    kind = type(error).__name__
    if isinstance(error, RejectedRecord):
        kind = _INDEX.sub("[]", error.field)  # one count per field, not per ply
    return Rejection(
        seq=seq, data=data, reason=f"{type(error).__name__}: {error}", game=game, kind=kind
    )


def _is_token(value: str) -> bool:
    try:
        names.check_token(value, "game")
    except names.BadName:
        return False
    return True


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


async def run(
    bus: Bus, cfg: TrainerConfig, stop: asyncio.Event, counters: Counters | None = None
) -> None:
    await bus.provision()
    await await_consumer(bus, "train", stop)
    trainer = Trainer(bus, cfg, counters)
    await trainer.follow_games()
    try:
        async with asyncio.TaskGroup() as tg:
            ingest = tg.create_task(trainer.ingest(stop), name="ingest")
            await trainer.serve(stop)
            ingest.cancel()
    finally:
        trainer.train_pool.shutdown(wait=True, cancel_futures=True)
        trainer.ingest_pool.shutdown(wait=True, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    counters = Counters()  # the process's: its pulses carry what the trainer counts
    counted = partial(run, counters=counters)
    return service_main("trainer", TrainerConfig, counted, argv, counters=counters)


if __name__ == "__main__":
    raise SystemExit(main())
