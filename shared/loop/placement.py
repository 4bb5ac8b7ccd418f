"""Which capability tier a self-play or training job goes to: pure functions of what the nodes
declare (`schemas.control.DeviceReport`) and what is queued.

Each tier has its own queue (`schemas.names.TIERS`, fastest first) and a worker pulls its own
tier, then the slower ones when its own is empty. So the scheduler files jobs where the
fleet's throughput is: each job goes to the tier whose queue would drain soonest, counted in
jobs queued per unit of measured throughput.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator, Mapping

from schemas import names
from schemas.control import SELF_TEST_PASSED, DeviceReport, MatchEvaluators, NodeStatus


def worker_rate(report: DeviceReport) -> float | None:
    """A worker's measured positions/s (the mean over the net sizes it has run), None before it
    has measured any."""
    rates = [rate for rate in report.positions_per_s.values() if rate > 0]
    return statistics.fmean(rates) if rates else None


def tier_capacity(nodes: Iterable[NodeStatus], kind: str) -> dict[str, float]:
    """Each tier's throughput for `kind`'s live workers: measured rates, an unmeasured worker
    counting as its tier's mean (else the fleet's, else 1). A worker without a report yet
    (starting, or an older build) counts in the default tier; one whose self-test failed, not
    at all."""
    declared: list[tuple[str, float | None]] = []
    for _, report in live_workers(nodes, kind):
        if report is None:
            declared.append((names.DEFAULT_TIER, None))
        elif report.self_test == SELF_TEST_PASSED and report.tier in names.TIERS:
            declared.append((report.tier, worker_rate(report)))
    return _filled(declared)


def live_workers(
    nodes: Iterable[NodeStatus], kind: str
) -> Iterator[tuple[str, DeviceReport | None]]:
    """Each live process of service `kind` (`node/service`) and its device report."""
    for status in nodes:
        for service in status.services:
            if service.alive and names.service_kind(service.name) == kind:
                yield f"{status.node}/{service.name}", service.compute


def _filled(declared: list[tuple[str, float | None]]) -> dict[str, float]:
    measured = [rate for _, rate in declared if rate is not None]
    fleet = statistics.fmean(measured) if measured else 1.0
    capacity: dict[str, float] = {}
    for tier in names.TIERS:
        rates = [rate for t, rate in declared if t == tier]
        if not rates:
            continue
        known = [rate for rate in rates if rate is not None]
        typical = statistics.fmean(known) if known else fleet
        capacity[tier] = sum(typical if rate is None else rate for rate in rates)
    return capacity


def place(jobs: int, queued: Mapping[str, int], capacity: Mapping[str, float]) -> tuple[str, ...]:
    """The tier of each of `jobs` new jobs: one at a time, where the queue (with the jobs placed
    before it) drains soonest; ties go to the faster tier. () when every job goes to the default
    tier (which every worker pulls): no capacity known, or only the default tier's."""
    usable = [tier for tier in names.TIERS if capacity.get(tier, 0.0) > 0]
    if not usable:
        return ()
    depth = {tier: queued.get(tier, 0) for tier in usable}
    chosen = []
    for _ in range(jobs):
        tier = min(usable, key=lambda t: ((depth[t] + 1) / capacity[t], names.TIERS.index(t)))
        depth[tier] += 1
        chosen.append(tier)
    return () if usable == [names.DEFAULT_TIER] else tuple(chosen)


def fastest_tier(capacity: Mapping[str, float]) -> str:
    """Where a job that one worker runs alone (a training) goes: the fastest tier with a live
    worker, whose workers pull it first (and the slower tiers' cannot take it)."""
    for tier in names.TIERS:
        if capacity.get(tier, 0.0) > 0:
            return tier
    return names.DEFAULT_TIER


class Stranding:
    """When each tier last had a live worker of a kind: a tier without one for `after_s` is
    stranded, and its queued jobs go to the default tier (`shared.work.jobs.rehome`). The
    grace keeps a worker that missed a heartbeat, or is restarting, from losing its job to a
    copy elsewhere."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self.seen: dict[tuple[str, str], float] = {}

    def stranded(self, kind: str, capacity: Mapping[str, float], now: float) -> list[str]:
        out = []
        for tier in names.TIERS:
            last = self.seen.setdefault((kind, tier), now)  # from the first look: a grace
            if capacity.get(tier, 0.0) > 0:
                self.seen[(kind, tier)] = now
            elif tier != names.DEFAULT_TIER and now - last >= self.after_s:
                out.append(tier)
        return out


MATCH_SHARE = 0.25  # an evaluator this much slower than the fastest would hold the gate up


def match_evaluators(nodes: Iterable[NodeStatus], share: float = MATCH_SHARE) -> list[str] | None:
    """The evaluators (`node/service`) fast enough for promotion matches: measured at `share` of
    the fastest's positions/s or more, or not measured yet; None while no evaluator has measured
    (every one may). A slower one still plays gauntlets and rating games, whose results wait."""
    rated = {
        who: worker_rate(report)
        for who, report in live_workers(nodes, "evaluator")
        if report is not None and report.self_test == SELF_TEST_PASSED
    }
    known = [rate for rate in rated.values() if rate is not None]
    if not known:
        return None
    floor = share * max(known)
    return sorted(who for who, rate in rated.items() if rate is None or rate >= floor)


def eval_lanes(me: str, named: MatchEvaluators | None) -> tuple[str, ...]:
    """The evaluation lanes evaluator `me` (`node/service`) pulls: every lane, less promotion
    matches when the scheduler names others as fast enough and not `me`."""
    if named is None or named.evaluators is None or me in named.evaluators:
        return names.EVAL_LANES
    return tuple(lane for lane in names.EVAL_LANES if lane != "match")
