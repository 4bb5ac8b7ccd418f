"""The soak report: figures and pass/fail checks computed from a `SoakRecord`, a short markdown
summary and an SVG plot of nodes alive and leader term over time.

Everything here is a pure function of the record except `write_report`, which writes
record.json, report.json, report.md and soak.svg into a directory.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from xml.sax.saxutils import escape

import msgspec

from shared.soak.record import (
    Fault,
    FaultKind,
    JobCounts,
    MemorySample,
    Sample,
    SoakRecord,
    TermSpan,
)

MB = 1024 * 1024
NODES_ALIVE_TARGET = 0.99
LEADER_AVAILABLE_TARGET = 0.995
GROWTH_MIN_MB = 50.0
GROWTH_MIN_RATIO = 0.25
GROWTH_MIN_SAMPLES = 8
RESTART_DROP_RATIO = 0.5
IDS_KEPT = 100
MEMORY_ROWS = 8

CHECKS = (
    "overlaps_zero",
    "lost_zero",
    "duplicated_zero",
    "trained_twice_zero",
    "all_faults_recovered",
    "nodes_alive_99",
    "leader_available_995",
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


class FaultFigures(msgspec.Struct, frozen=True):
    """One injected fault: `at_s` from the start of the run, `recovery_s` from injection."""

    kind: FaultKind
    target: str
    node: str | None
    at_s: float
    recovery_s: float | None
    recovered: bool
    detail: str


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
    faults = fault_figures(record)
    unrecovered = sum(not f.recovered for f in faults)
    checks = {
        "overlaps_zero": not both,
        "lost_zero": games.lost == 0,
        "duplicated_zero": games.duplicated == 0,
        "trained_twice_zero": games.trained_twice == 0,
        "all_faults_recovered": unrecovered == 0,
        "nodes_alive_99": full is not None and full >= NODES_ALIVE_TARGET,
        "leader_available_995": available is not None and available >= LEADER_AVAILABLE_TARGET,
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


def fault_figures(record: SoakRecord) -> list[FaultFigures]:
    return [_fault_figures(f, record.started_at) for f in sorted(record.faults, key=lambda f: f.at)]


def _fault_figures(fault: Fault, started_at: float) -> FaultFigures:
    recovered = fault.recovered_at is not None
    return FaultFigures(
        kind=fault.kind,
        target=fault.target,
        node=fault.node,
        at_s=_seconds(fault.at - started_at),
        recovery_s=None if fault.recovered_at is None else _seconds(fault.recovered_at - fault.at),
        recovered=recovered,
        detail=fault.detail,
    )


def markdown(record: SoakRecord, rep: SoakReport) -> str:
    """A short summary: the figures, the checks, jobs, faults and the memory that grew most."""
    lines = [
        f"# Soak report: {'PASSED' if rep.passed else 'FAILED'}",
        "",
        f"{rep.duration_s / 60:.1f} minutes, {rep.nodes_expected} nodes "
        f"({sum(n.via_leaf for n in record.nodes)} via a leaf), chaos "
        f"{'on' if rep.chaos else 'off'}, {rep.generations} generations promoted.",
        "",
        "![nodes alive and leader term over time](soak.svg)",
        "",
        *_figures_table(rep),
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {name} | {'pass' if ok else '**FAIL**'} |" for name, ok in rep.checks.items()),
        *_overlap_lines(rep),
        *_game_id_lines(rep),
        *_jobs_table(rep),
        *_faults_table(rep),
        *_memory_table(rep),
    ]
    return "\n".join(lines) + "\n"


def _figures_table(rep: SoakReport) -> list[str]:
    games = rep.games
    total = rep.jobs_total
    grown = sum(m.growing for m in rep.memory)
    rows = [
        ("nodes alive, min / median", f"{_text(rep.alive_min)} / {_text(rep.alive_median)}"),
        (
            "samples with every node alive, outside node faults",
            _percent(rep.alive_full_fraction_outside_node_faults),
        ),
        (
            "leader available (a term counts until its node is killed or cut off)",
            _percent(rep.leader_available_fraction),
        ),
        ("leader terms / failovers", f"{rep.leader_terms} / {len(rep.failovers)}"),
        (
            "failover gap, median / max (s)",
            f"{_text(rep.failover_p50_s)} / {_text(rep.failover_max_s)}",
        ),
        ("overlapping terms", str(len(rep.overlaps))),
        (
            "jobs completed / redelivered / dead-lettered",
            f"{total.completed} / {total.redelivered} / {total.dead_lettered}",
        ),
        ("games acknowledged / stored", f"{games.acknowledged} / {games.stored}"),
        ("games lost / duplicated", f"{games.lost} / {games.duplicated}"),
        (
            "games trained twice (checkpoints checked)",
            f"{games.trained_twice} ({games.checkpoints_checked})",
        ),
        ("processes growing without bound", f"{grown} of {len(rep.memory)}"),
        ("faults injected / unrecovered", f"{len(rep.faults)} / {rep.faults_unrecovered}"),
    ]
    return ["| figure | value |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)]


def _overlap_lines(rep: SoakReport) -> list[str]:
    if not rep.overlaps:
        return []
    pairs = ", ".join(f"{o.first_term} & {o.second_term} ({o.overlap_s} s)" for o in rep.overlaps)
    return ["", f"Overlapping terms: {pairs}."]


def _game_id_lines(rep: SoakReport) -> list[str]:
    lines = []
    if rep.games.lost_ids:
        lines += ["", f"Lost game sequences: {', '.join(map(str, rep.games.lost_ids))}."]
    if rep.games.duplicated_ids:
        lines += ["", f"Duplicated game ids: {', '.join(rep.games.duplicated_ids)}."]
    return lines


def _jobs_table(rep: SoakReport) -> list[str]:
    if not rep.jobs:
        return []
    head = "| kind | submitted | completed | redelivered | dead-lettered | pending | in flight |"
    return [
        "",
        "## Jobs",
        "",
        head,
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {j.kind} | {j.submitted} | {j.completed} | {j.redelivered} | "
            f"{j.dead_lettered} | {j.pending} | {j.in_flight} |"
            for j in [*rep.jobs, rep.jobs_total]
        ),
    ]


def _faults_table(rep: SoakReport) -> list[str]:
    if not rep.faults:
        return ["", "No faults injected."]
    return [
        "",
        "## Faults",
        "",
        "| # | at (min) | kind | target | recovery (s) |",
        "|---:|---:|---|---|---:|",
        *(
            f"| {i} | {f.at_s / 60:.1f} | {f.kind} | {f.target} | "
            f"{_text(f.recovery_s) if f.recovered else '**never**'} |"
            for i, f in enumerate(rep.faults, 1)
        ),
    ]


def _memory_table(rep: SoakReport) -> list[str]:
    """The growing processes and those that grew most, not every one of the run."""
    judged = sorted(rep.memory, key=lambda m: (not m.growing, -(m.growth_mb or 0.0)))
    shown = [m for i, m in enumerate(judged) if m.growing or i < MEMORY_ROWS]
    if not shown:
        return []
    return [
        "",
        f"## Memory (MiB; {len(shown)} of {len(rep.memory)} processes, largest growth first)",
        "",
        "| process | first | last | peak | growth | restarts | growing |",
        "|---|---:|---:|---:|---:|---:|---|",
        *(
            f"| {m.label} | {m.first_mb} | {m.last_mb} | {m.peak_mb} | {_text(m.growth_mb)} | "
            f"{m.restarts} | {'**yes**' if m.growing else 'no'} |"
            for m in shown
        ),
    ]


class _Plot:
    """Where a time (seconds since the epoch) or a value falls in the SVG."""

    width, left, right, top = 760, 64, 24, 40
    panel, gap = 150, 56

    def __init__(self, record: SoakRecord) -> None:
        self.start = record.started_at
        self.span = max(record.ended_at - record.started_at, 1e-9)

    def x(self, t: float) -> float:
        share = min(1.0, max(0.0, (t - self.start) / self.span))
        return self.left + share * (self.width - self.left - self.right)

    def panel_top(self, panel: int) -> float:
        return self.top + panel * (self.panel + self.gap)

    def y(self, panel: int, value: float, lo: float, hi: float) -> float:
        share = (value - lo) / ((hi - lo) or 1.0)
        return self.panel_top(panel) + self.panel * (1.0 - share)

    @property
    def height(self) -> float:
        return self.panel_top(2) + 10


def svg(record: SoakRecord) -> str:
    """Nodes alive (a step line, top panel) and the leader term (one segment per term's
    validity, bottom panel) against minutes from the start; faults are numbered red ticks (as
    in the markdown faults table) with their outage shaded."""
    plot = _Plot(record)
    parts = [
        f'<text x="{plot.left}" y="20" font-size="14">Soak: nodes alive and leader term '
        f"({len(record.faults)} faults injected)</text>",
        *_time_axis(plot),
        *_fault_marks(record, plot),
        *_alive_panel(record, plot),
        *_term_panel(record, plot),
    ]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{plot.width}" '
        f'height="{plot.height:.0f}" font-family="sans-serif">\n' + "\n".join(parts) + "\n</svg>\n"
    )


def _time_axis(plot: _Plot) -> list[str]:
    minutes = plot.span / 60
    step = next((s for s in (0.25, 0.5, 1, 2, 5, 10, 15, 30, 60) if minutes / s <= 8), 120.0)
    bottom = plot.panel_top(1) + plot.panel
    parts = []
    for i in range(int(minutes / step) + 1):
        x = plot.x(plot.start + i * step * 60)
        for panel in (0, 1):
            top = plot.panel_top(panel)
            parts.append(
                f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{top + plot.panel:.1f}" '
                f'stroke="#e4e4e4"/>'
            )
        parts.append(
            f'<text x="{x:.1f}" y="{bottom + 16:.1f}" font-size="11" '
            f'text-anchor="middle">{i * step:g}</text>'
        )
    parts.append(
        f'<text x="{plot.x(plot.start + plot.span / 2):.1f}" y="{bottom + 34:.1f}" '
        f'font-size="12" text-anchor="middle">minutes from start</text>'
    )
    return parts


def _fault_marks(record: SoakRecord, plot: _Plot) -> list[str]:
    parts = []
    bottom = plot.panel_top(1) + plot.panel
    for i, fault in enumerate(sorted(record.faults, key=lambda f: f.at), 1):
        x = plot.x(fault.at)
        end = plot.x(record.ended_at if fault.recovered_at is None else fault.recovered_at)
        recovery = (
            "never recovered"
            if fault.recovered_at is None
            else f"recovered in {fault.recovered_at - fault.at:.1f} s"
        )
        title = escape(f"{i}: {fault.kind} {fault.target}, {recovery}")
        for panel in (0, 1):
            parts.append(
                f'<rect x="{x:.1f}" y="{plot.panel_top(panel):.1f}" width="{max(end - x, 0):.1f}" '
                f'height="{plot.panel}" fill="red" fill-opacity="0.08"/>'
            )
        parts.append(
            f'<line x1="{x:.1f}" y1="{plot.top - 6}" x2="{x:.1f}" y2="{bottom:.1f}" '
            f'stroke="red" stroke-width="1"><title>{title}</title></line>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{plot.top - 8}" font-size="9" fill="red" '
            f'text-anchor="middle">{i}<title>{title}</title></text>'
        )
    return parts


def _alive_panel(record: SoakRecord, plot: _Plot) -> list[str]:
    counts = alive_counts(record)
    times = [s.t for s in sorted(record.samples, key=_at)]
    hi = float(max([len(record.nodes), 1, *counts]))
    points = " ".join(
        f"{plot.x(t):.1f},{plot.y(0, c, 0.0, hi):.1f}" for t, c in step_corners(times, counts)
    )
    expected_y = plot.y(0, len(record.nodes), 0.0, hi)
    return [
        *_panel_frame(plot, 0, "nodes alive", (0.0, hi), [0, len(record.nodes)]),
        f'<line x1="{plot.x(plot.start):.1f}" y1="{expected_y:.1f}" '
        f'x2="{plot.x(plot.start + plot.span):.1f}" y2="{expected_y:.1f}" stroke="gray" '
        f'stroke-dasharray="4 3"/>',
        f'<polyline id="alive" fill="none" stroke="steelblue" stroke-width="1.5" '
        f'points="{points}"/>',
    ]


def step_corners(times: Sequence[float], values: Sequence[int]) -> list[tuple[float, int]]:
    """The corners of a step line through (time, value): one pair per change, so an hours-long
    run at one sample a second stays a small drawing."""
    corners: list[tuple[float, int]] = []
    for t, value in zip(times, values, strict=True):
        if corners and value != corners[-1][1]:
            corners.append((t, corners[-1][1]))
        if not corners or value != corners[-1][1]:
            corners.append((t, value))
    if times and corners[-1][0] != times[-1]:
        corners.append((times[-1], corners[-1][1]))
    return corners


def _term_panel(record: SoakRecord, plot: _Plot) -> list[str]:
    numbers = [t.term for t in record.terms] or [0]
    lo, hi = min(numbers) - 0.5, max(numbers) + 0.5
    ticks = [min(numbers), max(numbers)] if record.terms else []
    segments = " ".join(
        f"M{plot.x(t.valid_from):.1f},{plot.y(1, t.term, lo, hi):.1f} "
        f"H{plot.x(max(t.valid_from, t.valid_until)):.1f}"
        for t in sorted(record.terms, key=lambda t: t.valid_from)
    )
    return [
        *_panel_frame(plot, 1, "leader term", (lo, hi), ticks),
        f'<path id="leader-term" fill="none" stroke="black" stroke-width="2" d="{segments}"/>',
    ]


def _panel_frame(
    plot: _Plot, panel: int, label: str, scale: tuple[float, float], ticks: Sequence[int]
) -> list[str]:
    """The panel's border, its y label and the values `ticks` on its y axis."""
    top = plot.panel_top(panel)
    tick_texts = [
        f'<text x="{plot.left - 6}" y="{plot.y(panel, v, *scale) + 4:.1f}" '
        f'font-size="11" text-anchor="end">{v}</text>'
        for v in sorted(set(ticks))
    ]
    middle = top + plot.panel / 2
    return [
        f'<rect x="{plot.left}" y="{top:.1f}" width="{plot.width - plot.left - plot.right}" '
        f'height="{plot.panel}" fill="none" stroke="#999"/>',
        f'<text x="16" y="{middle:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 16 {middle:.1f})">{label}</text>',
        *tick_texts,
    ]


def write_report(record: SoakRecord, out_dir: Path) -> SoakReport:
    """Write record.json, report.json, report.md and soak.svg into `out_dir`; return the report."""
    rep = report(record)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "record.json").write_bytes(msgspec.json.encode(record))
    (out_dir / "report.json").write_bytes(msgspec.json.format(msgspec.json.encode(rep)) + b"\n")
    (out_dir / "report.md").write_text(markdown(record, rep))
    (out_dir / "soak.svg").write_text(svg(record))
    return rep


def _at(item: Sample | MemorySample) -> float:
    return item.t


def _seconds(value: float) -> float:
    return round(value, 3)


def _mb(value: float) -> float:
    return round(value, 1)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.3f}%"


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
