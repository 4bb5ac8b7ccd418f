"""One stream's stored messages and limits, as the server applies them to a publish."""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from datetime import datetime

from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig

from shared.bus.errors import BusError, CasFailed
from shared.bus.memory.subjects import matches
from shared.bus.message import Message

DEFAULT_DUPLICATE_WINDOW_S = 120.0
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
TTL = "Nats-TTL"
ROLLUP = "Nats-Rollup"
MARKER_REASON = "Nats-Marker-Reason"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class Stored:
    """A message as the stream keeps it; `expires_at` is on the monotonic clock."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    timestamp: datetime
    expires_at: float | None = None

    @property
    def size(self) -> int:
        return (
            len(self.subject)
            + len(self.data)
            + sum(len(k) + len(v) for k, v in self.headers.items())
        )

    def message(self, stream: str, num_pending: int = 0, num_delivered: int = 1) -> Message:
        return Message(
            self.subject,
            self.data,
            dict(self.headers),
            seq=self.seq,
            stream=stream,
            timestamp=self.timestamp,
            num_pending=num_pending,
            num_delivered=num_delivered,
        )


@dataclass
class Stream:
    """A stream's messages in sequence order, indexed by subject, with its message ids."""

    config: StreamConfig
    msgs: dict[int, Stored] = field(default_factory=dict)
    by_subject: dict[str, list[int]] = field(default_factory=dict)
    last_seq: int = 0
    size: int = 0
    _expiries: list[tuple[float, int]] = field(default_factory=list)
    _ids: dict[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name or ""

    @property
    def work_queue(self) -> bool:
        return self.config.retention == RetentionPolicy.WORK_QUEUE

    def captures(self, subject: str) -> bool:
        return any(matches(f, subject) for f in self.config.subjects or [])

    @property
    def first_seq(self) -> int:
        if self.msgs:
            return next(iter(self.msgs))
        return self.last_seq + 1 if self.last_seq else 0

    # -- reading -------------------------------------------------------------------------------

    def seqs_on(self, filter_: str) -> list[int]:
        """Sequences stored on `filter_`, oldest first: O(messages on matching subjects)."""
        if "*" not in filter_ and ">" not in filter_:
            return list(self.by_subject.get(filter_, ()))
        found = [
            s
            for subject, seqs in self.by_subject.items()
            if matches(filter_, subject)
            for s in seqs
        ]
        return sorted(found)

    def on(self, filter_: str, from_seq: int = 0) -> list[Stored]:
        seqs = self.seqs_on(filter_)
        return [self.msgs[s] for s in seqs[bisect.bisect_left(seqs, from_seq) :]]

    def last_on(self, subject: str) -> Stored | None:
        seqs = self.seqs_on(subject)
        return self.msgs[seqs[-1]] if seqs else None

    def last_per_subject(self, filter_: str) -> list[Stored]:
        """The newest message of each subject on `filter_`, oldest first."""
        found = [self.msgs[q[-1]] for s, q in self.by_subject.items() if matches(filter_, s)]
        return sorted(found, key=lambda m: m.seq)

    def counts(self, filter_: str) -> dict[str, int]:
        return {s: len(q) for s, q in self.by_subject.items() if q and matches(filter_, s)}

    # -- writing -------------------------------------------------------------------------------

    def store(
        self, subject: str, data: bytes, headers: dict[str, str], now: float, wall: datetime
    ) -> tuple[int, bool]:
        """Apply a publish as the server does: (sequence, duplicate). Raises CasFailed or
        BusError for what the server refuses."""
        self._prune_ids(now)
        msg_id = headers.get(MSG_ID)
        if msg_id and msg_id in self._ids:
            return self._ids[msg_id][0], True
        self._check(subject, headers, len(data))
        ttl = self._ttl(headers)
        lifetime = ttl if ttl is not None else (self.config.max_age or None)
        stored = self._append(subject, data, headers, wall, now + lifetime if lifetime else None)
        if msg_id:
            self._ids[msg_id] = (stored.seq, now)
        return stored.seq, False

    def _check(self, subject: str, headers: dict[str, str], size: int) -> None:
        if ROLLUP in headers and not self.config.allow_rollup_hdrs:
            raise BusError(f"{self.name}: rollups not permitted (code 10110)")
        if TTL in headers and not self.config.allow_msg_ttl:
            raise BusError(f"{self.name}: per-message TTL is disabled (code 10166)")
        expected = headers.get(EXPECTED_LAST_SUBJECT_SEQ)
        if expected is not None:
            last = self.last_on(subject)
            if (last.seq if last else 0) != int(expected):
                raise CasFailed(f"{subject}: wrong last sequence: {last.seq if last else 0}")
        expected_seq = headers.get(EXPECTED_LAST_SEQ)
        if expected_seq is not None and self.last_seq != int(expected_seq):
            raise CasFailed(f"{self.name}: wrong last sequence: {self.last_seq}")
        self._check_limits(size)

    def _check_limits(self, size: int) -> None:
        max_msgs, max_bytes = self.config.max_msgs or -1, self.config.max_bytes or -1
        while (0 < max_msgs <= len(self.msgs)) or (0 < max_bytes < self.size + size):
            if self.config.discard == DiscardPolicy.NEW or not self.msgs:
                raise BusError(f"{self.name}: maximum messages or bytes exceeded (code 10077)")
            self.remove(next(iter(self.msgs)))

    def _ttl(self, headers: dict[str, str]) -> float | None:
        raw = headers.get(TTL)
        if raw is None or raw == "never":
            return None
        seconds = parse_duration(raw)
        if seconds is None or seconds < 1:
            raise BusError(f"{self.name}: invalid per-message TTL {raw!r} (code 10165)")
        return float(int(seconds))  # the server keeps whole seconds

    def _append(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        wall: datetime,
        expires: float | None,
    ) -> Stored:
        self.last_seq += 1
        stored = Stored(self.last_seq, subject, data, dict(headers), wall, expires)
        self.msgs[stored.seq] = stored
        self.by_subject.setdefault(subject, []).append(stored.seq)
        self.size += stored.size
        if expires is not None:
            heapq.heappush(self._expiries, (expires, stored.seq))
        self._keep_per_subject(subject)
        return stored

    def _keep_per_subject(self, subject: str) -> None:
        limit = self.config.max_msgs_per_subject or -1
        seqs = self.by_subject[subject]
        while 0 < limit < len(seqs):
            self.remove(seqs[0])

    def remove(self, seq: int) -> bool:
        """Remove the message at `seq`; False if there is none."""
        stored = self.msgs.pop(seq, None)
        if stored is None:
            return False
        seqs = self.by_subject[stored.subject]
        seqs.remove(seq)
        if not seqs:
            del self.by_subject[stored.subject]
        self.size -= stored.size
        return True

    def _prune_ids(self, now: float) -> None:
        window = self.config.duplicate_window or DEFAULT_DUPLICATE_WINDOW_S
        for msg_id, (_, at) in list(self._ids.items()):
            if now - at < window:
                break  # inserted in time order
            del self._ids[msg_id]

    # -- expiry --------------------------------------------------------------------------------

    def expire(self, now: float, wall: datetime) -> list[Stored]:
        """Remove every message whose TTL or max age has passed; returns the delete markers
        written for subjects left empty (only with `subject_delete_marker_ttl`)."""
        markers = []
        while self._expiries and self._expiries[0][0] <= now:
            _, seq = heapq.heappop(self._expiries)
            stored = self.msgs.get(seq)
            if stored is None or not self.remove(seq):
                continue
            marker = self._marker(stored.subject, now, wall)
            if marker is not None:
                markers.append(marker)
        return markers

    def _marker(self, subject: str, now: float, wall: datetime) -> Stored | None:
        ttl = self.config.subject_delete_marker_ttl
        if not ttl or subject in self.by_subject:
            return None
        headers = {MARKER_REASON: "MaxAge", TTL: f"{int(ttl)}s"}
        return self._append(subject, b"", headers, wall, now + ttl)

    def next_expiry(self) -> float | None:
        return self._expiries[0][0] if self._expiries else None


def parse_duration(raw: str) -> float | None:
    """A Go duration ("3s", "1500ms", "1m") or whole seconds ("3"); None if unreadable."""
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
        number = raw.removesuffix(unit)
        if number != raw:
            try:
                return float(number) * _DURATION_UNITS[unit]
            except ValueError:
                return None
    return None
