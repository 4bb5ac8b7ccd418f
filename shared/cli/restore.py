"""`conclave restore --from s3://BUCKET/PREFIX | DIR`: bring an archive back into a fresh cluster.

Restores, per game: every model (verified against its digest; a corrupt one is reported and
skipped, never loaded), its metadata, the best pointer, the promotion history, and the newest
archived games (so the trainer's replay window starts full). It then writes a loop state at the
best generation, so the master loop continues with the next one. Pointers and state are written
with term 0: any leader of the new cluster supersedes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import msgspec

from schemas import names
from schemas.codec import decode, encode
from schemas.jobs import BestPointer, EvalJob, EvalResult, ModelEvent
from services.scheduler import STATE_KEY, LoopRecord
from services.syncer import RESULTS_SUFFIX
from shared import archive
from shared.archive import S3Config, S3Store, Store
from shared.bus.client import BusConfig, NatsBus
from shared.bus.ports import Bus
from shared.loop.backgroundeval import next_rating_job
from shared.loop.policy import GameState, LoopState
from shared.loop.ratingjobs import issued_jobs
from shared.work.models import ModelStore

log = logging.getLogger("conclave.restore")


class RestoreReport(msgspec.Struct):
    game: str
    models: int = 0
    corrupt: list[str] = []
    best_generation: int = -1
    promotions: int = 0
    games: int = 0
    results: int = 0


def open_source(source: str, endpoint: str | None) -> Store:
    if source.startswith("s3://"):
        bucket, _, prefix = source.removeprefix("s3://").partition("/")
        cfg = S3Config(bucket=bucket, prefix=prefix.strip("/") or "conclave", endpoint_url=endpoint)
        return S3Store(cfg)
    return archive.LocalStore(Path(source.removeprefix("file://")))


def archived_games(store: Store) -> list[str]:
    keys = store.list("registry/")
    return sorted({key.split("/")[1] for key in keys if key.count("/") >= 2})


async def restore_game(
    bus: Bus, store: Store, game: str, cache: Path, window: int
) -> RestoreReport:
    report = RestoreReport(game)
    await restore_models(bus, store, game, cache, report)
    best = await restore_best(bus, store, game)
    report.best_generation = best.generation if best else -1
    report.promotions = await restore_history(bus, store, game)
    report.games = await restore_games(bus, store, game, window)
    report.results = await restore_results(bus, store, game, report.corrupt)
    if best is not None:
        rated = await issued_jobs(bus, game, "r")
        state = GameState(
            generation=best.generation,
            best=best.sha256,
            rating_jobs=next_rating_job(game, rated),
        )
        record = LoopRecord(term=0, state=LoopState({game: state}), updated_at=time.time())
        await bus.write(names.LOOP_BUCKET, STATE_KEY, encode(record))
    return report


async def restore_models(
    bus: Bus, store: Store, game: str, cache: Path, report: RestoreReport
) -> None:
    models = ModelStore(bus, cache)
    for sha in await asyncio.to_thread(archive.list_models, store, game):
        try:
            data = await asyncio.to_thread(archive.get_model, store, game, sha)
            meta = await asyncio.to_thread(archive.get_model_meta, store, game, sha)
        except archive.CorruptArchive as e:
            report.corrupt.append(str(e))
            log.error("not restored: %s", e)
            continue
        await models.put(data)
        await bus.write(names.REGISTRY_BUCKET, names.model_key(game, sha), meta)
        report.models += 1


async def restore_best(bus: Bus, store: Store, game: str) -> BestPointer | None:
    key = archive.layout.registry_best_key(game)
    try:
        best = await asyncio.to_thread(archive.get_json, store, key, BestPointer)
    except archive.ArchiveNotFound:
        return None
    fresh = msgspec.structs.replace(best, term=0, reason=f"restored ({best.reason})")
    await bus.write(names.REGISTRY_BUCKET, names.best_key(game), encode(fresh))
    return best


async def restore_history(bus: Bus, store: Store, game: str) -> int:
    key = archive.layout.registry_history_key(game)
    try:
        events = await asyncio.to_thread(archive.get_json, store, key, list[ModelEvent])
    except archive.ArchiveNotFound:
        return 0
    for event in events:
        msg_id = f"promoted-{event.game}-{event.generation}-{event.sha256[:16]}"
        await bus.publish_durable(names.model_event_subject("promoted"), encode(event), msg_id)
    return len(events)


async def restore_games(bus: Bus, store: Store, game: str, window: int) -> int:
    """Republish the newest `window` archived games (verified), oldest first."""
    manifests = await asyncio.to_thread(archive.list_manifests, store, game)
    chosen, total = [], 0
    for manifest in reversed(manifests):
        if total >= window:
            break
        chosen.append(manifest)
        total += manifest.count
    seen: set[str] = set()  # two syncers in a lease gap may have archived a game twice
    for manifest in reversed(chosen):
        records = await asyncio.to_thread(archive.read_shard, store, game, manifest)
        for game_id, data in zip(manifest.game_ids, records, strict=True):
            if game_id not in seen:
                seen.add(game_id)
                await bus.publish_durable(names.games_subject(game), data, msg_id=game_id)
    return len(seen)


async def restore_results(
    bus: Bus, store: Store, game: str, corrupt: list[str] | None = None
) -> int:
    """File every archived evaluation result again: the ratings pool comes back whole. A result
    that does not decode (the archive keeps what nodes wrote) is reported in `corrupt`, not
    filed."""
    shards = await asyncio.to_thread(
        lambda: list(archive.restore_shards(store, f"{game}{RESULTS_SUFFIX}"))
    )
    seen: set[str] = set()
    filed = 0
    for manifest, records in shards:
        for msg_id, data in zip(manifest.game_ids, records, strict=True):
            if msg_id in seen:
                continue
            seen.add(msg_id)
            try:
                result = decode(data, EvalResult, subject=msg_id)
                group = result.group or "restored"
                subject = names.results_subject(game, group)
                owed = names.issued_key(game, group, result.job_id)
            except Exception as e:  # BadMessage, a group no subject takes: not restorable
                problem = f"result {msg_id[:80]!r} of {game}: {e}"[:500]
                log.error("not restored: %s", problem)
                if corrupt is not None:
                    corrupt.append(problem)
                continue
            # Results count only for jobs the leader issued: the restore issues them again.
            await bus.write(names.LOOP_BUCKET, owed, encode(issued_job(result, group)))
            await bus.publish_durable(subject, data, msg_id=msg_id)
            filed += 1
    return filed


def issued_job(result: EvalResult, group: str) -> EvalJob:
    """The job `result` answers, as the leader records an issued one."""
    games = result.wins_a + result.draws + result.wins_b
    return EvalJob(
        job_id=result.job_id,
        game=result.game,
        kind=result.kind,
        a=result.a,
        b=result.b,
        games=games,
        term=0,
        group=group,
    )


async def restore_main(
    cfg: BusConfig, source: str, endpoint: str | None, window: int, cache: Path
) -> int:
    store = open_source(source, endpoint)
    bus = await NatsBus.connect(cfg)
    try:
        await bus.provision()
        reports = [
            await restore_game(bus, store, game, cache, window)
            for game in await asyncio.to_thread(archived_games, store)
        ]
    finally:
        await bus.close()
    for r in reports:
        print(
            f"{r.game}: {r.models} models, best generation {r.best_generation}, "
            f"{r.promotions} promotions, {r.games} games and {r.results} results restored"
        )
        for problem in r.corrupt:
            print(f"  corrupt, not restored: {problem}")
    return 1 if any(r.corrupt for r in reports) else 0
