"""shared/soak/report.py on small hand-made records with known answers, and on random ones."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.soak.files import write_report
from shared.soak.plot import step_corners, svg
from shared.soak.record import (
    Fault,
    FaultKind,
    GameAudit,
    JobCounts,
    MemorySample,
    NodeSpec,
    Sample,
    SoakRecord,
    TermSpan,
)
from shared.soak.report import (
    CHECKS,
    MB,
    SoakReport,
    leader_available_fraction,
    overlaps,
    report,
)
from shared.soak.summary import markdown

T0 = 1_000_000.0
SVG = "{http://www.w3.org/2000/svg}"
NODES = ["n1", "n2", "n3"]
CLEAN_GAMES = GameAudit(
    acknowledged=10, stored=10, lost=[], duplicated=[], trained_twice=0, checkpoints_checked=2
)


def record(**changes: Any) -> SoakRecord:
    """A clean 100-second run of three nodes, one leader term throughout, changed by `changes`."""
    base = SoakRecord(
        started_at=T0,
        ended_at=T0 + 100,
        nodes=[NodeSpec(n, ["selfplay"], via_leaf=False) for n in NODES],
        chaos=True,
        samples=[Sample(T0 + t, list(NODES)) for t in range(100)],
        terms=[TermSpan(1, "n1", T0, T0 + 100)],
        faults=[],
        memory=[],
        jobs=[],
        games=CLEAN_GAMES,
    )
    return msgspec.structs.replace(base, **changes)


def term(number: int, start: float, end: float, node: str = "n1") -> TermSpan:
    return TermSpan(number, node, T0 + start, T0 + end)


def fault(
    at: float, recovered: float | None, node: str | None = None, kind: FaultKind = "kill-node"
) -> Fault:
    target = node or "n1/selfplay"
    return Fault(kind, target, T0 + at, None if recovered is None else T0 + recovered, node)


def memory(series: Mapping[str, Sequence[float | None]]) -> list[MemorySample]:
    """One memory sample a second from MiB series by label (None: the label is missing)."""
    length = max(len(v) for v in series.values())
    return [
        MemorySample(
            T0 + i,
            {label: int(mb * MB) for label, v in series.items() if (mb := at(v, i)) is not None},
        )
        for i in range(length)
    ]


def at(values: Sequence[float | None], i: int) -> float | None:
    return values[i] if i < len(values) else None


def test_a_clean_run_passes_every_check() -> None:
    rep = report(record())
    assert rep.passed
    assert list(rep.checks) == list(CHECKS)
    assert rep.duration_s == 100
    assert (rep.nodes_expected, rep.alive_min, rep.alive_median) == (3, 3, 3.0)
    assert rep.alive_full_fraction_outside_node_faults == 1.0
    assert rep.leader_available_fraction == 1.0
    assert rep.failovers == [] and rep.failover_max_s is None and rep.failover_p50_s is None


def test_nodes_out_under_a_node_fault_are_excused_and_only_those() -> None:
    samples = [Sample(T0 + t, list(NODES)) for t in range(10)]
    samples[3:6] = [Sample(T0 + t, ["n1", "n2"]) for t in (3, 4, 5)]  # n3 killed at 3, back at 5
    samples[6] = Sample(T0 + 6, ["n1"])  # n2 gone with no node fault, n3 just back
    samples[9] = Sample(T0 + 9, ["n1", "n2"])  # n3 out under a service fault: not excused
    faults = [
        fault(3, 5, node="n3"),
        fault(8.5, 9.5, kind="kill-service"),
    ]
    rep = report(record(samples=samples, faults=faults, ended_at=T0 + 10))
    assert rep.alive_min == 1
    assert rep.alive_median == 2.5  # counts 3 3 3 2 2 2 1 3 3 2
    assert rep.alive_full_fraction_outside_node_faults == pytest.approx(8 / 10)
    assert not rep.checks["nodes_alive_99"]


def test_a_node_fault_never_recovered_excuses_its_node_to_the_end() -> None:
    samples = [Sample(T0 + t, NODES if t < 5 else ["n1", "n2"]) for t in range(10)]
    rep = report(record(samples=samples, faults=[fault(4.5, None, node="n3")], ended_at=T0 + 10))
    assert rep.alive_full_fraction_outside_node_faults == 1.0
    assert rep.checks["nodes_alive_99"]
    assert not rep.checks["all_faults_recovered"]
    assert rep.faults_unrecovered == 1
    assert not rep.passed


def test_leader_availability_counts_from_the_first_term_and_misses_the_gaps() -> None:
    terms = [term(2, 12, 25), term(1, 5, 10)]
    rep = report(record(terms=terms, ended_at=T0 + 20))
    assert rep.leader_available_fraction == pytest.approx((5 + 8) / 15)
    assert not rep.checks["leader_available_995"]
    assert rep.leader_terms == 2


def test_a_term_serves_only_until_a_fault_takes_its_node_out() -> None:
    terms = [term(1, 0, 12, "n1"), term(2, 13, 30, "n2")]
    faults = [fault(10, 14, node="n1"), fault(20, 25, node="n3", kind="cut-network")]
    rep = report(record(terms=terms, faults=faults, ended_at=T0 + 30))
    assert rep.leader_available_fraction == pytest.approx((10 + 17) / 30)
    assert [f.gap_s for f in rep.failovers] == [3.0]
    assert rep.overlaps == []  # promises are still what overlaps are checked on


def test_failovers_follow_term_numbers_and_touching_terms_have_no_gap() -> None:
    terms = [term(3, 20, 30, "n3"), term(1, 0, 10, "n1"), term(2, 10, 18, "n2")]
    rep = report(record(terms=terms, ended_at=T0 + 30))
    assert [(f.from_term, f.to_term, f.from_node, f.to_node, f.gap_s) for f in rep.failovers] == [
        (1, 2, "n1", "n2", 0.0),
        (2, 3, "n2", "n3", 2.0),
    ]
    assert rep.failover_max_s == 2.0
    assert rep.failover_p50_s == 1.0
    assert rep.overlaps == []


def test_terms_valid_at_once_are_overlaps_but_touching_ones_are_not() -> None:
    terms = [term(3, 20, 30), term(2, 9, 20), term(1, 0, 10)]
    rep = report(record(terms=terms, ended_at=T0 + 30))
    assert [(o.first_term, o.second_term, o.overlap_s) for o in rep.overlaps] == [(1, 2, 1.0)]
    assert not rep.checks["overlaps_zero"]
    assert rep.failovers[0].gap_s == 0.0


def test_no_terms_means_no_availability_figure_and_a_failed_check() -> None:
    rep = report(record(terms=[]))
    assert rep.leader_available_fraction is None
    assert not rep.checks["leader_available_995"]


def test_memory_growth_is_judged_per_process_life() -> None:
    steady = [300.0] * 16
    leaking = [100.0 + 20 * i for i in range(16)]
    # Restarted in the second quarter: read as one series, it would seem to grow by 158 MiB.
    restarted = [300.0] * 4 + [100.0, 120, 150, 200] + [300.0] * 8
    missing: list[float | None] = [150.0] * 6 + [None] + [300.0] * 9
    launcher = [20.0 + 3 * i for i in range(16)]  # triples, but by less than 50 MiB
    rep = report(
        record(
            memory=memory(
                {
                    "n1/steady": steady,
                    "n1/leaking": leaking,
                    "n1/restarted": restarted,
                    "n1/missing": missing,
                    "n1/launcher": launcher,
                    "hub/once": [40.0],
                }
            )
        )
    )
    figures = {m.label: m for m in rep.memory}
    assert list(figures) == sorted(figures)
    assert figures["n1/leaking"].growing
    assert figures["n1/leaking"].growth_mb == pytest.approx(
        (sum(leaking[12:]) - sum(leaking[4:8])) / 4, abs=0.1
    )
    assert (figures["n1/leaking"].first_mb, figures["n1/leaking"].peak_mb) == (100.0, 400.0)
    assert not figures["n1/steady"].growing and figures["n1/steady"].growth_mb == 0.0
    assert not figures["n1/restarted"].growing and figures["n1/restarted"].restarts == 1
    assert not figures["n1/missing"].growing and figures["n1/missing"].restarts == 1
    assert not figures["n1/launcher"].growing
    once = figures["hub/once"]
    assert (once.samples, once.first_mb, once.last_mb, once.growth_mb, once.growing) == (
        1,
        40.0,
        40.0,
        None,
        False,
    )
    assert not rep.checks["no_unbounded_growth"]


def test_a_leak_after_a_restart_is_still_found() -> None:
    series = [400.0] * 4 + [100.0 + 30 * i for i in range(12)]
    rep = report(record(memory=memory({"n2/trainer": series})))
    assert rep.memory[0].restarts == 1
    assert rep.memory[0].growing


def test_faults_are_reported_from_the_start_with_their_recovery() -> None:
    faults = [fault(60, None, kind="stop-service"), fault(30, 34.5, node="n2")]
    rep = report(record(faults=faults))
    assert [(f.kind, f.at_s, f.recovery_s, f.recovered) for f in rep.faults] == [
        ("kill-node", 30.0, 4.5, True),
        ("stop-service", 60.0, None, False),
    ]
    assert rep.faults_unrecovered == 1
    assert not rep.checks["all_faults_recovered"]


def test_games_and_jobs_are_counted() -> None:
    games = GameAudit(
        acknowledged=100,
        stored=99,
        lost=[7, 3],
        duplicated=["g9"],
        trained_twice=2,
        checkpoints_checked=4,
    )
    jobs = [
        JobCounts("selfplay", 10, 12, 2, 0, 1, 0, 9),
        JobCounts("eval", 5, 6, 1, 1, 0, 1, 3),
    ]
    rep = report(record(games=games, jobs=jobs))
    assert (rep.games.lost, rep.games.lost_ids, rep.games.duplicated) == (2, [3, 7], 1)
    assert rep.games.trained_twice == 2
    checks = rep.checks
    assert not (checks["lost_zero"] or checks["duplicated_zero"] or checks["trained_twice_zero"])
    assert [j.kind for j in rep.jobs] == ["eval", "selfplay"]
    assert rep.jobs_total == JobCounts("total", 15, 18, 3, 1, 1, 1, 12)


def test_an_empty_record_does_not_crash() -> None:
    empty = SoakRecord(
        started_at=T0,
        ended_at=T0,
        nodes=[],
        chaos=False,
        samples=[],
        terms=[],
        faults=[],
        memory=[],
        jobs=[],
        games=GameAudit(0, 0, [], [], 0, 0),
    )
    rep = report(empty)
    assert (rep.alive_min, rep.alive_median, rep.alive_full_fraction_outside_node_faults) == (
        None,
        None,
        None,
    )
    assert rep.leader_available_fraction is None and rep.memory == [] and rep.faults == []
    assert rep.jobs_total == JobCounts("total", 0, 0, 0, 0, 0, 0, 0)
    assert not rep.passed
    parse_svg(svg(empty))
    assert "FAILED" in markdown(empty, rep)


def test_the_plot_is_svg_with_one_line_per_series_and_a_tick_per_fault() -> None:
    faults = [fault(30, 34.5, node="n2"), fault(60, None, kind="stop-service")]
    terms = [term(1, 0, 40), term(2, 41, 100, "n2")]
    root = parse_svg(svg(record(faults=faults, terms=terms)))
    assert [e.get("id") for e in root.iter(f"{SVG}polyline")] == ["alive"]
    assert [e.get("id") for e in root.iter(f"{SVG}path")] == ["leader-term"]
    path = next(root.iter(f"{SVG}path")).get("d", "")
    assert path.count("M") == 2
    ticks = [e for e in root.iter(f"{SVG}line") if e.get("stroke") == "red"]
    assert len(ticks) == 2
    texts = " ".join(e.text or "" for e in root.iter(f"{SVG}text"))
    assert "minutes from start" in texts and "nodes alive" in texts and "leader term" in texts


def test_the_alive_line_has_corners_only_where_the_count_changes() -> None:
    assert step_corners([0, 1, 2, 3, 4], [3, 3, 2, 2, 3]) == [
        (0, 3),
        (2, 3),
        (2, 2),
        (4, 2),
        (4, 3),
    ]
    assert step_corners([0, 1, 2], [3, 3, 3]) == [(0, 3), (2, 3)]
    assert step_corners([5], [1]) == [(5, 1)]
    assert step_corners([], []) == []


def test_the_markdown_names_every_check_the_plot_and_the_faults() -> None:
    faults = [fault(30, 34.5, node="n2"), fault(60, None, kind="stop-service")]
    rec = record(faults=faults)
    rep = report(rec)
    text = markdown(rec, rep)
    assert all(f"| {name} |" in text for name in CHECKS)
    assert "(soak.svg)" in text
    assert "| 1 | 0.5 | kill-node | n2 | 4.5 |" in text
    assert "| 2 | 1.0 | stop-service | n1/selfplay | **never** |" in text
    assert "| all_faults_recovered | **FAIL** |" in text


def test_write_report_writes_the_record_and_the_report(tmp_path: Path) -> None:
    rec = record(faults=[fault(30, 34.5, node="n2")], memory=memory({"n1/x": [10.0, 11.0]}))
    rep = write_report(rec, tmp_path / "out")
    out = tmp_path / "out"
    assert msgspec.json.decode((out / "record.json").read_bytes(), type=SoakRecord) == rec
    assert msgspec.json.decode((out / "report.json").read_bytes(), type=SoakReport) == rep
    assert (out / "report.md").read_text() == markdown(rec, rep)
    parse_svg((out / "soak.svg").read_text())


def parse_svg(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    return root


spans = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=0, max_size=8).map(
    lambda pairs: [term(n, a, b) for n, (a, b) in zip(range(1, 99), pairs, strict=False)]
)


@settings(max_examples=150, deadline=None)
@given(terms=spans, order=st.randoms(use_true_random=False), end=st.integers(0, 70))
def test_availability_and_overlaps_agree_with_brute_force(
    terms: list[TermSpan], order: Any, end: int
) -> None:
    order.shuffle(terms)
    available = leader_available_fraction(terms, T0 + end)
    if not terms or T0 + end <= min(t.valid_from for t in terms):
        assert available is None
    else:
        start = int(min(t.valid_from for t in terms) - T0)
        # Integer ends: a unit second is covered by a term iff the term holds its midpoint.
        covered = sum(
            any(t.valid_from < T0 + s + 0.5 < t.valid_until for t in terms)
            for s in range(start, end)
        )
        assert available is not None and 0.0 <= available <= 1.0
        assert available == pytest.approx(covered / (end - start))
    brute = sorted(
        tuple(sorted((a.term, b.term)))
        for a, b in itertools.combinations(terms, 2)
        if max(a.valid_from, b.valid_from) < min(a.valid_until, b.valid_until)
    )
    found = overlaps(terms)
    assert [(o.first_term, o.second_term) for o in found] == brute
    assert all(o.first_term < o.second_term and o.overlap_s > 0 for o in found)


times = st.floats(T0 - 10, T0 + 200, allow_nan=False)
samples = st.builds(Sample, times, st.lists(st.sampled_from([*NODES, "stranger"]), max_size=4))
faults = st.builds(
    Fault,
    st.sampled_from(["kill-service", "kill-node", "kill-server", "stop-service", "cut-network"]),
    st.sampled_from(["n1", "n2/selfplay", "hub/n1"]),
    times,
    st.none() | times,
    st.none() | st.sampled_from(NODES),
)
terms = st.builds(TermSpan, st.integers(0, 9), st.sampled_from(NODES), times, times)
memory_samples = st.builds(
    MemorySample,
    times,
    st.dictionaries(st.sampled_from(["n1/a", "n2/b"]), st.integers(0, 10**10), max_size=2),
)


@settings(max_examples=60, deadline=None)
@given(
    samples=st.lists(samples, max_size=30),
    faults=st.lists(faults, max_size=5),
    terms=st.lists(terms, max_size=6),
    memory=st.lists(memory_samples, max_size=30),
    ended=times,
)
def test_random_records_never_crash(
    samples: list[Sample],
    faults: list[Fault],
    terms: list[TermSpan],
    memory: list[MemorySample],
    ended: float,
) -> None:
    rec = record(samples=samples, faults=faults, terms=terms, memory=memory, ended_at=ended)
    rep = report(rec)
    fraction = rep.alive_full_fraction_outside_node_faults
    assert fraction is None or 0.0 <= fraction <= 1.0
    available = rep.leader_available_fraction
    assert available is None or 0.0 <= available <= 1.0
    assert all(f.gap_s >= 0 for f in rep.failovers)
    assert rep.passed == all(rep.checks.values())
    assert set(rep.checks) == set(CHECKS)
    parse_svg(svg(rec))
    markdown(rec, rep)


@pytest.mark.parametrize("step_at", [5, 9, 13])
def test_a_one_time_step_is_warm_up_not_a_leak(step_at: int) -> None:
    """A worker loads torch and its first model when its first job comes, whenever that is."""
    series = [40.0] * step_at + [250.0] * (16 - step_at)
    rep = report(record(memory=memory({"n9/selfplay": series})))
    assert not rep.memory[0].growing and rep.checks["no_unbounded_growth"]
