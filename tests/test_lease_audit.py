"""The lease audit: promises extend a term, a release's final promise ends it, in any order."""

from __future__ import annotations

import itertools

from schemas.control import LeaderValidity
from shared.lease.audit import LeaseAudit


def promise(term: int, until: float, final: bool = False, start: float = 0.0) -> LeaderValidity:
    return LeaderValidity(
        node="a", instance=f"i{term}", term=term, valid_from=start, valid_until=until, final=final
    )


def test_a_release_ends_its_term_whatever_order_the_promises_arrive_in() -> None:
    first = [promise(1, 3.0), promise(1, 6.0), promise(1, 4.5, final=True)]
    for order in itertools.permutations(first):
        audit = LeaseAudit()
        for v in (*order, promise(2, 8.0, start=4.6)):
            audit.record(v)
        assert audit.terms[1].valid_until == 4.5 and audit.terms[1].ended
        assert audit.overlaps() == []


def test_without_a_release_the_last_promise_stands_and_an_early_successor_overlaps() -> None:
    audit = LeaseAudit()
    for v in (promise(1, 3.0), promise(1, 6.0), promise(2, 8.0, start=4.6)):
        audit.record(v)
    assert audit.terms[1].valid_until == 6.0
    assert [(a.term, b.term) for a, b in audit.overlaps()] == [(1, 2)]
