"""What must hold throughout a simulated run, checked as it happens.

- At most one lease holder is valid at any instant, and only while a majority of the lease
  slots on the server still hold its key.
- Terms only grow: a term valid now is above every term valid before it.
- The loop state is never written by an older term after a newer one wrote it.
- Every self-play job acknowledged has its games stored; no game is stored twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import Lease
from schemas.game import decode_record
from schemas.jobs import DeadLetter, SelfplayJob
from shared.bus.memory.subjects import matches
from shared.bus.ports import Clock, SystemClock
from shared.lease.holder import Contender

GAMES = names.games_subject("*")
SELFPLAY_JOBS = names.job_filter("selfplay")
SELFPLAY_DEAD = names.dlq_filter("selfplay")

Peek = Callable[[str, str], bytes | None]  # a key's present value on the server, read directly


class Violation(AssertionError):
    """An invariant broke: the message says which, when and by whom."""


@dataclass
class LeaseChecker:
    seen: dict[str, int] = field(default_factory=dict)  # instance: the term it was valid with
    order: list[int] = field(default_factory=list)  # terms in the order they became valid

    def sample(self, contenders: Sequence[Contender], now: float, peek: Peek) -> None:
        valid = [c for c in contenders if c.term is not None and c.until() > now]
        if len(valid) > 1:
            who = ", ".join(f"{c.instance} (term {c.term})" for c in valid)
            raise Violation(f"t={now:.2f}: {len(valid)} valid lease holders: {who}")
        for holder in valid:
            self._check_term(holder, now)
            self._check_slots(holder, now, peek)

    def _check_term(self, holder: Contender, now: float) -> None:
        assert holder.term is not None
        known = self.seen.get(holder.instance)
        if known == holder.term:
            return
        if self.order and holder.term <= self.order[-1]:
            raise Violation(
                f"t={now:.2f}: {holder.instance} valid with term {holder.term} after term "
                f"{self.order[-1]} was"
            )
        self.seen[holder.instance] = holder.term
        self.order.append(holder.term)

    def _check_slots(self, holder: Contender, now: float, peek: Peek) -> None:
        held = sum(
            _instance(peek(bucket, holder.key)) == holder.instance for bucket in holder.buckets
        )
        if held * 2 <= len(holder.buckets):
            raise Violation(
                f"t={now:.2f}: {holder.instance} valid with term {holder.term} until "
                f"{holder.until():.2f}, but the server has its key in only {held} of "
                f"{len(holder.buckets)} slots"
            )

    def terms(self) -> list[int]:
        return list(self.order)


def _instance(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return decode(value, Lease, subject=names.LEADER_KEY).instance
    except BadMessage:
        return None


class _Termed(msgspec.Struct):
    term: int


@dataclass
class LoopStateChecker:
    """Follows every committed write of the loop state (the server's commit hook)."""

    clock: Clock = field(default_factory=SystemClock)
    writes: int = 0
    last_term: int = 0
    last_write_at: float = 0.0
    violations: list[str] = field(default_factory=list)

    def commit(self, subject: str, data: bytes, headers: Mapping[str, str]) -> None:
        if (
            subject != names.kv_subject(names.LOOP_BUCKET, names.LOOP_STATE_KEY)
            or "KV-Operation" in headers
        ):
            return
        try:
            term = msgspec.json.decode(data, type=_Termed).term
        except msgspec.DecodeError:
            self.violations.append(f"loop state #{self.writes + 1} does not decode")
            return
        self.writes += 1
        self.last_write_at = self.clock.monotonic()
        if term < self.last_term:
            self.violations.append(
                f"loop state write #{self.writes} by term {term} after term {self.last_term}"
            )
        self.last_term = max(self.last_term, term)

    def check(self) -> None:
        if self.violations:
            raise Violation(self.violations[0])


@dataclass
class GamesChecker:
    """Every self-play job acknowledged has all its games stored, and no game is stored twice.

    Follows the stored games and jobs (the server's commit hook) and, as the run goes, which
    self-play jobs have left the work queue: acknowledged, unless dead-lettered."""

    jobs: dict[str, int] = field(default_factory=dict)  # job id: games it asked for
    stored: dict[str, int] = field(default_factory=dict)  # job id: games stored for it
    game_ids: set[str] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)  # dead-lettered jobs
    settled: set[str] = field(default_factory=set)  # jobs gone from the queue, checked
    violations: list[str] = field(default_factory=list)

    def commit(self, subject: str, data: bytes, headers: Mapping[str, str]) -> None:
        del headers
        if matches(GAMES, subject):
            self._game(data)
        elif matches(SELFPLAY_JOBS, subject):
            with contextlib.suppress(BadMessage):
                job = decode(data, SelfplayJob, subject=subject)
                self.jobs.setdefault(job.job_id, job.games)
        elif matches(SELFPLAY_DEAD, subject):
            with contextlib.suppress(BadMessage):
                self.dead.add(decode(data, DeadLetter, subject=subject).job_id)

    def _game(self, data: bytes) -> None:
        try:
            record = decode_record(data)
        except BadMessage:
            return
        if record.game_id in self.game_ids:
            self.violations.append(f"game {record.game_id} stored twice")
        self.game_ids.add(record.game_id)
        self.stored[record.job_id] = self.stored.get(record.job_id, 0) + 1

    def sample(self, queued: set[str], now: float) -> None:
        """`queued`: the self-play jobs still in the work queue now."""
        for job_id, games in self.jobs.items():
            if job_id in queued or job_id in self.settled or job_id in self.dead:
                continue
            self.settled.add(job_id)
            if self.stored.get(job_id, 0) < games:
                self.violations.append(
                    f"t={now:.2f}: self-play job {job_id} acknowledged with "
                    f"{self.stored.get(job_id, 0)} of its {games} games stored"
                )

    def check(self) -> None:
        if self.violations:
            raise Violation(self.violations[0])
