"""selfplay service: pulls self-play jobs, plays them with the batched engine, publishes the games.

A job is acknowledged only after JetStream has acknowledged every game it produced, so a worker
killed mid-job loses nothing acknowledged: the job is redelivered and plays fresh games (new ids).
Search and inference run in a worker thread; the event loop only moves messages.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from schemas import names
from schemas.game import GameRecord, encode_record, simulations
from schemas.jobs import SelfplayJob
from shared.bus.errors import BusError, Unavailable
from shared.bus.ports import Bus, Delivery, WorkQueue
from shared.learn.calibrate import Calibration, calibrate, sample_positions
from shared.learn.evaltypes import Evaluator
from shared.learn.games import get_game
from shared.learn.games.base import Game
from shared.learn.netconfig import CheckpointError, size_label
from shared.learn.selfplay import SelfPlayConfig, self_play
from shared.runtime.counters import Counters
from shared.runtime.memory import own_rss_bytes
from shared.runtime.service import main as service_main
from shared.runtime.service import set_when, wait_or_stop
from shared.work.compute import net_config_of, record_rate, start_compute, tier_of
from shared.work.jobs import JobSettings, Puller, await_consumer, job_seed
from shared.work.memory import (
    RssWatch,
    budget_bytes,
    default_budget_bytes,
    estimate_selfplay_bytes,
    fit_concurrency,
    net_bytes,
    node_memory_bytes,
    refusal_reason,
)
from shared.work.modelcache import Evaluators
from shared.work.models import ModelStore
from shared.work.prefetch import ADOPT_WINDOW_S, prefetch_promoted

log = logging.getLogger("conclave.selfplay")


class SelfplayGame(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A configuration's own self-play settings (`conclave up --config`)."""

    concurrent_games: int
    engine: SelfPlayConfig


class SelfplayWorkerConfig(msgspec.Struct, frozen=True):
    node_id: str
    cache_dir: str
    threads: int = 1
    concurrent_games: int = 32
    device: str = "auto"  # shared.learn.device: auto = CUDA, then MPS, then CPU
    precision: str = "auto"
    tier: str = "auto"  # the job tier pulled first (schemas.names.TIERS); auto: by the device
    games: tuple[str, ...] = ()  # the games this worker plays; () = every one installed
    adopt_window_s: float = ADOPT_WINDOW_S  # new bests are prefetched spread over this window
    keepalive_s: float = 10.0
    jobs: JobSettings = JobSettings()
    engine: SelfPlayConfig = SelfPlayConfig()
    nice: int = 0  # added to the process's niceness: self-play yields to training and matches
    # The memory guard (shared.work.memory): this worker's budget, None = its share of the node
    # (`node_workers` self-play processes share it).
    memory_budget_mb: float | None = None
    node_workers: int = 1
    refuse_delay_s: float = 5.0  # a job too big for this worker waits this long for another
    # Size the games played at once (the inference batch) by a short calibration of each net
    # size on this device (shared.learn.calibrate), `concurrent_games` at most.
    calibrate: bool = False
    per_game: dict[str, SelfplayGame] = {}  # a configuration's own; the fields above otherwise

    def for_game(self, name: str) -> SelfplayGame:
        return self.per_game.get(name) or SelfplayGame(self.concurrent_games, self.engine)


CALIBRATE_S = 0.2  # timed per batch size: a few seconds per net size, once per worker


class JobTooBig(ValueError):
    """A job whose estimated memory does not fit this worker's budget even one game at a time."""


class Worker:
    def __init__(
        self,
        bus: Bus,
        cfg: SelfplayWorkerConfig,
        stop: asyncio.Event,
        counters: Counters | None = None,
    ) -> None:
        self.bus, self.cfg, self.stop = bus, cfg, stop
        self.counters = Counters() if counters is None else counters
        self.halt = threading.Event()  # tells the playing thread to give up
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="selfplay")
        self.evaluators = Evaluators(ModelStore(bus, Path(cfg.cache_dir)), self.pool, cfg.threads)
        self.games_published = 0
        self.budget = budget_bytes(cfg.memory_budget_mb, node_memory_bytes(), cfg.node_workers)
        self.batches: dict[tuple[str, str], int] = {}  # calibrated, per game and net size

    async def serve(self) -> None:
        cfg = self.cfg
        compute = await start_compute(
            self.pool, cfg.device, cfg.precision, self.counters, self.stop, cfg.tier
        )
        if compute is None:
            return
        self.evaluators.compute = compute
        puller: WorkQueue[SelfplayJob] = Puller(
            self.bus,
            "selfplay",
            SelfplayJob,
            counters=self.counters,
            tier=tier_of(compute, cfg.tier),
            games=cfg.games or None,
            node=cfg.node_id,
        )
        while not self.stop.is_set():
            try:
                delivery = await puller.next(timeout_s=2.0)
            except BusError as e:
                log.warning("cannot pull jobs: %s", e)
                await wait_or_stop(self.stop, 1.0)
                continue
            if delivery is not None:
                await self.work(delivery)

    async def work(self, delivery: Delivery[SelfplayJob]) -> None:
        job = delivery.job
        log.info(
            "job %s: %d games of %s", job.job_id, job.games, job.game, extra={"job": job.job_id}
        )
        async with delivery.kept_alive(self.cfg.keepalive_s):
            try:
                finished = await self.play(job, delivery.delivered)
            except JobTooBig as e:
                log.warning("refusing job %s: %s", job.job_id, e, extra={"job": job.job_id})
                await delivery.retry(self.bus, self.cfg.node_id, str(e), self.cfg.refuse_delay_s)
                return
            except (CheckpointError, BusError, ValueError) as e:
                log.error("job %s failed: %r", job.job_id, e, extra={"job": job.job_id})
                await delivery.retry(self.bus, self.cfg.node_id, repr(e))
                return
        if not finished:  # stopping: hand the job back at once rather than after ack-wait
            await delivery.release()
            return
        await delivery.done()

    async def play(self, job: SelfplayJob, delivery: int = 1) -> bool:
        """Play the job's games, publishing each as it ends; False if stopped before the end."""
        game = get_game(job.game)
        evaluator = await self.evaluators.get(game, job.model_sha256)
        concurrency = self.fitted(game, evaluator, job, await self.batch_for(game, evaluator))
        watches = self.watches(concurrency)
        engine = msgspec.structs.replace(
            self.cfg.for_game(job.game).engine,
            concurrent_games=concurrency,
            num_simulations=job.sims,
            resign_value=job.resign_value,
        )
        loop = asyncio.get_running_loop()
        records: asyncio.Queue[GameRecord | None] = asyncio.Queue()
        given_up = threading.Event()

        def stopped() -> bool:
            return self.halt.is_set() or given_up.is_set()

        def produce() -> None:
            try:
                for record in self_play(
                    game,
                    evaluator,
                    np.random.default_rng(job_seed(job.job_id, delivery)),
                    engine,
                    num_games=job.games,
                    model_sha256=job.model_sha256,
                    generation=job.generation,
                    job_id=job.job_id,
                    clock=self.bus.clock.time,
                    stop=stopped,
                    limit=lambda: min(watch.limit() for watch in watches),
                ):
                    loop.call_soon_threadsafe(records.put_nowait, record)
            finally:
                loop.call_soon_threadsafe(records.put_nowait, None)

        started = self.bus.clock.monotonic()
        playing = loop.run_in_executor(self.pool, produce)
        try:
            published, sims = await self.publish_all(records)
        finally:
            given_up.set()
            await playing  # re-raises anything the engine raised
        seconds = self.bus.clock.monotonic() - started
        record_rate(self.counters, self.evaluators.compute, net_config_of(evaluator), sims, seconds)
        if shrinks := [shrink for watch in watches for shrink in watch.shrinks]:
            log.warning("job %s near its memory budget: games at once %s", job.job_id, shrinks)
        return published == job.games

    def watches(self, start: int) -> list[RssWatch]:
        """What a job's games at once shrink by: the process's RSS against its budget and, on a
        device with memory of its own (a GPU), the memory it holds there against its share."""
        clock, compute = self.bus.clock.monotonic, self.evaluators.compute
        found = [RssWatch(self.budget, start, clock=clock)]
        _, total = compute.memory()
        if total:
            share = default_budget_bytes(total, self.cfg.node_workers)
            found.append(RssWatch(share, start, read=lambda: compute.memory()[0], clock=clock))
        return found

    async def batch_for(self, game: Game[Any], evaluator: Evaluator) -> int:
        """The games at once this device wants for the evaluator's net: the calibrated batch,
        measured once per game and net size in the playing thread; else `concurrent_games`."""
        cap, net = self.cfg.for_game(game.name).concurrent_games, net_config_of(evaluator)
        if not self.cfg.calibrate or net is None:
            return cap
        key = (game.name, size_label(net))
        if key not in self.batches:
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self.pool, _calibrated, game, evaluator, cap)
            self.batches[key] = found.best_batch
            rates = {batch: round(rate) for batch, rate in found.rates.items()}
            log.info(
                "%s %s: %d games at once (positions/s by batch %s)", *key, found.best_batch, rates
            )
        return self.batches[key]

    def fitted(self, game: Game[Any], evaluator: object, job: SelfplayJob, batch: int) -> int:
        """Games at once for `job`: up to `batch`, as many as fit the memory budget beside what
        the worker holds now (its net loaded); JobTooBig, with the reason, if not even one does."""
        net = net_config_of(evaluator)
        estimate = partial(estimate_selfplay_bytes, game, net, sims=job.sims)
        in_use = own_rss_bytes() - (net_bytes(game, net, 0) if net else 0)  # weights counted once
        wanted = min(batch, job.games)
        fit = fit_concurrency(self.budget, in_use, lambda n: estimate(concurrent_games=n), wanted)
        if fit is None:
            raise JobTooBig(refusal_reason(self.budget, in_use, estimate(concurrent_games=1)))
        return fit

    async def publish_all(self, records: asyncio.Queue[GameRecord | None]) -> tuple[int, int]:
        """Publish each game as it ends; (games, simulations) published."""
        count = sims = 0
        while (record := await records.get()) is not None:
            await publish_game(self.bus, record)
            spent = simulations(record)
            count, sims = count + 1, sims + spent
            self.games_published += 1
            self.counters.add("games")
            self.counters.add("simulations", spent)
        return count, sims


def _calibrated(game: Game[Any], evaluator: Evaluator, most: int) -> Calibration:
    positions = sample_positions(game, most, np.random.default_rng(0))
    return calibrate(evaluator, positions, max_batch=most, seconds_per_size=CALIBRATE_S)


async def publish_game(bus: Bus, record: GameRecord, attempts: int = 20) -> None:
    """Store one game; retries reuse the game id, so JetStream keeps exactly one copy."""
    subject, data = names.games_subject(record.game), encode_record(record)
    for attempt in range(attempts):
        try:
            await bus.publish_durable(subject, data, msg_id=record.game_id)
            return
        except Unavailable:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))


async def run(
    bus: Bus, cfg: SelfplayWorkerConfig, stop: asyncio.Event, counters: Counters | None = None
) -> None:
    if cfg.nice:
        os.nice(cfg.nice)
    await bus.provision()
    worker = Worker(bus, cfg, stop, counters)
    watcher = asyncio.create_task(set_when(stop, worker.halt))
    # Models are fetched while the worker still waits for the coordinator's job consumers.
    who = f"{cfg.node_id}/{Path(cfg.cache_dir).name}"  # each self-play process of a node
    fetching = prefetch_promoted(bus, worker.evaluators.store, stop, who, cfg.adopt_window_s)
    prefetch = asyncio.create_task(fetching)
    try:
        if await await_consumer(bus, "selfplay", stop):
            await worker.serve()
    finally:
        watcher.cancel()
        prefetch.cancel()
        worker.halt.set()
        worker.pool.shutdown(wait=True, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    counters = Counters()  # the process's: its pulses carry what the worker counts
    counted = partial(run, counters=counters)
    return service_main("selfplay", SelfplayWorkerConfig, counted, argv, counters=counters)


if __name__ == "__main__":
    raise SystemExit(main())
