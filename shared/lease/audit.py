"""An outside checker of leadership: records every term's validity promises and finds overlaps."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from schemas import names
from schemas.codec import decode
from schemas.control import LeaderValidity
from shared.bus.message import Message, Subscription
from shared.bus.ports import Subjects

log = logging.getLogger("conclave.leaseaudit")


@dataclass
class Term:
    term: int
    node: str
    instance: str
    valid_from: float
    valid_until: float
    ended: bool = False  # its holder stepped down: `valid_until` is when, and final


@dataclass
class LeaseAudit:
    """Collects `leader.validity` promises; a term is the interval [first from, last until]."""

    terms: dict[int, Term] = field(default_factory=dict)
    rejected: int = 0
    _sub: Subscription | None = None

    async def start(self, bus: Subjects) -> LeaseAudit:
        self._sub = await bus.subscribe(names.leader_validity_subject(), self._on_message)
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_message(self, msg: Message) -> None:
        try:
            v = decode(msg.data, LeaderValidity, subject=msg.subject)
        except Exception as e:  # BadMessage or anything else: not a promise we can check
            self.rejected += 1
            log.warning("rejected validity promise: %r", e)
            return
        self.record(v)

    def record(self, v: LeaderValidity) -> None:
        """A promise extends its term; a final one (a release) ends it there, whatever order
        the promises arrive in (core messages from one holder may be overtaken)."""
        known = self.terms.get(v.term)
        if known is None:
            self.terms[v.term] = Term(
                v.term, v.node, v.instance, v.valid_from, v.valid_until, ended=v.final
            )
        elif v.final:
            known.valid_until = v.valid_until if not known.ended else known.valid_until
            known.ended = True
        elif not known.ended:
            known.valid_until = max(known.valid_until, v.valid_until)

    def ordered(self) -> list[Term]:
        return sorted(self.terms.values(), key=lambda t: t.valid_from)

    def overlaps(self) -> list[tuple[Term, Term]]:
        """Pairs of terms whose validity intervals intersect; must always be empty."""
        found = []
        ordered = self.ordered()
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                if b.valid_from < a.valid_until and b.term != a.term:
                    found.append((a, b))
        return found

    def holder_at(self, t: float) -> Term | None:
        for term in self.terms.values():
            if term.valid_from <= t <= term.valid_until:
                return term
        return None
