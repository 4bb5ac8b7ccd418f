"""A simulated cluster: the real lease holders and schedulers of several nodes on one in-memory
server, on virtual time, under a schedule of faults, with the invariants checked throughout.

Everything is decided by the `Schedule`: the same schedule replays the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from schemas import names
from schemas.codec import decode
from schemas.jobs import SelfplayJob
from shared.bus.memory import MemoryBus, MemoryServer
from shared.lease.holder import Contender, hold
from shared.lease.quorum import LeaseParams
from shared.runtime.supervisor import Limits, backoff
from shared.sim.clock import VirtualClock, run_virtual
from shared.sim.invariants import (
    SELFPLAY_JOBS,
    GamesChecker,
    LeaseChecker,
    LoopStateChecker,
    Violation,
)

FaultKind = Literal["crash", "partition", "pause", "outage", "lose_acks", "lose_watches", "restart"]
SAMPLE_S = 0.05  # how often the lease checker looks at every holder
FAILOVER_S = 12.0  # no new fault for this long, and some node unharmed: a leader must exist
WRITE_EVERY_S = 5.0  # in a settled cluster with schedulers, the longest gap between ticks...
WRITE_PER_LATENCY = 30.0  # ... plus this many requests' worth of latency (a tick's reads)

Service = Callable[[MemoryBus, str, asyncio.Event], Awaitable[None]]
Goal = Callable[[MemoryBus], Awaitable[bool]]  # asked as the run goes: may it end now?
GOAL_EVERY_S = 5.0


@dataclass(frozen=True)
class Fault:
    """One thing going wrong at `at` (virtual seconds): a node crashes (and comes back after
    `duration_s`, if it is > 0), is cut off or frozen (its requests wait, then go on) for
    `duration_s`; the server is unavailable, restarts, answers the next `count` writes of
    everyone without the ack, or loses every watch. Node -1 is whichever leads at `at`."""

    at: float
    kind: FaultKind
    node: int = 0
    duration_s: float = 0.0
    count: int = 1


@dataclass(frozen=True)
class Schedule:
    """A whole simulated run; `seed` names it (and seeds anything random in it)."""

    seed: int
    nodes: int = 3
    replicas: int = 3
    faults: tuple[Fault, ...] = ()
    horizon_s: float = 60.0
    latency_s: float = 0.0  # the most a request or its answer spends on the wire
    lease: LeaseParams = field(default_factory=LeaseParams)


@dataclass
class Node:
    """One simulated node: its connection and the tasks of its services, while it runs."""

    name: str
    incarnation: int = 0
    bus: MemoryBus | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    contender: Contender | None = None
    healthy_since: float = 0.0  # inf while crashed, cut off or frozen


@dataclass
class Report:
    """What a run did: terms elected, loop-state writes, and the first invariant broken."""

    schedule: Schedule
    terms: list[int]
    loop_writes: int
    reached: bool  # the run's goal held before its horizon
    restarts: int  # services that failed and were restarted (the last failure's repr)
    last_failure: str
    violation: str | None = None


class World:
    """The nodes, the server, the checkers and the fault schedule of one run."""

    def __init__(
        self, schedule: Schedule, services: tuple[Service, ...] = (), until: Goal | None = None
    ) -> None:
        self.schedule = schedule
        self.services = services
        self.until = until
        self.reached = False
        self.clock = VirtualClock()
        self.server = MemoryServer(clock=self.clock, replicas=schedule.replicas)
        self.nodes = [Node(f"n{i}") for i in range(schedule.nodes)]
        self.lease = LeaseChecker()
        self.loop_state = LoopStateChecker(self.clock)
        self.games = GamesChecker()
        self.rng = random.Random(schedule.seed)
        self.instances = 0
        self.restarts = 0
        self.last_failure = ""
        self.calm_from = 0.0  # every fault pushes it back

    async def run(self) -> Report:
        admin = self.server.connect("admin")
        await admin.provision()
        self.server.on_commit(self.loop_state.commit)
        self.server.on_commit(self.games.commit)
        for node in self.nodes:
            self.start(node)
        try:
            async with asyncio.TaskGroup() as tg:
                checker = tg.create_task(self.check_lease(), name="lease-checker")
                if self.until is not None:
                    tg.create_task(self.watch_goal(self.until, checker), name="goal")
                for fault in sorted(self.schedule.faults, key=lambda f: f.at):
                    tg.create_task(self.inject(fault), name=f"fault-{fault.kind}")
        finally:
            await self.teardown()
        return self.report()

    def queued_selfplay(self) -> set[str]:
        """The ids of the self-play jobs in the work queue now (read directly)."""
        stream = self.server.stream(names.JOBS_STREAM)
        return {decode(stored.data, SelfplayJob).job_id for stored in stream.on(SELFPLAY_JOBS)}

    async def watch_goal(self, goal: Goal, checker: asyncio.Task[None]) -> None:
        """End the run early, once `goal` holds (asked every `GOAL_EVERY_S`)."""
        observer = self.server.connect("observer")
        while not checker.done():
            if await goal(observer):
                self.reached = True
                checker.cancel()
                return
            await asyncio.sleep(GOAL_EVERY_S)

    async def teardown(self) -> None:
        """Stop every node, thawed first so nothing it does on the way out waits forever."""
        for node in self.nodes:
            if node.bus is not None:
                node.bus.pause(False)
        for node in self.nodes:
            await self.halt(node, graceful=False)

    def report(self, violation: str | None = None) -> Report:
        return Report(
            self.schedule,
            self.lease.terms(),
            self.loop_state.writes,
            self.reached,
            self.restarts,
            self.last_failure,
            violation,
        )

    # -- nodes ----------------------------------------------------------------------------------

    def start(self, node: Node) -> None:
        if node.bus is not None:  # already back (two crashes overlapped)
            return
        node.incarnation += 1
        node.healthy_since = self.clock.monotonic()
        node.bus = self.server.connect(f"{node.name}.{node.incarnation}")
        if self.schedule.latency_s > 0:
            node.bus.latency = lambda: self.rng.uniform(0.0, self.schedule.latency_s)
        node.stop = asyncio.Event()
        bus, stop = node.bus, node.stop
        node.tasks = [asyncio.create_task(self.supervised(node, self.lead(node)), name="leader")]
        for service in self.services:
            start = _starter(service, bus, node.name, stop)
            node.tasks.append(asyncio.create_task(self.supervised(node, start), name="service"))

    def lead(self, node: Node) -> Callable[[], Awaitable[None]]:
        """The leader service: a new contender (a new instance) each time it starts."""
        assert node.bus is not None
        bus, stop = node.bus, node.stop

        async def run() -> None:
            self.instances += 1
            instance = f"{node.name}.{node.incarnation}.{self.instances}"
            node.contender = Contender(bus, node.name, self.schedule.lease, instance=instance)
            await hold(node.contender, stop)

        return run

    async def supervised(self, node: Node, start: Callable[[], Awaitable[None]]) -> None:
        """Restart a service that fails, after the supervisor's backoff, as the node would."""
        failures = 0
        stop = node.stop
        while not stop.is_set():
            try:
                await start()
                return
            except Exception as e:
                failures += 1
                self.restarts += 1
                self.last_failure = repr(e)
            await asyncio.sleep(backoff(failures, Limits()))

    async def halt(self, node: Node, *, graceful: bool) -> None:
        """Stop a node's services: at once and unannounced (a crash: its connection is cut
        first, so nothing it does on the way out reaches the server), or by its stop event."""
        bus, tasks, contender = node.bus, node.tasks, node.contender
        if bus is None:
            return
        node.bus, node.tasks = None, []  # a second halt meanwhile finds nothing to do
        if not graceful:
            bus.partition(True)
            for task in tasks:
                task.cancel()
        node.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if node.contender is contender:  # not the next incarnation's, started meanwhile
            node.contender = None
        await bus.close()

    # -- faults ---------------------------------------------------------------------------------

    async def inject(self, fault: Fault) -> None:
        await asyncio.sleep(max(0.0, fault.at - self.clock.monotonic()))
        node = self.target(fault.node)
        # A leader lost takes a failover; a server fault, its whole length and then some.
        server_fault = fault.kind in ("outage", "restart", "lose_acks", "lose_watches")
        calm = fault.at + (max(fault.duration_s, 1.0) if server_fault else 0.0)
        self.calm_from = max(self.calm_from, calm)
        match fault.kind:
            case "crash":
                await self.halt(node, graceful=False)
                if node.bus is None:  # an overlapping crash may have restarted it meanwhile
                    node.healthy_since = math.inf
                if fault.duration_s > 0:
                    await asyncio.sleep(fault.duration_s)
                    self.start(node)
            case "partition":
                if node.bus is not None:
                    bus = node.bus
                    bus.partition(True)
                    node.healthy_since = math.inf
                    await asyncio.sleep(fault.duration_s)
                    bus.partition(False)
                    node.healthy_since = self.clock.monotonic()
            case "pause":
                if node.bus is not None:
                    bus = node.bus
                    bus.pause(True)
                    node.healthy_since = math.inf
                    await asyncio.sleep(fault.duration_s)
                    bus.pause(False)
                    node.healthy_since = self.clock.monotonic()
            case "outage":
                self.server.faults.unavailable_until(self.clock.monotonic() + fault.duration_s)
            case "lose_acks":
                self.server.faults.lose_acks(fault.count)
            case "lose_watches":
                self.server.lose_watches()
            case "restart":
                await self.server.restart(fault.duration_s)

    def target(self, index: int) -> Node:
        """Node `index`, or for -1 the one whose contender holds a term now (else the first):
        faults aimed at the leader find the bugs that matter most."""
        if index >= 0:
            return self.nodes[index % len(self.nodes)]
        leading = [n for n in self.nodes if n.contender is not None and n.contender.term]
        return leading[0] if leading else self.nodes[0]

    # -- invariants -----------------------------------------------------------------------------

    def check_live(self, live: list[Contender], now: float) -> None:
        """Liveness: `FAILOVER_S` after the last fault began (a server fault: ended), with
        some node unharmed that long, some node leads, however long the fault lasts (a leader
        frozen for 20 s is replaced); once every running node has been unharmed for longer, the
        leader's scheduler (when the nodes run one) keeps writing the loop state."""
        calm = now - self.calm_from
        healthy = [now - n.healthy_since for n in self.nodes]
        if not live or calm < FAILOVER_S or max(healthy) < FAILOVER_S:
            return
        if not any(c.term is not None and c.until() > now for c in live):
            raise Violation(f"t={now:.2f}: no valid leader, though calm for {calm:.1f} s")
        gap = WRITE_EVERY_S + WRITE_PER_LATENCY * self.schedule.latency_s
        last = self.loop_state.last_write_at
        running = [now - n.healthy_since for n in self.nodes if n.bus is not None]
        settled = min(calm, *running) >= FAILOVER_S + gap
        if self.services and settled and now - last > gap:
            raise Violation(f"t={now:.2f}: loop state last written at {last:.2f}")

    async def check_lease(self) -> None:
        while self.clock.monotonic() < self.schedule.horizon_s:
            now = self.clock.monotonic()
            live = [n.contender for n in self.nodes if n.contender is not None]
            self.lease.sample(live, now, self.server.peek)
            self.loop_state.check()
            self.games.sample(self.queued_selfplay(), now)
            self.games.check()
            self.check_live(live, now)
            await asyncio.sleep(SAMPLE_S)
        self.loop_state.check()


def simulate(
    schedule: Schedule, services: tuple[Service, ...] = (), until: Goal | None = None
) -> Report:
    """Run `schedule` to its horizon, or until `until` holds; the report says which invariant
    broke first, if any."""
    world = World(schedule, services, until)
    with _quiet_logs():
        try:
            return run_virtual(world.run())
        except Violation as e:
            violation = str(e)
        except ExceptionGroup as group:
            found, rest = group.split(Violation)
            if found is None:
                raise
            del rest
            violation = str(_first(found))
    return world.report(violation)


def _first(group: BaseExceptionGroup[Violation]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _starter(
    service: Service, bus: MemoryBus, node: str, stop: asyncio.Event
) -> Callable[[], Awaitable[None]]:
    return lambda: service(bus, node, stop)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Thousands of runs of services that log every fault: keep only errors."""
    logger = logging.getLogger("conclave")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
