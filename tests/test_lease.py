"""The lease decision, alone and inside a simulated KV with latency, lost acks and crashes."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import lease
from shared.lease import Held, LeaseParams, Observed

P = LeaseParams(ttl_s=3, renew_every_s=1.0, margin_s=0.5, recheck_s=1.0)


def test_empty_key_is_acquired_on_its_last_revision() -> None:
    assert lease.decide(Observed(None, 7), None, 0.0, P) == lease.Acquire(7)


def test_someone_elses_lease_is_waited_on() -> None:
    assert lease.decide(Observed("other", 7), None, 10.0, P) == lease.Wait(11.0)


def test_holder_waits_until_renewal_is_due_then_renews_with_its_deadline() -> None:
    held = Held(term=5, revision=9, confirmed_at=100.0)
    assert lease.decide(Observed("me", 9), held, 100.5, P) == lease.Wait(101.0)
    assert lease.decide(Observed("me", 9), held, 101.0, P) == lease.Renew(9, 102.5)


def test_holder_fences_itself_at_ttl_minus_margin() -> None:
    held = Held(term=5, revision=9, confirmed_at=100.0)
    decision = lease.decide(Observed("me", 9), held, 102.5, P)
    assert isinstance(decision, lease.Fence)


def test_renewal_keeps_the_term_and_moves_the_revision() -> None:
    held = lease.renewed(lease.acquired(4, 1.0), 6, 2.0)
    assert (held.term, held.revision, held.confirmed_at) == (4, 6, 2.0)


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [({"ttl_s": 0}, "ttl_s"), ({"margin_s": 3.0}, "margin_s"), ({"renew_every_s": 2.6}, "renew")],
)
def test_bad_params_name_the_field(kwargs: dict[str, float], field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        LeaseParams(**kwargs)  # type: ignore[arg-type]


# -- simulation ------------------------------------------------------------------------------

TICK = 0.05


@dataclass
class Server:
    """A KV key with per-message TTL and expiry markers, as JetStream keeps it."""

    ttl: float
    revision: int = 0
    holder: str | None = None
    expires_at: float = float("inf")

    def tick(self, now: float) -> None:
        if self.holder is not None and now >= self.expires_at:
            self.revision += 1  # the expiry marker is a message too
            self.holder, self.expires_at = None, float("inf")

    def write(self, who: str, expect_last: int, now: float) -> int | None:
        if expect_last != self.revision:
            return None
        self.revision += 1
        self.holder, self.expires_at = who, now + self.ttl
        return self.revision


@dataclass
class Op:
    kind: str
    expect_last: int
    sent: float
    arrives: float
    acked: float
    lost_ack: bool
    result: int | None = None
    applied: bool = False


@dataclass
class Contender:
    name: str
    dies_at: float
    held: Held | None = None
    observed: Observed = field(default_factory=lambda: Observed(None, 0))
    op: Op | None = None
    intervals: dict[int, list[float]] = field(default_factory=dict)

    def alive(self, now: float) -> bool:
        return now < self.dies_at


def simulate(seed: int, contenders: int, loss: float, latency: float, crashes: list[float]) -> None:
    rng = random.Random(seed)
    server = Server(ttl=P.ttl_s)
    cs = [Contender(f"c{i}", crashes[i] if i < len(crashes) else 1e9) for i in range(contenders)]
    now = 0.0
    while now < 40.0:
        server.tick(now)
        for c in cs:
            step(c, server, now, rng, loss, latency)
        now += TICK
    terms = sorted((iv[0], iv[1], term) for c in cs for term, iv in c.intervals.items())
    for (_, end_a, term_a), (start_b, _, term_b) in itertools.pairwise(terms):
        assert start_b > end_a, f"term {term_b} began at {start_b} before {term_a} ended at {end_a}"
    if any(c.dies_at > 10.0 for c in cs):  # liveness, once someone outlives a few TTLs
        assert terms, "nobody was ever elected"


def step(
    c: Contender, server: Server, now: float, rng: random.Random, loss: float, lat: float
) -> None:
    if c.op is not None:
        settle(c, server, now)
        return
    if not c.alive(now):
        end_term(c, now)
        return
    c.observed = Observed(server.holder, server.revision)
    decision = lease.decide(c.observed, c.held, now, P)
    if isinstance(decision, lease.Fence):
        end_term(c, now)
        c.held = None
    elif isinstance(decision, lease.Acquire | lease.Renew):
        kind = "acquire" if isinstance(decision, lease.Acquire) else "renew"
        arrives = now + rng.uniform(0, lat)
        acked = arrives + rng.uniform(0, lat)
        c.op = Op(kind, decision.expect_last, now, arrives, acked, rng.random() < loss)


def settle(c: Contender, server: Server, now: float) -> None:
    op = c.op
    assert op is not None
    if not op.applied and now >= op.arrives:
        op.result, op.applied = server.write(c.name, op.expect_last, op.arrives), True
    if not c.alive(now):
        end_term(c, now)
        c.op, c.held = None, None
        return
    timeout = op.sent + (P.ttl_s - P.margin_s)
    if op.applied and now >= op.acked and not op.lost_ack:
        c.op = None
        record_ack(c, op, now)
    elif now >= timeout:
        c.op = None  # Unavailable: the write may or may not have happened


def record_ack(c: Contender, op: Op, now: float) -> None:
    if op.result is None:
        if op.kind == "renew":
            end_term(c, now)
            c.held = None
        return
    if op.kind == "acquire":
        c.held = lease.acquired(op.result, op.sent)
        c.intervals[op.result] = [now, c.held.valid_until(P)]
    elif c.held is not None:
        c.held = lease.renewed(c.held, op.result, op.sent)
        c.intervals[c.held.term][1] = c.held.valid_until(P)


def end_term(c: Contender, now: float) -> None:
    if c.held is not None:
        interval = c.intervals[c.held.term]
        interval[1] = min(interval[1], now)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    contenders=st.integers(2, 4),
    loss=st.sampled_from([0.0, 0.1, 0.4]),
    latency=st.sampled_from([0.01, 0.3, 1.2]),
    crashes=st.lists(st.floats(1.0, 35.0), max_size=3),
)
def test_terms_never_overlap_under_latency_loss_and_crashes(
    seed: int, contenders: int, loss: float, latency: float, crashes: list[float]
) -> None:
    simulate(seed, contenders, loss, latency, crashes)
