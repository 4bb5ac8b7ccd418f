"""A durable explicit-ack consumer's state, as the server keeps it (it survives restarts)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from shared.bus.consumers import ConsumerCounts, WorkConsumer
from shared.bus.errors import BusError
from shared.bus.memory.stream import Stored, Stream
from shared.bus.memory.subjects import overlap

DEFAULT_ACK_WAIT_S = 30.0
DEFAULT_MAX_ACK_PENDING = 1000


@dataclass
class Pending:
    """A delivered, unacknowledged message: how often delivered, and when it is due again."""

    deliveries: int
    due: float


@dataclass
class Durable:
    """Where a durable consumer is in its stream and what it has handed out."""

    config: WorkConsumer
    next_seq: int = 1
    delivered: int = 0  # the consumer sequence: every delivery, redeliveries included
    pending: dict[int, Pending] = field(default_factory=dict)

    @property
    def ack_wait_s(self) -> float:
        return self.config.ack_wait_s or DEFAULT_ACK_WAIT_S

    @property
    def max_deliver(self) -> int:
        return self.config.max_deliver or -1

    @property
    def max_ack_pending(self) -> int:
        return self.config.max_ack_pending or DEFAULT_MAX_ACK_PENDING

    def waiting(self, stream: Stream) -> list[int]:
        """Sequences not yet delivered, oldest first."""
        seqs = stream.seqs_on(self.config.subjects)
        return seqs[bisect.bisect_left(seqs, self.next_seq) :]

    def counts(self, stream: Stream) -> ConsumerCounts:
        return ConsumerCounts(self.delivered, len(self.waiting(stream)), len(self.pending))

    def exhausted(self, stream: Stream, now: float) -> list[tuple[int, int]]:
        """Drop what is gone from the stream, and every due message delivered `max_deliver`
        times; returns the latter as (stream sequence, deliveries), for advisories."""
        out = []
        for seq, p in list(self.pending.items()):
            if seq not in stream.msgs:
                del self.pending[seq]
            elif p.due <= now and 0 < self.max_deliver <= p.deliveries:
                del self.pending[seq]
                out.append((seq, p.deliveries))
        return out

    def next_due(self, now: float) -> float | None:
        """The earliest redelivery time still to come."""
        return min((p.due for p in self.pending.values() if p.due > now), default=None)

    def next_exhaustion(self) -> float:
        """When the first message delivered `max_deliver` times is due to be dropped."""
        if self.max_deliver <= 0:
            return math.inf
        due = (p.due for p in self.pending.values() if p.deliveries >= self.max_deliver)
        return min(due, default=math.inf)

    def take(self, stream: Stream, batch: int, now: float) -> list[tuple[Stored, int]]:
        """Up to `batch` deliveries: due redeliveries first, then new messages while fewer than
        `max_ack_pending` are unacknowledged; (message, delivery count) each."""
        out = [(stream.msgs[s], self._deliver(s, now)) for s in self._due(now)[:batch]]
        for seq in self.waiting(stream):
            if len(out) >= batch or len(self.pending) >= self.max_ack_pending:
                break
            self.next_seq = seq + 1
            out.append((stream.msgs[seq], self._deliver(seq, now)))
        return out

    def _due(self, now: float) -> list[int]:
        return sorted(s for s, p in self.pending.items() if p.due <= now)

    def _deliver(self, seq: int, now: float) -> int:
        previous = self.pending.get(seq)
        deliveries = previous.deliveries + 1 if previous else 1
        self.pending[seq] = Pending(deliveries, now + self.ack_wait_s)
        self.delivered += 1
        return deliveries

    def ack(self, seq: int) -> bool:
        """Done with `seq` (also what a term does); False if it was not pending."""
        return self.pending.pop(seq, None) is not None

    def nak(self, seq: int, due: float) -> None:
        if seq in self.pending:
            self.pending[seq].due = due

    def progress(self, seq: int, now: float) -> None:
        if seq in self.pending:
            self.pending[seq].due = now + self.ack_wait_s


def refuse_overlap(durables: dict[str, Durable], consumer: WorkConsumer) -> None:
    """A work queue hands each message to one consumer, so it refuses overlapping filters."""
    for name, other in durables.items():
        if name != consumer.durable and overlap(other.config.subjects, consumer.subjects):
            raise BusError(
                f"add consumer {consumer.durable}: filtered consumer not unique on workqueue "
                "stream (code 10100)"
            )
