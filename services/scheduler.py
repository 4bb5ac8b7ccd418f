"""scheduler service: the master loop, run only on the node that holds the leader lease.

Each tick: observe (workers, queues, games, trainings, matches — all from durable state), decide
with the pure policy, carry the actions out idempotently (deterministic job ids, a CAS-protected
best pointer), then CAS the loop state in KV `loop` stamped with our term. A deposed leader's next
state write fails, so it stops; the new leader reads the same state and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from schemas import names
from schemas.codec import BadMessage
from shared.bus import Bus, BusError
from shared.compat import announce
from shared.fencing import StaleTerm, cas_put, read_termed
from shared.jobs import JobSettings, ensure_consumer, handle_dead_letters
from shared.leasewatch import Holder, KeyChanges, current_holder
from shared.loopeffects import Effects, EffectSettings
from shared.observe import observe
from shared.policy import LoopConfig, LoopState, apply, next_actions
from shared.ratingjobs import RatingScheduler
from shared.service import main as service_main
from shared.service import wait_or_stop

log = logging.getLogger("conclave.scheduler")

STATE_KEY = "state"


class LoopRecord(msgspec.Struct, frozen=True, tag_field="type", tag="conclave.loop.v1"):
    """The value of KV `loop/state`: the policy state plus the term that last wrote it."""

    term: int
    state: LoopState
    updated_at: float
    ticks: int = 0
    # Per game, (time, games so far) about once a minute for the last hour: games/hour in status.
    game_counts: dict[str, list[tuple[float, int]]] = {}


def sampled(
    counts: dict[str, list[tuple[float, int]]], now: float, totals: dict[str, int]
) -> dict[str, list[tuple[float, int]]]:
    """Add a sample per game if the last is a minute old; keep the last hour (61 samples)."""
    out = {}
    for game, total in totals.items():
        series = list(counts.get(game, []))
        if not series or now - series[-1][0] >= 60.0:
            series.append((now, total))
        out[game] = series[-61:]
    return out


def games_per_hour(series: list[tuple[float, int]]) -> float:
    if len(series) < 2 or series[-1][0] <= series[0][0]:
        return 0.0
    (t0, n0), (t1, n1) = series[0], series[-1]
    return (n1 - n0) * 3600.0 / (t1 - t0)


class SchedulerConfig(msgspec.Struct, frozen=True):
    node_id: str
    loop: LoopConfig = LoopConfig()
    effects: EffectSettings = EffectSettings()
    tick_s: float = 1.0
    rating_interval_s: float = 120.0
    jobs: JobSettings = JobSettings()
    train_jobs: JobSettings = JobSettings(ack_wait_s=60.0)


class LostLeadership(Exception):
    pass


class MasterLoop:
    """One term of leadership: ticks until the lease or a fenced write says otherwise."""

    def __init__(self, bus: Bus, cfg: SchedulerConfig, term: int) -> None:
        self.bus, self.cfg, self.term = bus, cfg, term
        self.effects = Effects(bus, cfg.loop, cfg.effects, term)

    async def tick(self) -> int:
        """Observe, decide, act, record; returns how many actions were carried out."""
        record, revision = await read_termed(self.bus, names.LOOP_BUCKET, STATE_KEY, LoopRecord)
        if record is not None and record.term > self.term:
            raise StaleTerm(f"loop state already written by term {record.term}")
        state = record.state if record else LoopState()
        snapshot = await observe(self.bus, state, self.cfg.loop)
        actions = next_actions(state, snapshot, self.cfg.loop)
        await self.check_still_leader()
        for action in actions:
            await self.effects.carry_out(action, state)
            state = apply(state, action)
        now = time.time()
        ticks = (record.ticks if record else 0) + 1
        totals = {name: g.games_total for name, g in snapshot.games.items()}
        counts = sampled(record.game_counts if record else {}, now, totals)
        await cas_put(
            self.bus,
            names.LOOP_BUCKET,
            STATE_KEY,
            LoopRecord(self.term, state, now, ticks, counts),
            revision,
        )
        return len(actions)

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
    ratings = RatingScheduler(bus, cfg.loop, cfg.effects, term, cfg.rating_interval_s)
    ratings.start()
    term_over = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(handle_dead_letters(bus, term_over), name="dead-letters")
            try:
                await loop.run(stop)
            except (StaleTerm, LostLeadership) as e:
                log.warning("term %d over: %s", term, e)
            finally:
                term_over.set()
    finally:
        ratings.shutdown()


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
        await changes.wait(stop, time.monotonic() + 1.0)
    return None


async def run(bus: Bus, cfg: SchedulerConfig, stop: asyncio.Event) -> None:
    await bus.provision()
    await ensure_consumer(bus, "selfplay", cfg.jobs)
    await ensure_consumer(bus, "eval", cfg.jobs)
    await ensure_consumer(bus, "train", cfg.train_jobs)
    changes = KeyChanges()
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
