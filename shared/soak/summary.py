"""The soak report's short markdown summary: figures, checks, jobs, faults and memory."""

from __future__ import annotations

from shared.soak.record import SoakRecord
from shared.soak.report import LEADER_KILL_EXCUSED_S, FaultFigures, SoakReport

MEMORY_ROWS = 8


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
        *_orders_tables(rep),
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
        (
            f"leader available outside the {LEADER_KILL_EXCUSED_S:.0f} s after each of "
            f"{rep.leader_kills} leader-node kills",
            _percent(rep.leader_available_outside_leader_kills),
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
        "| # | at (min) | kind | target | recovery (s) | longest leaderless (s) | detail |",
        "|---:|---:|---|---|---:|---:|---|",
        *(
            f"| {i} | {f.at_s / 60:.1f} | {f.kind} | {f.target} | "
            f"{_text(f.recovery_s) if f.recovered else '**never**'} | "
            f"{_text(f.leader_gap_max_s)} | {f.detail} |"
            for i, f in enumerate(rep.faults, 1)
        ),
    ]


def _orders_tables(rep: SoakReport) -> list[str]:
    """Per-node timelines of each rolling restart or upgrade."""
    lines = []
    for i, fault in enumerate(rep.faults, 1):
        if fault.orders:
            lines += ["", f"## Fault {i}: {fault.kind}, per node", "", *_order_rows(fault)]
    return lines


def _order_rows(fault: FaultFigures) -> list[str]:
    return [
        "Seconds from the fault's start: the order issued, taken, answered, healthy again.",
        "",
        "| node | ordered | taken | answered | healthy | outcome | version | new services |",
        "|---|---:|---:|---:|---:|---|---|---|",
        *(
            f"| {o.node} | {_text(o.ordered_s)} | {_text(o.received_s)} | {_text(o.done_s)} | "
            f"{_text(o.healthy_s) if o.healthy_s is not None else '**never**'} | "
            f"{o.outcome or '-'} | {o.version or '-'} | {'yes' if o.renewed else '**no**'} |"
            for o in fault.orders
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


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.3f}%"


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
