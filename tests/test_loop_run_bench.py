"""bench/loop_run.py's measuring parts: CPU per service from /proc, and the shares."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.loop_run import CpuLedger, shares


def test_cpu_is_attributed_to_the_service_a_process_runs() -> None:
    # Burns CPU time, not wall time: on a busy machine the child still gets its share.
    burn = "import time\nwhile time.process_time() < 30: pass"
    proc = subprocess.Popen([sys.executable, "-c", burn, "-m", "services.selfplay"])
    try:
        ledger = CpuLedger(os.getpid())
        ledger.read()
        _until_cpu(proc.pid, 0.5)  # the window the ledger measures while the child burns CPU
        ledger.read()
    finally:
        proc.kill()
        proc.wait(10)
    assert ledger.used["selfplay"] > 0.3
    assert ledger.used.get("evaluator", 0.0) == 0.0


def _until_cpu(pid: int, seconds: float, limit_s: float = 60.0) -> None:
    """Wait until process `pid` has used `seconds` of CPU (from /proc), at most `limit_s`."""
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if (int(fields[11]) + int(fields[12])) / tick >= seconds:
            return
        time.sleep(0.05)  # a poll of the child's CPU counter
    raise AssertionError(f"process {pid} used under {seconds} s of CPU in {limit_s} s")


def test_shares_are_over_workers_and_over_services() -> None:
    used = {"selfplay": 60.0, "trainer": 20.0, "evaluator": 10.0, "heartbeat": 10.0, "nats": 50.0}
    out = shares(used)
    assert out["evaluation_of_workers"] == round(10 / 90, 4)
    assert out["evaluation_of_services"] == 0.1
    assert out["selfplay_and_training_of_services"] == 0.8
    assert shares({}) == dict.fromkeys(out)
