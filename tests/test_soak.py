"""The CI soak: 24 nodes (some behind leaf servers) for 5 minutes with faults, checked by report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from shared.bus.server import pid_alive
from shared.soak import netns
from shared.soak.fleet import NETNS_TAG_FILE
from tests.conftest import Processes, pids_mentioning

pytestmark = pytest.mark.xdist_group("heavy")  # CPU-heavy: one at a time, beside the light tests


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_five_minute_chaos_soak_of_24_nodes_loses_nothing(
    processes: Processes, tmp_path: Path
) -> None:
    report_dir = tmp_path / "report"
    argv = [
        sys.executable, "-m", "shared.cli.main", "soak", "--nodes", "24", "--duration", "5m",
        "--chaos", "--fault-every", "25s", "--report", str(report_dir), "--seed", "1",
    ]  # fmt: skip
    harness = processes.spawn(argv, tmp_path / "soak.out")
    tag_file = report_dir / "data" / NETNS_TAG_FILE
    try:
        harness.wait(1100)
    finally:
        harness.kill()
        netns.remove_recorded(tag_file)  # a killed harness leaves its namespaces behind
    output = (tmp_path / "soak.out").read_text()
    assert (report_dir / "report.json").exists(), output[-3000:]
    report = json.loads((report_dir / "report.json").read_text())
    checks = report["checks"]
    assert checks["overlaps_zero"] and report["overlaps"] == [], output[-3000:]
    assert checks["lost_zero"] and report["games"]["lost"] == 0, output[-3000:]
    assert checks["duplicated_zero"] and report["games"]["duplicated"] == 0, output[-3000:]
    assert checks["all_faults_recovered"] and report["faults_unrecovered"] == 0, output[-3000:]
    assert report["nodes_expected"] == 24
    assert report["games"]["acknowledged"] > 0 and report["games"]["checkpoints_checked"] > 0
    kinds = {fault["kind"] for fault in report["faults"]}
    assert kinds == {"kill-service", "stop-service", "kill-node", "cut-network", "kill-server"}
    for name in ("report.md", "soak.svg", "record.json"):
        assert (report_dir / name).stat().st_size > 0
    # The harness stopped every process it started, and removed its network namespaces.
    assert not [p for p in pids_mentioning(str(tmp_path / "report" / "data")) if pid_alive(p)]
    if tag_file.exists():
        assert "veth" in str(report["faults"]), "namespaces were made but no veth was cut"
        assert netns.leftovers(tag_file.read_text()) == []
