"""Rolling fleet orders under the soak harness: a `fleet restart --rolling` of a 6-node cluster
renews every node's services, loses no acknowledged game, never has two leaders, and leaves the
cluster without a leader for no more than a short handover. Also the fleet faults' options and
report figures, without running anything."""

from __future__ import annotations

import json
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from shared.bus.server import pid_alive
from shared.soak import netns
from shared.soak.fleet import NETNS_TAG_FILE
from shared.soak.harness import ALL_FAULT_KINDS, FAULT_KINDS, SoakOptions, parse_faults
from shared.soak.record import Fault, GameAudit, OrderTimeline, SoakRecord, TermSpan
from shared.soak.report import available_outside, longest_gap, report
from shared.soak.wheel import bumped
from tests.conftest import Processes, pids_mentioning

HANDOVER_MAX_S = 5.0  # longest time without a valid leader term during the rolling restart


def test_fault_kinds_default_to_the_five_and_all_adds_the_fleet_ones() -> None:
    assert SoakOptions(data_dir="d", report_dir="r").faults == FAULT_KINDS
    assert parse_faults("default") == FAULT_KINDS
    assert parse_faults("all") == ALL_FAULT_KINDS and len(ALL_FAULT_KINDS) == 9
    assert parse_faults("drain, rolling-restart") == ("drain", "rolling-restart")
    with pytest.raises(ValueError, match="unknown fault kind 'reboot'"):
        parse_faults("drain,reboot")
    with pytest.raises(ValueError, match="at least one"):
        parse_faults(" , ")


def test_a_bumped_version_is_the_next_patch() -> None:
    assert bumped("0.1.0") == "0.1.1" and bumped("2.9.19") == "2.9.20"


def test_leader_availability_leaves_out_the_minute_after_each_leader_kill() -> None:
    terms = [TermSpan(1, "n01", 0.0, 100.0), TermSpan(2, "n02", 110.0, 400.0)]
    assert available_outside(terms, 400.0, []) == pytest.approx(390 / 400)
    assert available_outside(terms, 400.0, [(100.0, 160.0)]) == 1.0
    assert available_outside(terms, 400.0, [(50.0, 105.0)]) == pytest.approx(340 / 345)
    assert longest_gap(terms, 0.0, 400.0) == 10.0
    assert longest_gap(terms, 120.0, 130.0) == 0.0


def _record(faults: list[Fault], terms: list[TermSpan]) -> SoakRecord:
    games = GameAudit(
        acknowledged=0, stored=0, lost=[], duplicated=[], trained_twice=0, checkpoints_checked=0
    )
    return SoakRecord(
        started_at=0.0, ended_at=400.0, nodes=[], chaos=True, samples=[], terms=terms,
        faults=faults, memory=[], jobs=[], games=games,
    )  # fmt: skip


def test_the_report_excuses_only_kills_of_the_leaders_node_and_times_each_order() -> None:
    terms = [TermSpan(1, "n01", 0.0, 103.0), TermSpan(2, "n02", 130.0, 400.0)]
    timeline = OrderTimeline(
        "n03", 200.0, 201.0, 202.5, 204.0, "done", "0.1.1", [10, 11], [12, 13], 202.0
    )
    faults = [
        Fault("kill-node", "n01", 100.0, 110.0, node="n01"),  # held the lease until then
        Fault("kill-leader-node", "n05", 300.0, 310.0, node="n05"),  # did not: not excused
        Fault("rolling-upgrade", "every node", 200.0, 220.0, orders=[timeline]),
    ]
    rep = report(_record(faults, terms))
    assert rep.leader_kills == 1
    assert rep.leader_available_outside_leader_kills == 1.0
    assert not rep.checks["leader_available_995"]  # the 30 s gap counts there
    assert rep.checks["leader_available_999_outside_leader_kills"]
    upgrade = rep.faults[1]
    assert upgrade.kind == "rolling-upgrade" and upgrade.leader_gap_max_s == 0.0
    [order] = upgrade.orders
    assert (order.ordered_s, order.received_s, order.done_s, order.healthy_s) == (0, 1, 2.5, 4)
    assert order.renewed and order.version == "0.1.1"
    assert rep.faults[0].leader_gap_max_s == 10.0  # the node's term is cut at the kill


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # CPU-heavy: one at a time, beside the light tests
@pytest.mark.timeout(420)
def test_a_rolling_restart_of_6_nodes_renews_every_node_with_one_short_handover(
    processes: Processes, tmp_path: Path
) -> None:
    report_dir = tmp_path / "report"
    argv = [
        sys.executable, "-m", "shared.cli.main", "soak", "--nodes", "6", "--duration", "90s",
        "--chaos", "--fault-every", "20s", "--faults", "rolling-restart",
        "--report", str(report_dir), "--seed", "1",
    ]  # fmt: skip
    harness = processes.spawn(argv, tmp_path / "soak.out")
    tag_file = report_dir / "data" / NETNS_TAG_FILE
    try:
        harness.wait(380)
    finally:
        harness.kill()
        netns.remove_recorded(tag_file)
    output = (tmp_path / "soak.out").read_text()
    assert (report_dir / "report.json").exists(), output[-3000:]
    rep = json.loads((report_dir / "report.json").read_text())
    record = json.loads((report_dir / "record.json").read_text())

    [fault] = [f for f in rep["faults"] if f["kind"] == "rolling-restart"][:1]
    assert fault["recovered"], output[-3000:]
    assert fault["leader_gap_max_s"] <= HANDOVER_MAX_S, fault
    orders = {o["node"]: o for o in fault["orders"]}
    assert sorted(orders) == [f"n{i:02d}" for i in range(1, 7)]
    for node, order in orders.items():
        assert order["outcome"] == "done" and order["healthy_s"] is not None, order
        assert order["renewed"], (node, order)  # new pids, started after the order
    [timelines] = [f["orders"] for f in record["faults"] if f["kind"] == "rolling-restart"][:1]
    for t in timelines:
        assert t["pids_after"] and not set(t["pids_before"]) & set(t["pids_after"]), t
    # One at a time: each node is ordered only once the one before is healthy again.
    ordered = sorted(orders.values(), key=lambda o: o["ordered_s"])
    for before, after in pairwise(ordered):
        assert after["ordered_s"] >= before["healthy_s"] - 1.0, (before, after)

    assert rep["overlaps"] == [] and rep["checks"]["overlaps_zero"], output[-3000:]
    assert rep["games"]["lost"] == 0 and rep["games"]["duplicated"] == 0, output[-3000:]
    assert rep["games"]["acknowledged"] > 0
    assert "per node" in (report_dir / "report.md").read_text()
    assert not [p for p in pids_mentioning(str(report_dir / "data")) if pid_alive(p)]
