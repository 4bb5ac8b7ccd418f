"""bench/membership.py at a tiny size on a real nats-server: its JSON, and nothing left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Processes, pids_mentioning

NODES, KILL = 20, 3


def test_twenty_nodes_three_killed_are_noticed_once_their_status_is_older_than_the_ttl(
    tmp_path: Path, processes: Processes
) -> None:
    # TMPDIR puts the bench's work directory under tmp_path, so the server and every worker it
    # starts name tmp_path on their command line (and the fixture's teardown ends any left over).
    argv = [sys.executable, "bench/membership.py", "--json", "--nodes", str(NODES)]
    argv += ["--processes", "2", "--kill", str(KILL), "--warmup", "1.5", "--duration", "4"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert pids_mentioning(str(tmp_path)) == []

    assert (out["nodes"], out["processes"], out["connections"]) == (NODES, 2, NODES)
    assert (out["every_s"], out["ttl_s"]) == (1.0, 5)
    assert out["killed"] == out["detected"] == KILL
    assert out["false_deaths"] == 0 and out["write_failures"] == 0 and out["bad_values"] == 0
    assert out["read_failures"] == 0
    # A status counts until its last write is 5 s old by the server's clock (the key's TTL).
    assert 4.9 <= out["detect_death_p50_s"] <= out["detect_death_s"] <= 10
    assert out["detect_death_s"] <= out["detect_death_max_s"] <= 10
    assert out["live_max_gap_s"] < out["ttl_s"]
    assert 3.5 <= out["duration_s"] <= 6
    assert 0.7 * NODES <= out["writes_per_s"] <= 1.1 * NODES
    assert out["server_in_msgs_per_s"] >= out["writes_per_s"] * 0.9
    assert out["writes"] >= NODES * 4
    assert out["server_cpu_cores"] > 0 and out["client_cpu_cores"] > 0
    per_node = out["server_cpu_cores"] * 1000 / NODES
    assert out["server_cpu_per_node_ms_per_s"] == pytest.approx(per_node, abs=0.01)
