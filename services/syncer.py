"""syncer service: the durable copy in S3 (or a local directory) of games, models and registry.

One instance archives at a time (the `syncer` quorum lease, like the leader's, in buckets of its
own: `archive-lease` and its slots, which only the syncer writes). Games are read with a durable
consumer and acknowledged only after the shard holding them and its manifest are stored, so an
S3 outage delays the archive and loses nothing; ranges already archived are skipped after a
restart, so nothing is archived twice. All S3 work runs in threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.jobs import BestPointer, DeadLetter, ModelEvent
from services.scheduler import STATE_KEY, LoopRecord
from shared import archive
from shared.archive import S3Config, S3Store, Store
from shared.archive.layout import check_sha256
from shared.bus.consumers import WorkConsumer
from shared.bus.errors import BusError
from shared.bus.message import Message
from shared.bus.ports import Acks, Bus
from shared.learn.games import game_names
from shared.lease.fencing import read_termed
from shared.lease.holder import Contender, hold
from shared.lease.quorum import LeaseParams
from shared.loop.ratingjobs import game_ratings
from shared.runtime.once import Warn, WarnOnce
from shared.runtime.service import main as service_main
from shared.runtime.service import wait_or_stop
from shared.work.models import ModelError, ModelStore

log = logging.getLogger("conclave.syncer")

SYNCER_KEY = names.SYNCER_KEY
GAMES_CONSUMER = names.SYNCER_GAMES_CONSUMER
RESULTS_CONSUMER = names.SYNCER_RESULTS_CONSUMER
RESULTS_SUFFIX = "__results"  # a reserved suffix: no game name may end with it
MODELS_CONSUMER = names.SYNCER_MODELS_CONSUMER
# Dead letters: candidate events at dlq.model.<game>.candidate, game and result records whose
# subject names no archivable game at dlq.archive.unknown.<stream>
MODEL_DEAD_KIND = names.MODEL_DEAD_KIND
ARCHIVE_DEAD_KIND = names.ARCHIVE_DEAD_KIND


class SyncerConfig(msgspec.Struct, frozen=True):
    node_id: str
    cache_dir: str
    s3: S3Config | None = None
    local_dir: str | None = None  # used when no S3 bucket is configured
    shard_games: int = 256
    flush_s: float = 20.0
    ack_wait_s: float = 30.0  # above flush_s; a dead syncer's unacked games return this fast
    docs_every_s: float = 60.0
    lease: LeaseParams = LeaseParams(ttl_s=10, renew_every_s=3.0, margin_s=2.0, recheck_s=3.0)


class SyncStatus(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="conclave.sync_status.v1"
):
    """What `conclave status` shows about the archive (KV `registry/sync.status`)."""

    node: str
    target: str
    archived_through: dict[str, int]
    games_archived: int
    newest_model: str
    last_error: str
    last_error_at: float
    updated_at: float


def open_store(cfg: SyncerConfig) -> tuple[Store, str]:
    if cfg.s3 is not None:
        return S3Store(cfg.s3), f"s3://{cfg.s3.bucket}/{cfg.s3.prefix}"
    if cfg.local_dir is None:
        raise ValueError("SyncerConfig needs s3 or local_dir")
    return archive.LocalStore(Path(cfg.local_dir)), f"file://{cfg.local_dir}"


def games_name(subject: str) -> str:
    return subject.split(".")[1]


def results_name(subject: str) -> str:
    """Evaluation results are archived as shards of their own, beside the game's shards."""
    return f"{subject.split('.')[1]}{RESULTS_SUFFIX}"


class Archiver:
    def __init__(
        self,
        bus: Bus,
        cfg: SyncerConfig,
        store: Store,
        target: str,
        *,
        name_of: Callable[[str], str] = games_name,
        beside: Executor | None = None,
    ) -> None:
        self.bus, self.cfg, self.store, self.target = bus, cfg, store, target
        self.beside = beside  # uploads manifests beside their shards (`archive.store_shard`)
        self.name_of = name_of
        self.reports = name_of is games_name  # sync.status speaks for the games archive
        self.pending: dict[str, dict[int, Acks]] = defaultdict(dict)
        self.oldest: dict[str, float] = {}
        self.ranges: dict[str, list[tuple[int, int]]] = {}
        self.archived_through: dict[str, int] = {}
        self.games_archived = 0
        self.newest_model = ""
        self.last_error, self.last_error_at = "", 0.0
        self.warn_once = WarnOnce(log)  # the documents are re-read: their problems logged once

    async def ranges_of(self, game: str) -> list[tuple[int, int]]:
        if game not in self.ranges:
            self.ranges[game] = await asyncio.to_thread(archive.archived_ranges, self.store, game)
        return self.ranges[game]

    async def take(self, queued: Acks) -> None:
        """Buffer a game record, or ack it at once if an earlier run already archived it."""
        msg = queued.message
        game = self.name_of(msg.subject)
        try:
            archive.layout.check_game(game)
        except ValueError as e:
            reason = f"subject {msg.subject[:200]!r}: {e}"
            await dead_letter(self.bus, queued, reason, where=msg.stream.lower())
            return
        if archive.covers(await self.ranges_of(game), msg.seq):
            await queued.ack()
            return
        self.pending[game][msg.seq] = queued
        self.oldest.setdefault(game, time.monotonic())

    def due(self) -> list[str]:
        now = time.monotonic()
        return [
            game
            for game, msgs in self.pending.items()
            if msgs
            and (
                len(msgs) >= self.cfg.shard_games
                or now - self.oldest.get(game, now) >= self.cfg.flush_s
            )
        ]

    async def flush(self, game: str) -> bool:
        """Store the buffered games of `game` as one shard; ack them only once it is stored."""
        msgs = self.pending[game]
        seqs = sorted(msgs)
        records = [(s, msgs[s].message.data) for s in seqs]
        ids = [msgs[s].message.msg_id or f"seq-{s}" for s in seqs]
        try:
            manifest = await asyncio.to_thread(
                archive.write_shard, self.store, game, records, game_ids=ids, beside=self.beside
            )
        except archive.ArchiveError as e:
            self.failed(f"shard of {game}: {e}")
            await self.hold(msgs.values())
            return False
        for s in seqs:
            await msgs[s].ack()
        await self.bus.flush()
        self.ranges.setdefault(game, []).append((manifest.first_seq, manifest.last_seq))
        self.archived_through[game] = max(self.archived_through.get(game, 0), seqs[-1])
        self.games_archived += len(seqs)
        del self.pending[game]
        self.oldest.pop(game, None)
        return True

    async def hold(self, msgs: Iterable[Acks]) -> None:
        # While S3 is down the games stay unacknowledged; keep them from being redelivered.
        for msg in msgs:
            with contextlib.suppress(BusError):
                await msg.in_progress()

    def failed(self, what: str) -> None:
        self.last_error, self.last_error_at = what, time.time()
        log.warning("archive: %s", what)

    async def report(self) -> None:
        if not self.reports:
            return
        status = SyncStatus(
            node=self.cfg.node_id,
            target=self.target,
            archived_through=dict(self.archived_through),
            games_archived=self.games_archived,
            newest_model=self.newest_model,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            updated_at=time.time(),
        )
        try:
            await self.bus.write(names.REGISTRY_BUCKET, names.SYNC_STATUS_KEY, encode(status))
        except BusError as e:
            log.warning("sync status not written: %s", e)

    # -- models and documents --------------------------------------------------------------------

    async def archive_model(self, models: ModelStore, event: ModelEvent) -> None:
        path = await models.path(event.sha256)  # streamed from the file: memory stays bounded
        meta = await self.bus.last(names.REGISTRY_BUCKET, names.model_key(event.game, event.sha256))
        await asyncio.to_thread(
            archive.put_model_file, self.store, event.game, event.sha256, path, meta.value or b"{}"
        )
        self.newest_model = event.sha256

    async def archive_documents(self, games: list[str]) -> None:
        """Each game's best pointer, ratings and promotions; one game's failure (an unreadable
        pointer, an archive error) is reported and the next game is still archived."""
        for game in games:
            try:
                await self.archive_game_documents(game)
            except Exception as e:  # whatever the registry holds, the syncer goes on
                self.failed(f"documents of {game!r}: {e!r}")

    async def archive_game_documents(self, game: str) -> None:
        best = await self.bus.last(names.REGISTRY_BUCKET, names.best_key(game))
        if best.value is not None:
            pointer = decode(best.value, BestPointer, subject=names.best_key(game))
            await asyncio.to_thread(
                archive.put_json, self.store, archive.layout.registry_best_key(game), pointer
            )
        ratings, _ = await game_ratings(self.bus, game, self.warn_once)
        await asyncio.to_thread(
            archive.put_json, self.store, archive.layout.ratings_key(game), ratings
        )
        history = await promotions(self.bus, game, self.warn_once)
        await asyncio.to_thread(
            archive.put_json, self.store, archive.layout.registry_history_key(game), history
        )


async def promotions(bus: Bus, game: str, warn: Warn) -> list[ModelEvent]:
    """`game`'s promotion events; an unreadable one is skipped and told to `warn`."""
    events = []
    for msg in await bus.read_all(names.EVENTS_STREAM, names.model_event_subject("promoted")):
        try:
            events.append(decode(msg.data, ModelEvent, subject=msg.subject))
        except Exception as e:  # BadMessage, RecursionError: skipped all the same
            warn(f"promotion event #{msg.seq} skipped: {unreadable_reason(e)}")
    return [e for e in events if e.game == game]


async def games_loop(bus: Bus, arch: Archiver, me: Contender, stop: asyncio.Event) -> None:
    every_game = names.games_subject(names.ANY)
    await shard_loop(bus, arch, me, stop, names.GAMES_STREAM, every_game, GAMES_CONSUMER)


async def results_loop(bus: Bus, arch: Archiver, me: Contender, stop: asyncio.Event) -> None:
    every_result = names.all_results()
    await shard_loop(bus, arch, me, stop, names.RESULTS_STREAM, every_result, RESULTS_CONSUMER)


async def shard_loop(
    bus: Bus,
    arch: Archiver,
    me: Contender,
    stop: asyncio.Event,
    stream: str,
    subjects: str,
    durable: str,
) -> None:
    """Archive a stream in shards; a message is acked only once its shard is stored."""
    consumer = WorkConsumer(
        durable,
        subjects,
        ack_wait_s=arch.cfg.ack_wait_s,
        max_ack_pending=20 * arch.cfg.shard_games,
    )
    sub = await bus.pull(stream, subjects, consumer)
    while not stop.is_set():
        if me.term is None:
            await wait_or_stop(stop, 1.0)
            continue
        for msg in await sub.fetch(arch.cfg.shard_games, 1.0):
            await arch.take(msg)
        for game in arch.due():
            if not await arch.flush(game):
                await wait_or_stop(stop, 2.0)
        await arch.report()


async def models_loop(bus: Bus, arch: Archiver, me: Contender, stop: asyncio.Event) -> None:
    models = ModelStore(bus, Path(arch.cfg.cache_dir))
    subject = names.model_event_subject("candidate")
    sub = await bus.pull(names.EVENTS_STREAM, subject, MODELS_CONSUMER)
    last_docs = 0.0
    while not stop.is_set():
        if me.term is None:
            await wait_or_stop(stop, 1.0)
            continue
        for msg in await sub.fetch(8, 1.0):
            await archive_one_model(arch, models, msg)
        if time.monotonic() - last_docs >= arch.cfg.docs_every_s:
            last_docs = time.monotonic()
            await archive_documents_quietly(bus, arch)


async def archive_one_model(arch: Archiver, models: ModelStore, msg: Acks) -> None:
    """Archive one candidate's checkpoint; an event that is unreadable, invalid or names a
    model that is not (or not intact) in the object store is dead-lettered and acked, so it
    never holds up the ones behind it nor crashes the syncer."""
    try:
        event = candidate_event(msg.message)
    except Exception as e:  # BadMessage, RecursionError...: whatever it is, it is unusable
        await dead_letter(arch.bus, msg, unreadable_reason(e), MODEL_DEAD_KIND)
        return
    try:
        await arch.archive_model(models, event)
    except ModelError as e:
        await dead_letter(arch.bus, msg, f"field $.sha256: {e}", MODEL_DEAD_KIND, event.game)
        return
    except (archive.ArchiveError, BusError) as e:
        arch.failed(f"model {event.sha256[:12]}: {e}")
        await msg.nak(5)
        return
    await msg.ack()


def candidate_event(msg: Message) -> ModelEvent:
    """The event in `msg`; BadMessage naming the field if it does not decode or names no known
    game or no well-formed digest (both become keys and paths)."""
    event = decode(msg.data, ModelEvent, subject=msg.subject)
    if event.game not in game_names():
        known = ", ".join(game_names())
        raise BadMessage(msg.subject, "$.game", f"unknown game {event.game[:80]!r}; known: {known}")
    try:
        check_sha256(event.sha256)
    except ValueError as e:
        raise BadMessage(msg.subject, "$.sha256", str(e)[:200]) from e
    return event


def unreadable_reason(e: Exception) -> str:
    if isinstance(e, BadMessage):
        return f"field {e.field}: {e.reason}"[:2000]
    return f"field $: {e!r}"[:2000]


async def dead_letter(
    bus: Bus,
    queued: Acks,
    reason: str,
    kind: str = ARCHIVE_DEAD_KIND,
    game: str = "unknown",
    where: str = "candidate",
) -> None:
    """Move a message the syncer cannot use to the DLQ with `reason`, then ack it; if the DLQ
    cannot take it, it is acked all the same (logged with the reason): it must not come back."""
    msg = queued.message
    seq, stream = msg.seq, msg.stream
    log.error("%s #%d dead-lettered: %s", stream, seq, reason)
    letter = DeadLetter(
        kind=kind,
        job_id="",
        stream_seq=seq,
        deliveries=msg.num_delivered,
        reason=reason,
        job=msg.data[:65536],
        at=time.time(),
    )
    subject = names.dlq_subject(kind, _token_or(game, "unknown"), where)
    try:
        await bus.publish_durable(subject, encode(letter), msg_id=f"dlq-syncer-{stream}-{seq}")
    except BusError as e:
        log.error("%s #%d not dead-lettered (%s): acked anyway", stream, seq, e)
    with contextlib.suppress(BusError):
        await queued.ack()


def _token_or(value: str, fallback: str) -> str:
    try:
        return names.check_token(value, "game")
    except names.BadName:
        return fallback


async def archive_documents_quietly(bus: Bus, arch: Archiver) -> None:
    try:
        record, _ = await read_termed(bus, names.LOOP_BUCKET, STATE_KEY, LoopRecord)
    except (BusError, BadMessage) as e:
        arch.failed(f"documents: {e}")
        return
    await arch.archive_documents(sorted(record.state.games) if record else [])


async def run(bus: Bus, cfg: SyncerConfig, stop: asyncio.Event) -> None:
    await bus.provision()
    store, target = open_store(cfg)
    with ThreadPoolExecutor(2, thread_name_prefix="archive-manifest") as beside:
        await archive_under_lease(bus, cfg, store, target, beside, stop)


async def archive_under_lease(
    bus: Bus, cfg: SyncerConfig, store: Store, target: str, beside: Executor, stop: asyncio.Event
) -> None:
    arch = Archiver(bus, cfg, store, target, beside=beside)
    me = Contender(
        bus,
        cfg.node_id,
        cfg.lease,
        key=SYNCER_KEY,
        register_bucket=names.ARCHIVE_LEASE_BUCKET,
        announce=False,
    )
    results = Archiver(bus, cfg, store, target, name_of=results_name, beside=beside)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(games_loop(bus, arch, me, stop), name="games")
        tg.create_task(results_loop(bus, results, me, stop), name="results")
        tg.create_task(models_loop(bus, arch, me, stop), name="models")
        await hold(me, stop)


def main(argv: list[str] | None = None) -> int:
    return service_main("syncer", SyncerConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
