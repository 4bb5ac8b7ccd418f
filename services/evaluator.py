"""evaluator service: pulls evaluation jobs, plays the matches, publishes the results.

A job is acknowledged only after JetStream has stored its result (deduplicated by job id, so a
redelivered job that finishes twice leaves one result). Model loading, search and inference run
in a worker thread; the event loop only moves messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import MatchEvaluators
from schemas.jobs import EvalJob, EvalResult, PlayerSpec, job_group
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.learn.arena import (
    AgentPlayer,
    MatchOutcome,
    MatchStopped,
    ModelPlayer,
    Player,
    play_match,
)
from shared.learn.baselines import make_agent
from shared.learn.evaltypes import Counted
from shared.learn.games import Game, UnknownGame, get_game
from shared.lease.watch import KeyChanges, first_of
from shared.loop.placement import eval_lanes
from shared.runtime.counters import Counters
from shared.runtime.service import main as service_main
from shared.runtime.service import set_when, wait_or_stop
from shared.work.compute import net_config_of, record_rate, start_compute
from shared.work.jobs import Delivery, JobSettings, Puller, await_consumer, dead_letter_now
from shared.work.modelcache import Evaluators
from shared.work.models import ModelStore, UnloadableModel

log = logging.getLogger("conclave.evaluator")

MATCH_CHECK_S = 10.0  # how often an evaluator reads whether it plays promotion matches


class Spent(NamedTuple):
    """What a match cost: wall seconds and the process's CPU seconds, after waiting in the
    queue for `waited_s`."""

    wall_s: float
    cpu_s: float
    waited_s: float


class BadPlayer(ValueError):
    """A player spec that names no usable agent or model."""


class EvaluatorConfig(msgspec.Struct, frozen=True):
    node_id: str
    cache_dir: str
    threads: int = 1
    concurrent_games: int = 32
    device: str = "auto"  # shared.learn.device: auto = CUDA, then MPS, then CPU
    precision: str = "auto"
    tier: str = "auto"  # the job tier pulled first (schemas.names.TIERS); auto: by the device
    games: tuple[str, ...] = ()  # the games this worker plays; () = every one installed
    opening_plies: int = 2
    keepalive_s: float = 10.0
    jobs: JobSettings = JobSettings()

    def __post_init__(self) -> None:
        for name in ("threads", "concurrent_games"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvaluatorConfig.{name} must be >= 1")
        if self.opening_plies < 0:
            raise ValueError("EvaluatorConfig.opening_plies must be >= 0")
        if self.keepalive_s <= 0:
            raise ValueError("EvaluatorConfig.keepalive_s must be > 0")


class Worker:
    def __init__(
        self,
        bus: Bus,
        cfg: EvaluatorConfig,
        stop: asyncio.Event,
        counters: Counters | None = None,
    ) -> None:
        self.bus, self.cfg, self.stop = bus, cfg, stop
        self.counters = Counters() if counters is None else counters
        self.halt = threading.Event()  # tells the playing thread to give up
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="evaluator")
        self.evaluators = Evaluators(ModelStore(bus, Path(cfg.cache_dir)), self.pool, cfg.threads)
        self.followers: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        cfg = self.cfg
        compute = await start_compute(
            self.pool, cfg.device, cfg.precision, self.counters, self.stop, cfg.tier
        )
        if compute is None:
            return
        self.evaluators.compute = compute
        puller = Puller(
            self.bus,
            "eval",
            EvalJob,
            counters=self.counters,
            games=cfg.games or None,
            node=cfg.node_id,
        )
        checked = None
        while not self.stop.is_set():
            if checked is None or self.bus.clock.monotonic() - checked >= MATCH_CHECK_S:
                lanes = await self.lanes()
                if lanes != puller.lanes:
                    log.info("pulling evaluation lanes %s", ", ".join(lanes))
                puller.lanes, checked = lanes, self.bus.clock.monotonic()
            try:
                delivery = await puller.next(timeout_s=2.0)
            except BusError as e:
                log.warning("cannot pull jobs: %s", e)
                await wait_or_stop(self.stop, 1.0)
                continue
            if delivery is not None:
                await self.work(delivery)

    async def lanes(self) -> tuple[str, ...]:
        """The lanes to pull: promotion matches only while the scheduler counts this evaluator
        fast enough for them (`shared.loop.placement.match_evaluators`)."""
        key = names.MATCH_EVALUATORS_KEY
        try:
            entry = await self.bus.last(names.REGISTRY_BUCKET, key)
            named = (
                None if entry.value is None else decode(entry.value, MatchEvaluators, subject=key)
            )
        except (BusError, BadMessage) as e:  # unknown: play matches rather than starve the gate
            log.warning("cannot read %s: %s", key, e)
            named = None
        return eval_lanes(f"{self.cfg.node_id}/evaluator", named)

    async def work(self, delivery: Delivery[EvalJob]) -> None:
        job = delivery.job
        if await self.decided(job):
            log.info("job %s: its match is decided; dropped", job.job_id, extra={"job": job.job_id})
            await delivery.done()
            return
        log.info(
            "job %s: %d games of %s, %s against %s",
            job.job_id,
            job.games,
            job.game,
            job.a.name,
            job.b.name,
            extra={"job": job.job_id},
        )
        abandon = threading.Event()  # set once the scheduler decides this job's match
        async with delivery.kept_alive(self.cfg.keepalive_s), self.abandoned(job, abandon):
            try:
                clock = self.bus.clock  # virtual under simulation: the pace replays too
                waited = max(0.0, clock.time() - delivery.submitted_at)
                started, cpu_at_start = clock.monotonic(), time.process_time()
                outcome = await self.evaluate(job, abandon)
                spent = Spent(
                    clock.monotonic() - started, time.process_time() - cpu_at_start, waited
                )
                await self.publish(job, outcome, spent)
            except MatchStopped:
                if self.halt.is_set():  # stopping: hand the job back now rather than after ack-wait
                    await delivery.release()
                    return
                log.info("job %s: its match was decided while it played; dropped", job.job_id)
            except UnloadableModel as e:
                await self.unloadable(delivery, e)
                return
            except (BusError, ValueError, UnknownGame) as e:
                log.error("job %s failed: %r", job.job_id, e, extra={"job": job.job_id})
                await delivery.retry(self.bus, self.cfg.node_id, f"{type(e).__name__}: {e}")
                return
        await delivery.done()

    async def unloadable(self, delivery: Delivery[EvalJob], error: UnloadableModel) -> None:
        """Dead-letter the job at once with the reason: no evaluator running this build can load
        the model, so retries would only delay the scheduler's verdict (it rejects a candidate
        named in its match's dead letters)."""
        job = delivery.job
        try:
            await dead_letter_now(self.bus, "eval", delivery.msg, str(error), job.job_id)
        except BusError as e:  # the verdict is not stored: keep the job for another attempt
            log.warning("job %s: dead letter not stored: %s", job.job_id, e)
            await delivery.retry(self.bus, self.cfg.node_id, str(error))

    async def decided(self, job: EvalJob) -> bool:
        """A promotion match job whose match the scheduler has already decided (a read error
        counts as undecided: the job is then played)."""
        if job.kind != "match" or not job.a.sha256:
            return False
        try:
            entry = await self.bus.last(
                names.REGISTRY_BUCKET, names.decided_key(job.game, job.a.sha256)
            )
        except (BusError, ValueError) as e:  # ValueError: not a digest; the player check says so
            log.warning("cannot read whether %s is decided: %s", job.job_id, e)
            return False
        return entry.value is not None

    @contextlib.asynccontextmanager
    async def abandoned(self, job: EvalJob, abandon: threading.Event) -> AsyncIterator[None]:
        """Set `abandon` if the job's match is decided while the body runs: the games left would
        count for nothing (a match job queued behind another of its match is usually playing
        when the decision lands)."""
        if job.kind != "match" or not job.a.sha256:
            yield
            return
        finished = asyncio.Event()
        self.keep(self.abandon_when_decided(job, abandon, finished))
        try:
            yield
        finally:
            finished.set()  # not a cancel: nats-py can swallow one mid-request (seen: a hang)

    async def abandon_when_decided(
        self, job: EvalJob, abandon: threading.Event, finished: asyncio.Event
    ) -> None:
        changes = KeyChanges(names.decided_key(job.game, job.a.sha256), names.REGISTRY_BUCKET)
        self.keep(changes.follow(self.bus))  # ends by itself once closed
        try:
            while not finished.is_set():
                await first_of(finished.wait(), changes.changed.wait())
                if changes.changed.is_set() and not finished.is_set():
                    changes.changed.clear()
                    if await self.decided(job):
                        abandon.set()
                        return
        finally:
            await changes.close()

    def keep(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task held until it ends."""
        task = asyncio.create_task(work)
        self.followers.add(task)
        task.add_done_callback(self.followers.discard)

    async def evaluate(self, job: EvalJob, abandon: threading.Event | None = None) -> MatchOutcome:
        """Resolve both players and play the match in the worker thread; raise MatchStopped
        when stopping or once `abandon` is set."""
        if job.a.same_player(job.b):  # its result could not be stored: refuse before playing
            raise BadPlayer(f"player b ({job.b.name}) is the same player as a ({job.a.name})")
        game = get_game(job.game)
        a = await self.player(game, job.a, "a")
        b = await self.player(game, job.b, "b")
        models = [p for p in (a, b) if isinstance(p, ModelPlayer)]
        net = next(filter(None, (net_config_of(p.evaluator) for p in models)), None)
        counts = {id(p): Counted(p.evaluator) for p in models}
        a, b = (_counting(p, counts) for p in (a, b))
        match = partial(
            play_match,
            game,
            a,
            b,
            job.games,
            np.random.default_rng(job.seed or None),
            opening_plies=self.cfg.opening_plies,
            concurrent=self.cfg.concurrent_games,
            stop=self.halt.is_set if abandon is None else _either(self.halt, abandon),
        )
        started = self.bus.clock.monotonic()
        outcome = await asyncio.get_running_loop().run_in_executor(self.pool, match)
        if len(models) == 2:  # a baseline's own time (mcts:200) would read as a slow device
            positions = sum(counted.positions for counted in counts.values())
            seconds = self.bus.clock.monotonic() - started
            record_rate(self.counters, self.evaluators.compute, net, positions, seconds)
        return outcome

    async def player(self, game: Game[Any], spec: PlayerSpec, side: str) -> Player:
        """A baseline agent or a searched model; raise BadPlayer naming the side and the cause."""
        try:
            check_spec(spec)
            if spec.agent:
                return AgentPlayer(make_agent(spec.agent))
            return ModelPlayer(await self.evaluators.get(game, spec.sha256), spec.sims)
        except UnloadableModel:
            raise  # its own verdict: the job is dead-lettered at once, not retried
        except (BusError, ValueError) as e:
            raise BadPlayer(f"player {side} ({spec.name}): {e}") from e

    async def publish(self, job: EvalJob, outcome: MatchOutcome, spent: Spent) -> None:
        result = EvalResult(
            job_id=job.job_id,
            game=job.game,
            kind=job.kind,
            a=job.a,
            b=job.b,
            wins_a=outcome.wins_a,
            draws=outcome.draws,
            wins_b=outcome.wins_b,
            term=job.term,
            finished_at=time.time(),
            group=job_group(job),
            elapsed_s=round(spent.wall_s, 3),
            cpu_s=round(spent.cpu_s, 3),
            waited_s=round(spent.waited_s, 3),
            pairs_per_game=outcome.pairs_per_game,  # the counts are pairwise (arena)
        )
        subject = names.results_subject(job.game, job_group(job))
        await self.bus.publish_durable(subject, encode(result), msg_id=f"result-{job.job_id}")
        self.counters.add("eval_games", outcome.games)
        score = f"{outcome.wins_a}-{outcome.draws}-{outcome.wins_b}"
        log.info(
            "job %s: %s %s %s", job.job_id, job.a.name, score, job.b.name, extra={"job": job.job_id}
        )


def _counting(player: Player, counts: dict[int, Counted]) -> Player:
    """A model player searching through its counting evaluator (an agent as it is)."""
    counted = counts.get(id(player))
    if counted is None or not isinstance(player, ModelPlayer):
        return player
    return dataclasses.replace(player, evaluator=counted)


def _either(*events: threading.Event) -> Callable[[], bool]:
    return lambda: any(e.is_set() for e in events)


def check_spec(spec: PlayerSpec) -> None:
    """A player is an agent spec or a model digest ("" is the uniform bootstrap) with sims >= 1."""
    if spec.agent and spec.sha256:
        raise BadPlayer("PlayerSpec sets both agent and sha256")
    if not spec.agent and spec.sims < 1:
        raise BadPlayer(f"PlayerSpec.sims must be >= 1 for model {spec.sha256!r}, got {spec.sims}")


async def run(
    bus: Bus, cfg: EvaluatorConfig, stop: asyncio.Event, counters: Counters | None = None
) -> None:
    await bus.provision()
    await await_consumer(bus, "eval", stop)
    worker = Worker(bus, cfg, stop, counters)
    watcher = asyncio.create_task(set_when(stop, worker.halt))
    try:
        await worker.serve()
    finally:
        watcher.cancel()
        worker.halt.set()
        worker.pool.shutdown(wait=True, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    counters = Counters()  # the process's: its pulses carry what the worker counts
    counted = partial(run, counters=counters)
    return service_main("evaluator", EvaluatorConfig, counted, argv, counters=counters)


if __name__ == "__main__":
    raise SystemExit(main())
