"""The soak report: figures and pass/fail checks computed from a `SoakRecord` (pure).

Its markdown summary is `shared.soak.summary`, its plot `shared.soak.plot`, and
`shared.soak.files.write_report` writes them all.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterator, Sequence
from itertools import pairwise

import msgspec

from shared.soak.record import (
    Fault,
    FaultKind,
    JobCounts,
    MemorySample,
    OrderTimeline,
    Sample,
    SoakRecord,
    TermSpan,
)

MB = 1024 * 1024
NODES_ALIVE_TARGET = 0.99
LEADER_AVAILABLE_TARGET = 0.995
LEADER_AVAILABLE_OUTSIDE_KILLS_TARGET = 0.999
LEADER_KILL_EXCUSED_S = 60.0  # after a fault takes out the leader's node
NODE_KILLS: tuple[FaultKind, ...] = ("kill-node", "kill-leader-node")
GROWTH_MIN_MB = 50.0
GROWTH_MIN_RATIO = 0.25
GROWTH_MIN_SAMPLES = 8
RESTART_DROP_RATIO = 0.5
IDS_KEPT = 100

CHECKS = (
    "overlaps_zero",
    "lost_zero",
    "duplicated_zero",
    "trained_twice_zero",
    "all_faults_recovered",
    "nodes_alive_99",
    "leader_available_995",
    "leader_available_999_outside_leader_kills",
    "no_unbounded_growth",
)


class Failover(msgspec.Struct, frozen=True):
    """A handover between consecutive terms (by term number); `gap_s` 0 when they touch."""

    from_term: int
    to_term: int
    from_node: str
    to_node: str
    gap_s: float


class Overlap(msgspec.Struct, frozen=True):
    """Two term spans valid at once for `overlap_s` seconds (first_term <= second_term)."""

    first_term: int
    second_term: int
    overlap_s: float


class GameFigures(msgspec.Struct, frozen=True):
    """The game audit's counts; `lost_ids` and `duplicated_ids` keep the first IDS_KEPT, sorted
    (record.json has them all)."""

    acknowledged: int
    stored: int
    lost: int
    duplicated: int
    trained_twice: int
    checkpoints_checked: int
    lost_ids: list[int]
    duplicated_ids: list[str]


class MemoryFigures(msgspec.Struct, frozen=True):
    """One process label's resident memory in MiB; see `memory_figures` for `growing`."""

    label: str
    samples: int
    first_mb: float
    last_mb: float
    peak_mb: float
    growth_mb: float | None
    restarts: int
    growing: bool


class OrderFigures(msgspec.Struct, frozen=True):
    """One node's part in a fleet order, in seconds from the fault's injection (None: not
    seen); `renewed` when its services all run under new pids, started after the order."""

    node: str
    ordered_s: float | None
    received_s: float | None
    done_s: float | None
    healthy_s: float | None
    outcome: str
    version: str
    renewed: bool


class FaultFigures(msgspec.Struct, frozen=True):
    """One injected fault: `at_s` from the start of the run, `recovery_s` from injection;
    `leader_gap_max_s` the longest time without a valid leader term from injection to recovery
    (to the end of the run if never); `orders` a fleet order's per-node timelines."""

    kind: FaultKind
    target: str
    node: str | None
    at_s: float
    recovery_s: float | None
    recovered: bool
    detail: str
    leader_gap_max_s: float | None = None
    orders: list[OrderFigures] = []


class SoakReport(msgspec.Struct, frozen=True):
    duration_s: float
    chaos: bool
    nodes_expected: int
    samples: int
    alive_min: int | None
    alive_median: float | None
    alive_full_fraction_outside_node_faults: float | None
    leader_terms: int
    leader_available_fraction: float | None
    failovers: list[Failover]
    failover_max_s: float | None
    failover_p50_s: float | None
    overlaps: list[Overlap]
    jobs: list[JobCounts]
    jobs_total: JobCounts
    games: GameFigures
    memory: list[MemoryFigures]
    faults: list[FaultFigures]
    faults_unrecovered: int
    generations: int
    checks: dict[str, bool]
    passed: bool
    # Leader availability outside the LEADER_KILL_EXCUSED_S after each kill of the leader's node.
    leader_available_outside_leader_kills: float | None = None
    leader_kills: int = 0


def report(record: SoakRecord) -> SoakReport:
    """Every figure and check of the run (pure)."""
    counts = alive_counts(record)
    full = alive_full_fraction(record)
    serving = serving_terms(record)
    available = leader_available_fraction(serving, record.ended_at)
    hand = failovers(serving)
    gaps = [f.gap_s for f in hand]
    both = overlaps(record.terms)
    games = game_figures(record)
    memory = memory_figures(record)
    faults = fault_figures(record, serving)
    excused = leader_kill_windows(record)
    outside = available_outside(serving, record.ended_at, excused)
    unrecovered = sum(not f.recovered for f in faults)
    checks = {
        "overlaps_zero": not both,
        "lost_zero": games.lost == 0,
        "duplicated_zero": games.duplicated == 0,
        "trained_twice_zero": games.trained_twice == 0,
        "all_faults_recovered": unrecovered == 0,
        "nodes_alive_99": full is not None and full >= NODES_ALIVE_TARGET,
        "leader_available_995": available is not None and available >= LEADER_AVAILABLE_TARGET,
        "leader_available_999_outside_leader_kills": outside is not None
        and outside >= LEADER_AVAILABLE_OUTSIDE_KILLS_TARGET,
        "no_unbounded_growth": not any(m.growing for m in memory),
    }
    return SoakReport(
        duration_s=_seconds(max(0.0, record.ended_at - record.started_at)),
        chaos=record.chaos,
        nodes_expected=len(record.nodes),
        samples=len(record.samples),
        alive_min=min(counts) if counts else None,
        alive_median=float(statistics.median(counts)) if counts else None,
        alive_full_fraction_outside_node_faults=full,
        leader_terms=len(record.terms),
        leader_available_fraction=available,
        failovers=hand,
        failover_max_s=max(gaps) if gaps else None,
        failover_p50_s=_seconds(statistics.median(gaps)) if gaps else None,
        overlaps=both,
        jobs=sorted(record.jobs, key=lambda j: j.kind),
        jobs_total=jobs_total(record.jobs),
        games=games,
        memory=memory,
        faults=faults,
        faults_unrecovered=unrecovered,
        generations=record.generations,
        checks=checks,
        passed=all(checks.values()),
        leader_available_outside_leader_kills=outside,
        leader_kills=len(excused),
    )


def alive_counts(record: SoakRecord) -> list[int]:
    """Expected nodes alive in each sample, in time order (unknown ids are not counted)."""
    expected = {n.node_id for n in record.nodes}
    return [len(expected.intersection(s.alive)) for s in sorted(record.samples, key=_at)]


def alive_full_fraction(record: SoakRecord) -> float | None:
    """Fraction of samples in which every expected node is alive, except the nodes a node fault
    (one with `node` set) has out at that time: from `at` to `recovered_at`, or to the end of
    the run if it never recovered. None without samples."""
    if not record.samples:
        return None
    expected = {n.node_id for n in record.nodes}
    samples = sorted(record.samples, key=_at)
    excused = _excused_nodes([s.t for s in samples], node_fault_windows(record))
    full = sum(expected - out <= set(s.alive) for s, out in zip(samples, excused, strict=True))
    return full / len(samples)


def node_fault_windows(record: SoakRecord) -> list[tuple[float, float, str]]:
    """(from, until, node) of every node fault, sorted."""
    return sorted(
        (f.at, record.ended_at if f.recovered_at is None else f.recovered_at, f.node)
        for f in record.faults
        if f.node is not None
    )


def _excused_nodes(
    times: Sequence[float], windows: Sequence[tuple[float, float, str]]
) -> Iterator[set[str]]:
    """For each of the sorted `times`, the nodes whose window (sorted, inclusive) holds it."""
    opened = 0
    open_windows: list[tuple[float, str]] = []
    for t in times:
        while opened < len(windows) and windows[opened][0] <= t:
            open_windows.append(windows[opened][1:])
            opened += 1
        open_windows = [(until, node) for until, node in open_windows if until >= t]
        yield {node for _, node in open_windows}


def serving_terms(record: SoakRecord) -> list[TermSpan]:
    """The terms as a leader could serve them: a term promised past the moment a fault took
    its node out (killed, or its network cut) counts only until that moment."""
    return [_cut_at_node_fault(t, record.faults) for t in record.terms]


def _cut_at_node_fault(term: TermSpan, faults: Sequence[Fault]) -> TermSpan:
    hits = [
        f.at for f in faults if f.node == term.node and term.valid_from <= f.at < term.valid_until
    ]
    if not hits:
        return term
    return msgspec.structs.replace(term, valid_until=min(hits))


def leader_available_fraction(terms: Sequence[TermSpan], ended_at: float) -> float | None:
    """Fraction of the time from the first term's `valid_from` to `ended_at` that some term was
    valid (the union of their spans). None without terms or without such time."""
    if not terms:
        return None
    start = min(t.valid_from for t in terms)
    if ended_at <= start:
        return None
    covered = union_length([(t.valid_from, t.valid_until) for t in terms], start, ended_at)
    return min(1.0, covered / (ended_at - start))


def leader_kill_windows(record: SoakRecord) -> list[tuple[float, float]]:
    """[at, at + LEADER_KILL_EXCUSED_S] of each node kill whose node held a term at `at`."""
    return [
        (f.at, f.at + LEADER_KILL_EXCUSED_S)
        for f in sorted(record.faults, key=lambda f: f.at)
        if f.kind in NODE_KILLS and _held_lease(f, record.terms)
    ]


def _held_lease(fault: Fault, terms: Sequence[TermSpan]) -> bool:
    return any(t.node == fault.node and t.valid_from <= fault.at < t.valid_until for t in terms)


def available_outside(
    terms: Sequence[TermSpan], ended_at: float, excused: Sequence[tuple[float, float]]
) -> float | None:
    """Like `leader_available_fraction`, over the time outside the `excused` spans only."""
    if not terms:
        return None
    start = min(t.valid_from for t in terms)
    observed = uncovered([*excused], start, ended_at)
    total = sum(hi - lo for lo, hi in observed)
    if total <= 0:
        return None
    spans = [(t.valid_from, t.valid_until) for t in terms]
    covered = sum(union_length(spans, lo, hi) for lo, hi in observed)
    return min(1.0, covered / total)


def uncovered(
    spans: Sequence[tuple[float, float]], lo: float, hi: float
) -> list[tuple[float, float]]:
    """The parts of [lo, hi] that no span covers, in order."""
    gaps, reach = [], lo
    for begin, end in sorted(spans):
        if begin > reach and reach < hi:
            gaps.append((reach, min(begin, hi)))
        reach = max(reach, end)
    if reach < hi:
        gaps.append((reach, hi))
    return gaps


def longest_gap(terms: Sequence[TermSpan], lo: float, hi: float) -> float:
    """The longest stretch of [lo, hi] with no valid term."""
    spans = [(t.valid_from, t.valid_until) for t in terms]
    return max((b - a for a, b in uncovered(spans, lo, hi)), default=0.0)


def union_length(spans: Sequence[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of `spans` within [lo, hi] (empty or inverted spans count 0)."""
    covered, reach = 0.0, lo
    for begin, end in sorted((max(a, lo), min(b, hi)) for a, b in spans):
        begin = max(begin, reach)
        if end > begin:
            covered += end - begin
            reach = end
    return covered


def failovers(terms: Sequence[TermSpan]) -> list[Failover]:
    """Each handover between consecutive terms by term number, with the time no leader held."""
    ordered = sorted(terms, key=lambda t: (t.term, t.valid_from))
    return [
        Failover(
            from_term=a.term,
            to_term=b.term,
            from_node=a.node,
            to_node=b.node,
            gap_s=_seconds(max(0.0, b.valid_from - a.valid_until)),
        )
        for a, b in pairwise(ordered)
    ]


def overlaps(terms: Sequence[TermSpan]) -> list[Overlap]:
    """Every pair of term spans valid at once for some positive time (touching is not
    overlapping), sorted by term numbers."""
    ordered = sorted(terms, key=lambda t: t.valid_from)
    found = []
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.valid_from >= a.valid_until:
                break
            both = min(a.valid_until, b.valid_until) - b.valid_from
            if both > 0:
                low, high = sorted((a.term, b.term))
                found.append(Overlap(low, high, _seconds(both)))
    return sorted(found, key=lambda o: (o.first_term, o.second_term))


def jobs_total(jobs: Sequence[JobCounts]) -> JobCounts:
    """The sum over job kinds, as kind "total"."""
    return JobCounts(
        kind="total",
        submitted=sum(j.submitted for j in jobs),
        deliveries=sum(j.deliveries for j in jobs),
        redelivered=sum(j.redelivered for j in jobs),
        pending=sum(j.pending for j in jobs),
        in_flight=sum(j.in_flight for j in jobs),
        dead_lettered=sum(j.dead_lettered for j in jobs),
        completed=sum(j.completed for j in jobs),
    )


def game_figures(record: SoakRecord) -> GameFigures:
    audit = record.games
    return GameFigures(
        acknowledged=audit.acknowledged,
        stored=audit.stored,
        lost=len(audit.lost),
        duplicated=len(audit.duplicated),
        trained_twice=audit.trained_twice,
        checkpoints_checked=audit.checkpoints_checked,
        lost_ids=sorted(audit.lost)[:IDS_KEPT],
        duplicated_ids=sorted(audit.duplicated)[:IDS_KEPT],
    )


def memory_figures(record: SoakRecord) -> list[MemoryFigures]:
    """Per process label, sorted by label.

    A label's samples are cut into lives: a new life starts where its RSS falls below half the
    previous sample's or where it was missing from the samples in between (the process was
    restarted; the record has no pids). A life "grows without bound" when the mean RSS of its
    last quarter of samples exceeds that of its second quarter by more than 50 MiB and by more
    than 25%, and by more than 50 MiB even without its largest single jump: a leak keeps
    growing, while a one-time step (a worker loading torch and its first model when its first
    job comes) does not. The first quarter is left out as
    warm-up, and lives shorter than 8 samples are not judged. A label is `growing` if any of its
    lives is; `growth_mb` is the largest growth of a judged life (None if none was judged).
    """
    return [_label_figures(label, series) for label, series in sorted(_rss_series(record).items())]


def _rss_series(record: SoakRecord) -> dict[str, list[tuple[int, float]]]:
    """(index of the memory sample, MiB) per label, in time order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for i, sample in enumerate(sorted(record.memory, key=_at)):
        for label, rss in sample.rss.items():
            series.setdefault(label, []).append((i, rss / MB))
    return series


def _label_figures(label: str, series: list[tuple[int, float]]) -> MemoryFigures:
    values = [mb for _, mb in series]
    lives = process_lives(series)
    judged = [g for g in map(life_growth, lives) if g is not None]
    sustained = [s for s in map(keeps_growing, lives) if s is not None]
    return MemoryFigures(
        label=label,
        samples=len(values),
        first_mb=_mb(values[0]),
        last_mb=_mb(values[-1]),
        peak_mb=_mb(max(values)),
        growth_mb=_mb(max(growth for growth, _ in judged)) if judged else None,
        restarts=len(lives) - 1,
        growing=any(
            _unbounded(growth, base) and steady
            for (growth, base), steady in zip(judged, sustained, strict=True)
        ),
    )


def process_lives(series: Sequence[tuple[int, float]]) -> list[list[float]]:
    """A label's (sample index, MiB) cut where the process evidently restarted."""
    lives: list[list[float]] = []
    previous: tuple[int, float] | None = None
    for index, mb in series:
        restarted = previous is None or (
            index > previous[0] + 1 or mb < RESTART_DROP_RATIO * previous[1]
        )
        if restarted:
            lives.append([])
        lives[-1].append(mb)
        previous = (index, mb)
    return lives


def life_growth(life: Sequence[float]) -> tuple[float, float] | None:
    """(last-quarter mean minus second-quarter mean, second-quarter mean); None if too short."""
    n = len(life)
    if n < GROWTH_MIN_SAMPLES:
        return None
    base = statistics.fmean(life[n // 4 : n // 2])
    return statistics.fmean(life[3 * n // 4 :]) - base, base


def keeps_growing(life: Sequence[float]) -> bool | None:
    """Whether the growth from the second quarter to the last is more than GROWTH_MIN_MB even
    without its largest single jump (one step is a load, not a leak); None if too short."""
    n = len(life)
    if n < GROWTH_MIN_SAMPLES:
        return None
    tail = life[n // 4 :]
    growth = statistics.fmean(life[3 * n // 4 :]) - statistics.fmean(life[n // 4 : n // 2])
    jump = max((b - a for a, b in itertools.pairwise(tail)), default=0.0)
    return growth - max(jump, 0.0) > GROWTH_MIN_MB


def _unbounded(growth: float, base: float) -> bool:
    return growth > GROWTH_MIN_MB and growth > GROWTH_MIN_RATIO * base


def fault_figures(
    record: SoakRecord, serving: Sequence[TermSpan] | None = None
) -> list[FaultFigures]:
    """Every fault in time order; the leader gaps only with the `serving` terms."""
    return [
        _fault_figures(f, record.started_at, record.ended_at, serving)
        for f in sorted(record.faults, key=lambda f: f.at)
    ]


def _fault_figures(
    fault: Fault, started_at: float, ended_at: float, serving: Sequence[TermSpan] | None
) -> FaultFigures:
    recovered = fault.recovered_at is not None
    until = ended_at if fault.recovered_at is None else fault.recovered_at
    gap = None if serving is None else _seconds(longest_gap(serving, fault.at, until))
    return FaultFigures(
        kind=fault.kind,
        target=fault.target,
        node=fault.node,
        at_s=_seconds(fault.at - started_at),
        recovery_s=None if fault.recovered_at is None else _seconds(fault.recovered_at - fault.at),
        recovered=recovered,
        detail=fault.detail,
        leader_gap_max_s=gap,
        orders=[order_figures(t, fault.at) for t in fault.orders],
    )


def order_figures(timeline: OrderTimeline, at: float) -> OrderFigures:
    def since(t: float | None) -> float | None:
        return None if t is None else _seconds(t - at)

    t = timeline
    renewed = (
        bool(t.pids_after)
        and not set(t.pids_before) & set(t.pids_after)
        and t.services_started_at is not None
        and t.ordered_at is not None
        and t.services_started_at >= t.ordered_at
    )
    return OrderFigures(
        node=t.node,
        ordered_s=since(t.ordered_at),
        received_s=since(t.received_at),
        done_s=since(t.done_at),
        healthy_s=since(t.healthy_at),
        outcome=t.outcome,
        version=t.version,
        renewed=renewed,
    )


def _at(item: Sample | MemorySample) -> float:
    return item.t


def _seconds(value: float) -> float:
    return round(value, 3)


def _mb(value: float) -> float:
    return round(value, 1)
