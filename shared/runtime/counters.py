"""Work counters of this process (games played, simulations, training steps...), sent with every
pulse, so heartbeats, `conclave status`, the metrics endpoint and the dashboard see throughput
per node without scraping anyone. Thread-safe; monotonic totals since the process started."""

from __future__ import annotations

import threading

CPU = "cpu_s"  # the process's CPU seconds, added to every pulse (the evaluation budget reads it)

_lock = threading.Lock()
_totals: dict[str, float] = {}
_doing = [""]  # what the process is working on now (a job id), "" when idle


def add(name: str, amount: float = 1.0) -> None:
    with _lock:
        _totals[name] = _totals.get(name, 0.0) + amount


def snapshot() -> dict[str, float]:
    with _lock:
        return dict(_totals)


def set_doing(what: str) -> None:
    _doing[0] = what[:200]


def doing() -> str:
    return _doing[0]
