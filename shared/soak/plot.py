"""The soak report's SVG: nodes alive and the leader term over time, faults marked."""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

from shared.soak.record import SoakRecord
from shared.soak.report import alive_counts


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
    times = [s.t for s in sorted(record.samples, key=lambda s: s.t)]
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
