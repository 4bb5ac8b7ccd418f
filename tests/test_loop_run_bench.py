"""bench/loop_run.py's measuring parts: CPU per service from /proc, and the shares."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.loop_run import CpuLedger, shares


def test_cpu_is_attributed_to_the_service_a_process_runs() -> None:
    burn = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", burn, "-m", "services.selfplay"])
    try:
        ledger = CpuLedger(os.getpid())
        ledger.read()
        time.sleep(1.0)  # the window the ledger measures while the child burns CPU
        ledger.read()
    finally:
        proc.wait(10)
    assert ledger.used["selfplay"] > 0.3
    assert ledger.used.get("evaluator", 0.0) == 0.0


def test_shares_are_over_workers_and_over_services() -> None:
    used = {"selfplay": 60.0, "trainer": 20.0, "evaluator": 10.0, "heartbeat": 10.0, "nats": 50.0}
    out = shares(used)
    assert out["evaluation_of_workers"] == round(10 / 90, 4)
    assert out["evaluation_of_services"] == 0.1
    assert out["selfplay_and_training_of_services"] == 0.8
    assert shares({}) == dict.fromkeys(out)
