"""The real services, as the simulation starts them on a node: `(bus, node, stop)` each.

`scheduler_service` alone is the cheap cluster of the lease and scheduler simulations;
`loop_services` is a whole node of the training loop (heartbeat, scheduler, self-play, trainer,
evaluator), each service with the pulses its process would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from schemas import names
from schemas.codec import encode
from schemas.control import ServicePulse
from services import evaluator, heartbeat, scheduler, selfplay, trainer
from shared.bus.errors import BusError
from shared.bus.memory import MemoryBus
from shared.loop.policy import LoopConfig
from shared.loop.presets import TICTACTOE, Preset
from shared.loop.sprt import SprtConfig
from shared.runtime.counters import CPU, Counters
from shared.sim.world import Service

SIM_LOOP = LoopConfig(games=("tictactoe",), games_per_generation=40, selfplay_games_per_job=4)

# The whole loop in memory, sized so a run is a minute of CPU: work takes no virtual time, so
# self-play never waits for the trainer or the gate and would play thousands of games a
# generation. Generations of 300 games, one 50-game job stored at a time, and a gate that stops
# a clearly worse candidate within 60 games; a quarter of the games open with up to 3 random
# moves, so the window keeps the lopsided positions a perfect player must still answer (without
# them, measured over seeds 0-5, a promoted net often forgot them and the run took 4x longer;
# with 200-game generations, seeds 0-5 took 31-95 s two at a time on 2 cores; with 300, seeds
# 0-8 took 19-66 s, median 30 s).
SIM_TICTACTOE = msgspec.structs.replace(
    TICTACTOE,
    loop=msgspec.structs.replace(
        TICTACTOE.loop,
        games_per_generation=300,
        selfplay_games_per_job=50,
        selfplay_job_cap=1,
        sprt=SprtConfig(elo0=-20.0, elo1=0.0, max_games=60),
    ),
    selfplay=msgspec.structs.replace(
        TICTACTOE.selfplay, random_opening_fraction=0.25, random_opening_plies=3
    ),
)
WORKERS = ("selfplay", "trainer", "evaluator")

Worker = Callable[[MemoryBus, str, asyncio.Event, Counters], Awaitable[None]]


def scheduler_service(loop: LoopConfig = SIM_LOOP, tick_s: float = 1.0) -> Service:
    """The scheduler service, as every node of a cluster runs it (only the leader schedules)."""

    async def run(bus: MemoryBus, node: str, stop: asyncio.Event) -> None:
        cfg = scheduler.SchedulerConfig(node_id=node, loop=loop, tick_s=tick_s)
        await scheduler.run(bus, cfg, stop)

    return run


def loop_services(preset: Preset, cache: Path) -> tuple[Service, ...]:
    """Every service of a node that has every role, configured from `preset` as the launcher
    would (`shared.node.launcher`), models cached under `cache`."""

    async def beat(bus: MemoryBus, node: str, stop: asyncio.Event) -> None:
        services = ["heartbeat", "leader", "scheduler", *WORKERS]
        cfg = heartbeat.HeartbeatConfig(node, ["all"], services, detect_gpus=False)
        await heartbeat.run(bus, cfg, stop)

    async def schedule(bus: MemoryBus, node: str, stop: asyncio.Event) -> None:
        cfg = scheduler.SchedulerConfig(
            node, loop=preset.loop, effects=preset.effects, budget=preset.budget
        )
        await scheduler.run(bus, cfg, stop)

    async def play(bus: MemoryBus, node: str, stop: asyncio.Event, counters: Counters) -> None:
        cfg = selfplay.SelfplayWorkerConfig(
            node,
            str(cache / node / "selfplay"),
            concurrent_games=preset.selfplay_concurrency,
            engine=preset.selfplay,
        )
        await selfplay.run(bus, cfg, stop, counters)

    async def train(bus: MemoryBus, node: str, stop: asyncio.Event, counters: Counters) -> None:
        cfg = trainer.TrainerConfig(
            node,
            str(cache / node / "trainer"),
            window_games=preset.window_games,
            max_reuse=preset.max_reuse,
            net=preset.net,
            train=preset.train,
        )
        await trainer.run(bus, cfg, stop, counters)

    async def evaluate(bus: MemoryBus, node: str, stop: asyncio.Event, counters: Counters) -> None:
        cfg = evaluator.EvaluatorConfig(node, str(cache / node / "evaluator"))
        await evaluator.run(bus, cfg, stop, counters)

    workers: tuple[Worker, ...] = (play, train, evaluate)
    pulsed = tuple(_pulsed(name, w) for name, w in zip(WORKERS, workers, strict=True))
    return (beat, _pulsed("scheduler", _counted(schedule)), *pulsed)


def _counted(
    run: Callable[[MemoryBus, str, asyncio.Event], Awaitable[None]],
) -> Worker:
    async def counted(bus: MemoryBus, node: str, stop: asyncio.Event, _: Counters) -> None:
        await run(bus, node, stop)

    return counted


def _pulsed(service: str, run: Worker) -> Service:
    """`run` with the pulses its process would send (what the heartbeat reports as alive)."""

    async def pulsed(bus: MemoryBus, node: str, stop: asyncio.Event) -> None:
        counters = Counters()
        beats = asyncio.create_task(_pulses(bus, node, service, counters, stop))
        try:
            await run(bus, node, stop, counters)
        finally:
            beats.cancel()

    return pulsed


async def _pulses(
    bus: MemoryBus, node: str, service: str, counters: Counters, stop: asyncio.Event
) -> None:
    started, begun = bus.clock.time(), bus.clock.monotonic()
    subject = names.pulse_subject(node, service)
    while not stop.is_set():
        pulse = ServicePulse(
            node=node,
            service=service,
            pid=os.getpid(),
            lag_p50_ms=0.0,
            lag_max_ms=0.0,
            started_at=started,
            sent_at=bus.clock.time(),
            # Busy all the time, by the virtual clock: every worker the same share of CPU, and
            # the same on every run (the process's real CPU time is neither).
            counters={**counters.snapshot(), CPU: round(bus.clock.monotonic() - begun, 3)},
            doing=counters.doing(),
        )
        with contextlib.suppress(BusError):  # as a process's pulse: the next one will do
            await bus.publish(subject, encode(pulse))
        await bus.clock.sleep(1.0)
