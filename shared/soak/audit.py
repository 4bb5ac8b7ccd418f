"""The soak's end-of-run audit, read from the streams and consumers once the nodes have stopped:
acknowledged games against the games stream, checkpoints' replay windows, jobs, promotions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from schemas import names
from schemas.codec import decode
from schemas.jobs import ModelMeta
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.soak.record import GameAudit, JobCounts


async def job_counts(bus: Bus, kind: str, submitted_ids: Collection[str]) -> JobCounts:
    """One job kind's consumer read against the distinct job ids seen submitted."""
    infos = [await bus.consumer_counts(names.JOBS_STREAM, c) for c in names.job_consumers(kind)]
    dead = sum((await bus.subject_counts(names.DLQ_STREAM, names.dlq_filter(kind))).values())
    submitted = len(submitted_ids)
    deliveries = sum(i.delivered for i in infos)
    pending = sum(i.pending for i in infos)
    in_flight = sum(i.ack_pending for i in infos)
    redelivered = max(0, deliveries - (submitted - pending))
    completed = max(0, submitted - pending - in_flight - dead)
    return JobCounts(kind, submitted, deliveries, redelivered, pending, in_flight, dead, completed)


async def game_audit(bus: Bus, acknowledged: Collection[int]) -> GameAudit:
    """Acknowledged games sequences looked up in the games stream, ids checked for duplicates,
    and every checkpoint's window checked against the distinct ids stored in its range."""
    msgs = await bus.read_all(names.GAMES_STREAM, names.games_subject(names.ANY))
    ids_by_seq = {m.seq: m.msg_id for m in msgs}
    counts = Counter(ids_by_seq.values())
    metas = await checkpoints(bus)
    return GameAudit(
        acknowledged=len(acknowledged),
        stored=len(ids_by_seq),
        lost=sorted(set(acknowledged) - set(ids_by_seq)),
        duplicated=sorted(game_id for game_id, n in counts.items() if n > 1),
        trained_twice=sum(reused(meta, ids_by_seq) for meta in metas),
        checkpoints_checked=len(metas),
    )


async def checkpoints(bus: Bus) -> list[ModelMeta]:
    """Every checkpoint's metadata, read from the registry's stream (every key is kept)."""
    subject = names.kv_subject(names.REGISTRY_BUCKET, names.model_key(names.ANY, names.ANY))
    msgs = await bus.read_all(names.kv_stream(names.REGISTRY_BUCKET), subject)
    metas = []
    for msg in msgs:
        try:
            metas.append(decode(msg.data, ModelMeta, subject=msg.subject))
        except Exception:  # unreadable however it fails: not a checkpoint to audit
            continue
    return metas


def reused(meta: ModelMeta, ids_by_seq: dict[int, str]) -> int:
    """Games the window counted beyond the distinct ids stored in its sequence range."""
    if meta.window_games == 0:
        return 0
    window = {
        ids_by_seq[seq]
        for seq in range(meta.window_first_seq, meta.window_last_seq + 1)
        if seq in ids_by_seq
    }
    return max(0, meta.window_games - len(window))


async def promotions(bus: Bus) -> int:
    """Models promoted during the run (0 if the events stream cannot be read)."""
    try:
        counts = await bus.subject_counts(
            names.EVENTS_STREAM, names.model_event_subject("promoted")
        )
    except BusError:
        return 0
    return sum(counts.values())
