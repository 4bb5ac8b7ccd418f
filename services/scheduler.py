"""scheduler service: the master loop, run only on the node that holds the leader lease.

Each tick: observe (workers, queues, games, trainings, matches — all from durable state), decide
with the pure policy, carry the actions out idempotently (deterministic job ids, a CAS-protected
best pointer), then CAS the loop state in KV `loop` stamped with our term. A deposed leader's next
state write fails, so it stops; the new leader reads the same state and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import NamedTuple, TypeVar

import msgspec

from schemas import names
from schemas.codec import BadMessage, encode
from schemas.control import MatchEvaluators, NodeStatus
from shared.bus.compat import announce
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.lease.fencing import StaleTerm, cas_put, read_termed
from shared.lease.watch import Holder, KeyChanges, current_holder
from shared.loop.allocation import (
    ACTUAL_WINDOW_S,
    Allocation,
    Progress,
    accrued,
    allocate,
    busy_workers,
    job_seconds,
    normalised,
    promoted,
    rejected,
    spent_since,
)
from shared.loop.backgroundeval import BackgroundEval
from shared.loop.effects import Effects, EffectSettings
from shared.loop.evalplan import CpuMeter, EvalBudget, evaluation_share
from shared.loop.observe import accepted_nodes, cpu_readings, observe, train_job_id
from shared.loop.phase import GauntletPhase, Phase, TrainingPhase, phase_of
from shared.loop.placement import Stranding
from shared.loop.policy import (
    Action,
    GameState,
    LoopConfig,
    LoopState,
    Promote,
    Reject,
    Snapshot,
    apply,
    next_actions,
)
from shared.loop.progress import last_train_progress
from shared.loop.ratingjobs import SkipLog
from shared.runtime.service import main as service_main
from shared.runtime.service import wait_or_stop
from shared.work.jobs import JobSettings, ensure_consumer, handle_dead_letters, rehome

log = logging.getLogger("conclave.scheduler")
N = TypeVar("N", int, float)

STATE_KEY = names.LOOP_STATE_KEY


class LoopRecord(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="conclave.loop.v1"
):
    """The value of KV `loop/state`: the policy state plus the term that last wrote it."""

    term: int
    state: LoopState
    updated_at: float
    ticks: int = 0
    # Per game, (time, games so far) about once a minute for the last hour: games/hour in status.
    game_counts: dict[str, list[tuple[float, int]]] = {}
    phases: dict[str, Phase] = {}  # per game, what the loop is doing
    # Evaluation's share of the workers' CPU and each service's CPU seconds over the last
    # `cpu_window_s` (the evaluation budget's measure); None before any worker used CPU.
    evaluation_share: float | None = None
    cpu_s: dict[str, float] = {}
    cpu_window_s: float = 0.0
    # Per game, the self-play worker-seconds so far (from the workers' pulses, tick by tick),
    # and (time, seconds so far) about once a minute for the last hour: the allocation's measure.
    selfplay_seconds: dict[str, float] = {}
    selfplay_time: dict[str, list[tuple[float, float]]] = {}
    # Per game, the Elo chain of its decided candidates, and self-play's target and actual
    # share with the factors behind it (shared.loop.allocation).
    progress: dict[str, Progress] = {}
    allocation: dict[str, Allocation] = {}


def sampled(
    counts: dict[str, list[tuple[float, N]]], now: float, totals: dict[str, N]
) -> dict[str, list[tuple[float, N]]]:
    """Add a sample per game if the last is a minute old; keep the last hour (61 samples)."""
    out = {}
    for game, total in totals.items():
        series = list(counts.get(game, []))
        if not series or now - series[-1][0] >= 60.0:
            series.append((now, total))
        out[game] = series[-61:]
    return out


def learned(
    progress: dict[str, Progress], action: Action, before: GameState, now: float
) -> dict[str, Progress]:
    """The Elo chains after `action`: a decided candidate adds a point at the games it was
    trained on (`before` is its game's state when the action was decided)."""
    mine = progress.get(action.game, Progress())
    games = before.games_at_last_train
    match action:
        case Promote():
            elo = None if action.result is None else action.result.elo
            return {**progress, action.game: promoted(mine, games, elo, now)}
        case Reject():
            return {**progress, action.game: rejected(mine, games)}
        case _:
            return progress


def allocation_shown(
    planned: dict[str, Allocation], state: LoopState, spent: dict[str, float]
) -> dict[str, Allocation]:
    """What status shows: the target among the games with a best net (those that play), and
    the actual share of the recent window's self-play worker time (`spent`, seconds)."""
    ready = {n: a.target if state.game(n).best else 0.0 for n, a in planned.items()}
    targets = normalised(ready)
    actual = normalised(spent) if math.fsum(spent.values()) > 0 else {}
    return {
        name: msgspec.structs.replace(
            a, target=round(targets[name], 4), actual=_rounded(actual.get(name))
        )
        for name, a in planned.items()
    }


def _rounded(share: float | None) -> float | None:
    return None if share is None else round(share, 4)


def games_per_hour(series: list[tuple[float, int]]) -> float:
    if len(series) < 2 or series[-1][0] <= series[0][0]:
        return 0.0
    (t0, n0), (t1, n1) = series[0], series[-1]
    return (n1 - n0) * 3600.0 / (t1 - t0)


class SchedulerConfig(msgspec.Struct, frozen=True):
    node_id: str
    loop: LoopConfig = LoopConfig()
    effects: EffectSettings = EffectSettings()
    effects_by_game: dict[str, EffectSettings] = {}  # a configuration's own (`--config`)
    tick_s: float = 1.0
    budget: EvalBudget = EvalBudget()
    jobs: JobSettings = JobSettings()
    train_jobs: JobSettings = JobSettings(ack_wait_s=60.0)
    stranded_after_s: float = 60.0  # a tier without a live worker this long: its jobs move


async def training_phase(bus: Bus, game: str, state: GameState) -> TrainingPhase | None:
    """The running training's last progress report (None before its first)."""
    if not state.training_in_progress:
        return None
    progress = await last_train_progress(bus, game)
    if progress is None or progress.job_id != train_job_id(game, state.trainings):
        return None
    return TrainingPhase(
        step=progress.step,
        steps=progress.steps,
        policy_loss=progress.policy_loss,
        value_loss=progress.value_loss,
        samples_per_s=progress.samples_per_s,
    )


class SelfplayWork(NamedTuple):
    seconds: dict[str, float]  # worker-seconds so far, per game
    spent: dict[str, float]  # ... over the allocation's window
    job_s: dict[str, float]  # estimated worker-seconds of one job


class LostLeadership(Exception):
    pass


class MasterLoop:
    """One term of leadership: ticks until the lease or a fenced write says otherwise."""

    def __init__(self, bus: Bus, cfg: SchedulerConfig, term: int) -> None:
        self.bus, self.cfg, self.term = bus, cfg, term
        self.effects = Effects(bus, cfg.loop, cfg.effects, term, cfg.effects_by_game)
        self.skips = SkipLog()  # results that count for nothing, dead-lettered once each
        self.background = BackgroundEval(
            bus,
            loop=cfg.loop,
            settings=cfg.effects,
            budget=cfg.budget,
            term=term,
            skips=self.skips,
            by_game=cfg.effects_by_game,
        )
        self.cpu = CpuMeter(cfg.budget.window_s)
        self.stranding = Stranding(cfg.stranded_after_s)
        self.match_list: list[str] | bool | None = False  # last written (False: none yet)

    async def tick(self) -> int:
        """Observe, decide, act, record; returns how many actions were carried out."""
        record, revision = await read_termed(self.bus, names.LOOP_BUCKET, STATE_KEY, LoopRecord)
        if record is not None and record.term > self.term:
            raise StaleTerm(f"loop state already written by term {record.term}")
        state = record.state if record else LoopState()
        now = self.bus.clock.time()
        nodes = await accepted_nodes(self.bus, now)
        snapshot = await observe(self.bus, state, self.cfg.loop, nodes, self.skips)
        self.cpu.update(cpu_readings(nodes), now)
        used = self.cpu.used()
        share = evaluation_share(used)
        progress = dict(record.progress) if record else {}
        planned = allocate(self.weights(), progress, now)
        work = self.selfplay_work(record, nodes, snapshot, now)
        snapshot = msgspec.structs.replace(
            snapshot,
            selfplay_shares={name: a.target for name, a in planned.items()},
            selfplay_spent=work.spent,
            selfplay_job_s=work.job_s,
        )
        actions = next_actions(state, snapshot, self.cfg.loop)
        await self.check_still_leader()
        for kind, capacity in (
            ("selfplay", snapshot.selfplay_tiers),
            ("train", snapshot.train_tiers),
        ):
            await rehome(self.bus, kind, self.stranding.stranded(kind, capacity, now))
        for action in actions:
            await self.effects.carry_out(action, state)
            progress = learned(progress, action, state.game(action.game), now)
            state = apply(state, action)
        gauntlets = await self.gauntlets(state)
        state = await self.background.step(state, gauntlets, snapshot.eval_workers, share)
        await self.skips.dead_letter(self.bus)
        ticks = (record.ticks if record else 0) + 1
        totals = {name: g.games_total for name, g in snapshot.games.items()}
        counts = sampled(record.game_counts if record else {}, now, totals)
        update = LoopRecord(
            term=self.term,
            state=state,
            updated_at=now,
            ticks=ticks,
            game_counts=counts,
            phases=await self.phases(state, snapshot, gauntlets, record),
            evaluation_share=None if share is None else round(share, 4),
            cpu_s={name: round(seconds, 2) for name, seconds in used.items()},
            cpu_window_s=self.cfg.budget.window_s,
            selfplay_seconds={name: round(s, 1) for name, s in work.seconds.items()},
            selfplay_time=sampled(record.selfplay_time if record else {}, now, work.seconds),
            progress=progress,
            allocation=allocation_shown(planned, state, work.spent),
        )
        await cas_put(self.bus, names.LOOP_BUCKET, STATE_KEY, update, revision)
        return len(actions)

    def selfplay_work(
        self, record: LoopRecord | None, nodes: list[NodeStatus], snapshot: Snapshot, now: float
    ) -> SelfplayWork:
        """Worker time per game: accrued since the last tick from what the self-play workers
        say they are doing, over the allocation's window, and per job."""
        doing = [
            s.doing
            for node in nodes
            for s in node.services
            if s.alive and names.service_kind(s.name) == "selfplay"
        ]
        since = now - (record.updated_at if record else now)
        seconds = accrued(record.selfplay_seconds if record else {}, busy_workers(doing), since)
        start = now - ACTUAL_WINDOW_S
        series = record.selfplay_time if record else {}
        spent = {g: spent_since([*series.get(g, []), (now, s)], start) for g, s in seconds.items()}
        counts = record.game_counts if record else {}
        made = {
            name: round(spent_since([*counts.get(name, []), (now, g.games_total)], start))
            for name, g in snapshot.games.items()
        }
        per_job = {name: self.cfg.loop.for_game(name).selfplay_games_per_job for name in made}
        return SelfplayWork(seconds, spent, job_seconds(spent, made, per_job))

    def weights(self) -> dict[str, float]:
        return {name: self.cfg.loop.weights.get(name, 1.0) for name in self.cfg.loop.games}

    async def name_match_evaluators(self, chosen: list[str] | None, now: float) -> None:
        """Tell evaluators who plays promotion matches, when that changes."""
        if chosen == self.match_list:
            return
        named = MatchEvaluators(evaluators=chosen, term=self.term, at=now)
        await self.bus.write(names.REGISTRY_BUCKET, names.MATCH_EVALUATORS_KEY, encode(named))
        self.match_list = chosen

    async def gauntlets(self, state: LoopState) -> dict[str, GauntletPhase]:
        found = {}
        for name in self.cfg.loop.games:
            phase = await self.background.gauntlet_phase(name, state)
            if phase is not None:
                found[name] = phase
        return found

    async def phases(
        self,
        state: LoopState,
        snapshot: Snapshot,
        gauntlets: dict[str, GauntletPhase],
        record: LoopRecord | None,
    ) -> dict[str, Phase]:
        before = record.phases if record else {}
        return {
            name: phase_of(
                state.game(name),
                snapshot.game(name),
                self.cfg.loop.for_game(name),
                await training_phase(self.bus, name, state.game(name)),
                gauntlets.get(name),
                before.get(name),
            )
            for name in self.cfg.loop.games
        }

    async def check_still_leader(self) -> None:
        holder = await current_holder(self.bus)
        if holder is None or holder.term != self.term:
            raise LostLeadership(f"lease now {holder}")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                acted = await self.tick()
            except (StaleTerm, LostLeadership):
                raise
            except (BusError, BadMessage) as e:
                log.warning("tick failed: %s", e, extra={"field": getattr(e, "field", "")})
                acted = 0
            if not acted:
                await wait_or_stop(stop, self.cfg.tick_s)


async def lead_while_holding(
    bus: Bus, cfg: SchedulerConfig, term: int, stop: asyncio.Event
) -> None:
    """Run the master loop and rating games for one term; returns when leadership ends."""
    loop = MasterLoop(bus, cfg, term)
    term_over = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(handle_dead_letters(bus, term_over), name="dead-letters")
        try:
            await loop.run(stop)
        except (StaleTerm, LostLeadership) as e:
            log.warning("term %d over: %s", term, e)
        finally:
            term_over.set()


async def wait_for_leadership(
    bus: Bus, node_id: str, changes: KeyChanges, stop: asyncio.Event
) -> Holder | None:
    """Block until this node holds the lease; None if stopped first."""
    while not stop.is_set():
        try:
            holder = await current_holder(bus)
        except BusError as e:
            log.warning("cannot read lease: %s", e)
            holder = None
        if holder is not None and holder.node == node_id:
            return holder
        await changes.wait(stop, bus.clock.monotonic() + 1.0)
    return None


async def run(bus: Bus, cfg: SchedulerConfig, stop: asyncio.Event) -> None:
    await bus.provision()
    await ensure_consumer(bus, "selfplay", cfg.jobs, migrate=True)
    await ensure_consumer(bus, "eval", cfg.jobs, migrate=True)
    await ensure_consumer(bus, "train", cfg.train_jobs, migrate=True)
    changes = KeyChanges(clock=bus.clock)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(changes.follow(bus), name="lease-watch")
        try:
            while not stop.is_set():
                holder = await wait_for_leadership(bus, cfg.node_id, changes, stop)
                if holder is None:
                    break
                log.info("scheduling as leader", extra={"term": holder.term})
                await announce(bus, cfg.node_id)
                await lead_while_holding(bus, cfg, holder.term, stop)
                await wait_or_stop(stop, 0.5)
        finally:
            await changes.close()


def main(argv: list[str] | None = None) -> int:
    return service_main("scheduler", SchedulerConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
