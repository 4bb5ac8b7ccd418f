"""Self-play allocation in a run: the real heartbeat, leader and scheduler on the in-memory bus
and virtual clock, three configurations at base weights 1:2:1 with no learning signal, and a
simulated self-play worker that takes the real jobs from the real queue, says in its pulse which
job it is doing, and stores one random game per job's game after a virtual time that differs by
configuration (a Connect-3 game costs six tic-tac-toe games). Over 20 simulated minutes the
share of worker time each configuration got is within 5 points of its target, 25/50/25, and
the scheduler's record says the same."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field

import msgspec
import numpy as np

from schemas import names
from schemas.codec import encode
from schemas.control import ServicePulse
from schemas.game import GameRecord, encode_record, pack_policy
from schemas.jobs import SelfplayJob
from services import heartbeat, scheduler
from services.scheduler import STATE_KEY, LoopRecord
from shared.bus.errors import BusError
from shared.bus.memory import MemoryBus
from shared.bus.ports import WorkQueue
from shared.learn.games import get_game, players_of
from shared.lease.fencing import read_termed
from shared.loop.allocation import Progress, allocate, promoted, rejected
from shared.loop.policy import GameState, LoopConfig, LoopState
from shared.sim.world import Schedule, Service, simulate
from shared.work.jobs import Puller, await_consumer

WEIGHTS = {"tictactoe": 1.0, "tictacmo": 2.0, "connect3-6x7-3p": 1.0}
TARGET = {"tictactoe": 0.25, "tictacmo": 0.5, "connect3-6x7-3p": 0.25}
LOOP = LoopConfig(
    games=tuple(WEIGHTS),
    weights={"tictacmo": 2.0},  # the others default to 1
    games_per_generation=10**9,  # no training: no new nets, so no learning signal
    selfplay_games_per_job=1,
    queue_target_per_worker=2,  # one worker: 2 jobs stored
)
# Virtual seconds the simulated worker spends on one game of each configuration.
GAME_S = {"tictactoe": 1.0, "tictacmo": 3.0, "connect3-6x7-3p": 6.0}
WARMUP_S = 60.0  # the lease is taken and the queue filled
MEASURE_S = 20 * 60.0
BEST = {name: f"{i:x}" * 64 for i, name in enumerate(WEIGHTS, start=1)}


def seeded_scheduler(loop: LoopConfig, progress: dict[str, Progress]) -> Service:
    """The scheduler, on a loop record in which every configuration has a best net already (as
    if promoted before the run) and the Elo chains `progress`: self-play at once, nothing to
    train."""

    async def run(bus: MemoryBus, node: str, stop: asyncio.Event) -> None:
        entry = await bus.last(names.LOOP_BUCKET, STATE_KEY)
        if entry.value is None:
            games = {n: GameState(generation=0, best=s, trainings=1) for n, s in BEST.items()}
            record = LoopRecord(term=0, state=LoopState(games), updated_at=0.0, progress=progress)
            await bus.write(names.LOOP_BUCKET, STATE_KEY, encode(record))
        await scheduler.run(bus, scheduler.SchedulerConfig(node, loop=loop), stop)

    return run


async def beat(bus: MemoryBus, node: str, stop: asyncio.Event) -> None:
    services = ["heartbeat", "leader", "scheduler", "selfplay"]
    cfg = heartbeat.HeartbeatConfig(node, ["all"], services, detect_gpus=False)
    await heartbeat.run(bus, cfg, stop)


def random_game(job: SelfplayJob, index: int, rng: np.random.Generator) -> GameRecord:
    """One game of the job's configuration with random moves and uniform policy targets."""
    game = get_game(job.game)
    state, moves, masks = game.initial(), [], []
    while (outcome := game.outcome(state)) is None:
        legal = game.legal_mask(state)
        masks.append(legal / legal.sum())
        moves.append(int(rng.choice(np.flatnonzero(legal))))
        state = game.apply(state, moves[-1])
    players = players_of(job.game)
    many = players > 2
    return GameRecord(
        game=job.game,
        game_id=f"{job.job_id}-{index}",
        job_id=job.job_id,
        model_sha256=job.model_sha256,
        generation=job.generation,
        moves=moves,
        policy=pack_policy(np.stack(masks).astype(np.float32)),
        root_values=[0.0] * len(moves),
        outcome=float(outcome[0]),
        plies=len(moves),
        num_actions=game.num_actions,
        search="gumbel",
        sims_per_move=job.sims,
        players=players,
        outcomes=[float(v) for v in outcome] if many else [],
        root_vectors=[0.0] * (len(moves) * players) if many else [],
    )


WORKED: dict[str, float] = {}  # the simulated worker's virtual seconds per configuration


async def simulated_selfplay(bus: MemoryBus, node: str, stop: asyncio.Event) -> None:
    """A self-play worker that takes `GAME_S` virtual seconds a game: the real queue, acks and
    pulses (saying which job it is doing), random games instead of searched ones."""
    doing = [""]
    pulses = asyncio.create_task(pulse(bus, node, "selfplay", stop, doing))
    rng = np.random.default_rng(0)
    try:
        if not await await_consumer(bus, "selfplay", stop):
            return
        queue: WorkQueue[SelfplayJob] = Puller(bus, "selfplay", SelfplayJob, node=node)
        while not stop.is_set():
            delivery = await queue.next(timeout_s=2.0)
            if delivery is None:
                continue
            job = delivery.job
            doing[0] = f"selfplay {job.job_id}"
            for index in range(job.games):
                await bus.clock.sleep(GAME_S[job.game])
                WORKED[job.game] = WORKED.get(job.game, 0.0) + GAME_S[job.game]
                record = random_game(job, index, rng)
                subject = names.games_subject(job.game)
                await bus.publish_durable(subject, encode_record(record), msg_id=record.game_id)
            await delivery.done()
            doing[0] = ""
    finally:
        pulses.cancel()


async def pulse(
    bus: MemoryBus, node: str, service: str, stop: asyncio.Event, doing: list[str]
) -> None:
    """The pulse a live process sends each second: the heartbeat counts it as a worker."""
    started = bus.clock.time()
    while not stop.is_set():
        beat = ServicePulse(
            node=node,
            service=service,
            pid=os.getpid(),
            lag_p50_ms=0.0,
            lag_max_ms=0.0,
            started_at=started,
            sent_at=bus.clock.time(),
            doing=doing[0],
        )
        with contextlib.suppress(BusError):
            await bus.publish(names.pulse_subject(node, service), encode(beat))
        await bus.clock.sleep(1.0)


@dataclass
class Measured:
    """Worker seconds per configuration at the window's start and end, and the last record."""

    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    record: LoopRecord | None = None

    async def __call__(self, bus: MemoryBus) -> bool:
        now = bus.clock.monotonic()
        if now < WARMUP_S:
            return False
        totals = {n: WORKED.get(n, 0.0) for n in WEIGHTS}
        if not self.start:
            self.start = totals
            self.began = now
            return False
        if now - self.began < MEASURE_S:
            return False
        self.end = totals
        self.record, _ = await read_termed(bus, names.LOOP_BUCKET, STATE_KEY, LoopRecord)
        return True

    def shares(self) -> dict[str, float]:
        worked = {n: self.end[n] - self.start[n] for n in WEIGHTS}
        return {n: worked[n] / sum(worked.values()) for n in WEIGHTS}


def measured_run(loop: LoopConfig, progress: dict[str, Progress]) -> Measured:
    """Worker seconds per configuration over `MEASURE_S` of a run, after `WARMUP_S`."""
    WORKED.clear()
    measured = Measured()
    run = Schedule(seed=0, nodes=1, replicas=1, horizon_s=WARMUP_S + MEASURE_S + 60.0)
    services = (beat, seeded_scheduler(loop, progress), simulated_selfplay)
    report = simulate(run, services, until=measured)
    assert report.violation is None, report.violation
    assert report.reached, f"the window did not end: {measured.start} .. {measured.end}"
    assert report.restarts == 0, report.last_failure
    worked = sum(measured.end.values()) - sum(measured.start.values())
    assert worked >= 0.9 * MEASURE_S, f"the worker idled: {worked} s of work"
    return measured


def test_base_weights_one_two_one_give_a_quarter_a_half_and_a_quarter_of_self_play() -> None:
    measured = measured_run(LOOP, {})
    shares = measured.shares()
    for name, target in TARGET.items():
        assert abs(shares[name] - target) <= 0.05, (name, shares)
    assert measured.record is not None
    shown = measured.record.allocation
    for name, target in TARGET.items():
        assert shown[name].target == target
        assert shown[name].learning == 1.0
        actual = shown[name].actual
        assert actual is not None and abs(actual - target) <= 0.05, (name, shown)


def _chain(elo_per_decision: list[float]) -> Progress:
    """A recorded Elo chain: the first net, then a decision every 1000 games (a gain
    promoted, none rejected)."""
    progress = promoted(Progress(), 0, None, 0.0)
    for i, elo in enumerate(elo_per_decision, start=1):
        games = 1000 * i
        progress = promoted(progress, games, elo, 0.0) if elo else rejected(progress, games)
    return msgspec.structs.replace(progress, promoted_at=None)  # staleness equal: 1


RISING = [70.0, 50.0, 60.0, 55.0]
PLATEAUED = [90.0, 40.0, 0.0, 0.0, 0.0]


def test_a_plateaued_configuration_loses_self_play_to_a_rising_one_in_a_run() -> None:
    progress = {"tictactoe": _chain(RISING), "tictacmo": _chain(PLATEAUED)}  # connect3: none
    loop = msgspec.structs.replace(LOOP, weights={})
    planned = allocate(dict.fromkeys(WEIGHTS, 1.0), progress, 0.0)
    measured = measured_run(loop, progress)
    shares = measured.shares()
    assert shares["tictacmo"] < 0.2 < shares["tictactoe"]
    for name, a in planned.items():
        assert abs(shares[name] - a.target) <= 0.05, (name, shares, planned)
    assert measured.record is not None
    shown = measured.record.allocation
    assert shown["tictacmo"].learning < shown["tictactoe"].learning == 1.0
