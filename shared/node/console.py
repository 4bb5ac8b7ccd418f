"""The `conclave up` console: leader and model events as they happen, training progress (also
appended to `<data>/run/<game>/scalars.csv`), and a progress line."""

from __future__ import annotations

import asyncio
import csv
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import LeaderEvent
from schemas.jobs import ModelEvent, ModelMeta, TrainProgress
from services.scheduler import STATE_KEY, LoopRecord
from shared.archive.layout import check_sha256
from shared.bus.client import BusConfig
from shared.bus.errors import BusError
from shared.bus.message import Message
from shared.bus.ports import Bus
from shared.lease.fencing import read_termed
from shared.loop.observe import count, train_job_id
from shared.loop.ratingjobs import game_ratings
from shared.loop.ratings import Rating
from shared.runtime.service import connect_until, wait_or_stop
from shared.work.models import ModelStore

log = logging.getLogger("conclave.console")
M = TypeVar("M", LeaderEvent, ModelEvent, TrainProgress)


class Console:
    def __init__(
        self, bus: BusConfig, data: Path, game: str, generations: int | None, every_s: float
    ) -> None:
        self.bus_config, self.data, self.game = bus, data, game
        self.generations, self.every_s = generations, every_s
        self.last_decision = "-"
        self.started = time.monotonic()
        self.done = False
        self.training_said = -float("inf")  # when the last training progress line was printed

    @property
    def scalars_path(self) -> Path:
        return self.data / "run" / self.game / "scalars.csv"

    async def run(
        self, stop: asyncio.Event, training: bool, finished: asyncio.Event | None = None
    ) -> None:
        """Until `stop`; `finished` (else `stop`) is set once `generations` were promoted."""
        bus = await connect_until(self.bus_config, stop)
        if bus is None:
            return
        try:
            await bus.subscribe(names.leader_event_subject("*"), self._leader_event)
            if training:
                done = stop if finished is None else finished
                await bus.subscribe(names.model_event_subject("*"), self._model_handler(bus, done))
                await bus.subscribe(names.train_progress_subject(self.game), self._train_progress)
                await self._progress(bus, stop)
                await self._write_ratings(bus)
            else:
                await stop.wait()
        finally:
            await bus.close()

    async def _leader_event(self, msg: Message) -> None:
        event = _decoded(msg, LeaderEvent)
        if event is None:
            return
        _say(f"leader {event.kind}: node {event.node}, term {event.term} {event.reason}")

    async def _train_progress(self, msg: Message) -> None:
        report = _decoded(msg, TrainProgress)
        if report is None:
            return
        now = time.monotonic()
        if report.done or now - self.training_said >= self.every_s:
            self.training_said = now
            _say(training_line(report))
        try:
            await asyncio.to_thread(append_scalars, self.scalars_path, report)
        except OSError as e:
            log.warning("training progress not logged to %s: %s", self.scalars_path, e)

    def _model_handler(self, bus: Bus, stop: asyncio.Event) -> Callable[[Message], Awaitable[None]]:
        async def on_event(msg: Message) -> None:
            event = _decoded(msg, ModelEvent)
            if event is None or event.game != self.game:
                return
            if event.kind != "candidate":
                self.last_decision = f"gen {event.generation} {event.kind}"
            _say(
                f"{event.game} generation {event.generation} {event.kind} "
                f"({event.sha256[:12]}) {event.detail}"
            )
            if event.kind == "promoted":
                await self._save_checkpoint(bus, event)
                if self.generations is not None and event.generation >= self.generations:
                    self.done = True
                    stop.set()

        return on_event

    async def _save_checkpoint(self, bus: Bus, event: ModelEvent) -> None:
        run = self.data / "run" / event.game
        try:
            digest = check_sha256(event.sha256)  # it names a cache file: no path of a node's choice
            blob = await ModelStore(bus, self.data / "cache" / "console").read(digest)
            path = run / f"gen{event.generation:03d}-{digest[:12]}.ckpt"
            await asyncio.to_thread(_write, path, blob)
        except (BusError, OSError, ValueError) as e:
            log.warning("checkpoint of generation %d not saved: %s", event.generation, e)

    async def _progress(self, bus: Bus, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await wait_or_stop(stop, self.every_s):
                break
            try:
                _say(await self.progress_line(bus))
            except Exception as e:  # whatever a node wrote, the console goes on
                log.warning("progress not read: %r", e)

    async def progress_line(self, bus: Bus) -> str:
        record, _ = await read_termed(bus, names.LOOP_BUCKET, STATE_KEY, LoopRecord)
        state = record.state.game(self.game) if record else None
        games = await count(bus, names.GAMES_STREAM, names.games_subject(self.game))
        loss = await self._last_loss(bus, state.trainings if state else 0)
        ratings, _ = await game_ratings(bus, self.game)
        generation = state.generation if state else -1
        elo = _elo(ratings.get(f"gen{generation}"))
        minutes = (time.monotonic() - self.started) / 60
        return (
            f"[{minutes:5.1f} min] {self.game}: generation {generation}, {games} games, "
            f"loss {loss}, last decision {self.last_decision}, best Elo {elo}"
        )

    async def _last_loss(self, bus: Bus, trainings: int) -> str:
        if trainings < 1:
            return "-"
        for training in (trainings, trainings - 1):
            key = names.trained_key(train_job_id(self.game, training))
            entry = await bus.last(names.REGISTRY_BUCKET, key)
            if entry.value is not None:
                meta = decode(entry.value, ModelMeta, subject=key)
                if meta.policy_loss is None or meta.value_loss is None:
                    continue
                return f"{meta.policy_loss:.3f}+{meta.value_loss:.3f}"
        return "-"

    async def _write_ratings(self, bus: Bus) -> None:
        try:
            ratings, _ = await game_ratings(bus, self.game)
        except Exception as e:  # whatever a node wrote, `conclave up` ends cleanly
            log.warning("ratings not written: %r", e)
            return
        table = ratings_markdown(ratings)
        path = self.data / "run" / self.game / "ratings.md"
        await asyncio.to_thread(_write, path, table.encode())
        await asyncio.to_thread(
            _write, path.with_suffix(".json"), msgspec.json.format(msgspec.json.encode(ratings))
        )
        _say(f"ratings table: {path}\n{table}")


async def run_summary(bus: Bus, game: str, data: Path) -> str:
    """Whether this data directory continues a run of `game` (and from where) or starts one."""
    record, _ = await read_termed(bus, names.LOOP_BUCKET, STATE_KEY, LoopRecord)
    state = record.state.games.get(game) if record else None
    if state is None:
        return f"new run: {game}, data dir {data}"
    games = await count(bus, names.GAMES_STREAM, names.games_subject(game))
    where = f"generation {state.generation}" if state.generation >= 0 else "before generation 0"
    return f"resuming {game} from {where} ({games:,} games, data dir {data})"


def training_line(report: TrainProgress) -> str:
    end = ", done" if report.done else ""
    return (
        f"{report.game} training gen {report.generation}: step {report.step}/{report.steps}{end}, "
        f"loss {_losses(report.policy_loss, report.value_loss)}, "
        f"{report.samples_per_s:.0f} samples/s"
    )


SCALARS_HEADER = (
    "time",
    "generation",
    "step",
    "steps",
    "policy_loss",
    "value_loss",
    "samples_per_s",
)


def append_scalars(path: Path, report: TrainProgress) -> None:
    """Append one report to the run's scalar log (CSV), writing the header to a new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(SCALARS_HEADER)
        writer.writerow(
            [
                f"{report.at:.3f}",
                report.generation,
                report.step,
                report.steps,
                _csv_float(report.policy_loss),
                _csv_float(report.value_loss),
                f"{report.samples_per_s:.1f}",
            ]
        )


def _losses(policy: float | None, value: float | None) -> str:
    if policy is None and value is None:
        return "-"
    return "+".join("-" if x is None else f"{x:.3f}" for x in (policy, value))


def _csv_float(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def ratings_markdown(ratings: dict[str, Rating]) -> str:
    rows = sorted(ratings.items(), key=lambda kv: -kv[1].elo)
    lines = ["| player | Elo | 95% interval | games |", "|---|---:|---|---:|"]
    lines += [
        f"| {name} | {r.elo:+.0f} | [{r.lo:+.0f}, {r.hi:+.0f}] | {r.games} |" for name, r in rows
    ]
    return "\n".join(lines) + "\n"


def _elo(rating: Rating | None) -> str:
    if rating is None:
        return "-"
    return f"{rating.elo:+.0f} ± {(rating.hi - rating.lo) / 2:.0f}"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _decoded(msg: Message, kind: type[M]) -> M | None:
    """The message as `kind`, or None (logged) when it does not decode, whyever not."""
    try:
        return decode(msg.data, kind, subject=msg.subject)
    except BadMessage as e:
        log.warning("%s", e)
    except Exception as e:  # e.g. RecursionError on deep nesting: unreadable all the same
        log.warning("unreadable message on %r: %r", msg.subject, e)
    return None


def _say(text: str) -> None:
    print(text, flush=True)
