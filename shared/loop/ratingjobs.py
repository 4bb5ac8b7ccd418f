"""The ratings pool: the evaluation results a game is owed, and the Bradley-Terry fit over them.

A stored result counts (match score, gauntlet score, ratings) only if the leader issued its job —
before submitting an evaluation job it writes it to KV `loop` under `issued.<game>.<group>.<job>`
— and it is the first stored result for that job that matches it: the same kind, game, group and
players, filed on the job's own subject, with counts summing to exactly the job's games. Anything
else is skipped with a reason naming the field, and the leader dead-letters it once (`SkipLog`).
Everything is read from durable state, so a new leader reaches the same verdicts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.jobs import DeadLetter, EvalJob, EvalResult, PlayerSpec
from shared.bus.ports import Streams
from shared.learn.games import seats_of
from shared.loop.ratings import PairResult, Rating, fit
from shared.runtime.once import Warn

log = logging.getLogger("conclave.ratingjobs")


class Stored(NamedTuple):
    """One message of the RESULTS stream."""

    seq: int
    subject: str
    data: bytes


@dataclass(frozen=True, kw_only=True)
class Skipped:
    """A stored result that counts for nothing, and why (naming the field at fault)."""

    seq: int
    subject: str
    job_id: str
    reason: str
    data: bytes


class Owed(NamedTuple):
    counted: list[EvalResult]
    skipped: list[Skipped]
    issued: dict[str, EvalJob]


def mismatch(result: EvalResult, subject: str, job: EvalJob | None) -> str | None:
    """Why `result`, stored on `subject`, is not the result `job` owes; None when it is."""
    if job is None:
        return f"job_id: {result.job_id!r} was never issued"
    for field in ("kind", "game", "group", "a", "b"):
        got, want = getattr(result, field), getattr(job, field)
        if got != want:
            return f"{field}: {got!r} differs from the issued job's {want!r}"
    if subject != names.results_subject(job.game, job.group):
        return f"subject: {subject!r} is not the job's results subject"
    for field in ("wins_a", "draws", "wins_b"):
        if getattr(result, field) < 0:
            return f"{field}: {getattr(result, field)} is negative"
    opponents = seats_of(job.game) - 1
    if result.pairs_per_game != opponents:
        return f"pairs_per_game: {result.pairs_per_game}, the game has {opponents} opponents a seat"
    if result.games != job.games:
        return f"wins_a + draws + wins_b: {result.games} games, the job has {job.games}"
    return None


def judge(stored: Iterable[Stored], issued: Mapping[str, EvalJob]) -> Owed:
    """Each issued job's first matching result counts; every other stored result is skipped."""
    counted: dict[str, EvalResult] = {}
    skipped: list[Skipped] = []
    for item in sorted(stored):
        try:
            result = decode(item.data, EvalResult, subject=item.subject)
        except BadMessage as e:
            why = f"{e.field}: {e.reason}"
            skipped.append(
                Skipped(seq=item.seq, subject=item.subject, job_id="", reason=why, data=item.data)
            )
            continue
        reason = mismatch(result, item.subject, issued.get(result.job_id))
        if reason is None and result.job_id in counted:
            reason = f"job_id: {result.job_id!r} already has a counted result"
        if reason is None:
            counted[result.job_id] = result
        else:
            skipped.append(
                Skipped(
                    seq=item.seq,
                    subject=item.subject,
                    job_id=result.job_id,
                    reason=reason,
                    data=item.data,
                )
            )
    return Owed(list(counted.values()), skipped, dict(issued))


async def issued_jobs(bus: Streams, game: str, group: str = names.ANY) -> dict[str, EvalJob]:
    """The evaluation jobs the leader issued for `game` (or one group of it), by job id."""
    bucket = names.LOOP_BUCKET
    subject = names.kv_subject(bucket, names.issued_key(game, group, names.ANY))
    jobs: dict[str, EvalJob] = {}
    for msg in await bus.read_all(names.kv_stream(bucket), subject):
        try:
            job = decode(msg.data, EvalJob, subject=msg.subject)
        except BadMessage as e:
            log.warning("%s", e, extra={"field": e.field})
            continue
        if msg.subject.rsplit(".", 1)[-1] == job.job_id:  # a record filed under its own id
            jobs[job.job_id] = job
    return jobs


async def stored_results(bus: Streams, game: str, group: str = names.ANY) -> list[Stored]:
    msgs = await bus.read_all(names.RESULTS_STREAM, names.results_subject(game, group))
    return [Stored(m.seq, m.subject, m.data) for m in msgs]


async def owed_results(bus: Streams, game: str, group: str = names.ANY) -> Owed:
    """The verdict on every stored result of `game` (or one job group of it)."""
    stored = await stored_results(bus, game, group)
    if not stored:
        return Owed([], [], {})
    return judge(stored, await issued_jobs(bus, game, group))


class SkipLog:
    """Skipped results met while reading, for the leader to dead-letter once each: its DLQ
    message id is the result's stream sequence, and letters already in the DLQ (a previous
    leader's) are read once per term and not repeated."""

    def __init__(self) -> None:
        self.pending: dict[int, Skipped] = {}
        self.reported: set[int] | None = None

    def note(self, skipped: Iterable[Skipped]) -> None:
        for s in skipped:
            if self.reported is None or s.seq not in self.reported:
                self.pending.setdefault(s.seq, s)

    async def dead_letter(self, bus: Streams) -> int:
        """Publish a dead letter for each skipped result not reported yet; returns how many."""
        if not self.pending:
            return 0
        if self.reported is None:
            self.reported = await reported_results(bus)
        published = 0
        for seq, skipped in sorted(self.pending.items()):
            if seq not in self.reported:
                await _publish_skipped(bus, skipped)
                published += 1
            self.reported.add(seq)
            del self.pending[seq]
        return published


async def reported_results(bus: Streams) -> set[int]:
    """Stream sequences of the results already dead-lettered."""
    subject = names.dlq_subject(names.SKIPPED_RESULTS, names.ANY, names.ANY)
    seqs = set()
    for msg in await bus.read_all(names.DLQ_STREAM, subject):
        try:
            seqs.add(decode(msg.data, DeadLetter, subject=msg.subject).stream_seq)
        except BadMessage as e:
            log.warning("%s", e, extra={"field": e.field})
    return seqs


async def _publish_skipped(bus: Streams, skipped: Skipped) -> None:
    game, group = names.game_and_group(skipped.subject)
    kind, job_id, reason = names.SKIPPED_RESULTS, skipped.job_id, skipped.reason
    letter = DeadLetter(
        kind=kind,
        job_id=job_id,
        stream_seq=skipped.seq,
        deliveries=1,
        reason=reason,
        job=skipped.data,
        at=time.time(),
    )
    subject = names.dlq_subject(names.SKIPPED_RESULTS, game, group)
    await bus.publish_durable(subject, encode(letter), msg_id=f"skipped-result-{skipped.seq}")
    log.warning(
        "result #%d (%s) not counted: %s",
        skipped.seq,
        skipped.job_id or "?",
        skipped.reason,
        extra={"job": skipped.job_id, "subject": skipped.subject},
    )


async def game_results(
    bus: Streams, game: str, group: str = names.ANY, skips: SkipLog | None = None
) -> list[EvalResult]:
    """Every result `game` (or one job group of it) is owed, each job once; what does not count
    goes to `skips` when given."""
    owed = await owed_results(bus, game, group)
    if skips is not None:
        skips.note(owed.skipped)
    return owed.counted


def pair_results(results: list[EvalResult]) -> list[PairResult]:
    return [
        PairResult(
            a=r.a.name,
            b=r.b.name,
            wins_a=r.wins_a,
            draws=r.draws,
            wins_b=r.wins_b,
            pairs_per_game=r.pairs_per_game,
        )
        for r in results
    ]


async def game_ratings(
    bus: Streams, game: str, warn: Warn | None = None
) -> tuple[dict[str, Rating], dict[str, PlayerSpec]]:
    """Bradley-Terry ratings of all who played `game` (random anchored at 0), and who they are;
    dropped results are told to `warn` (see `fit`)."""
    results = await game_results(bus, game)
    players = {spec.name: spec for r in results for spec in (r.a, r.b)}
    return fit(pair_results(results), warn=warn), players
