"""Work counters of a process (games played, simulations, training steps...), sent with every
pulse, so heartbeats, `conclave status`, the metrics endpoint and the dashboard see throughput
per node without scraping anyone. One `Counters` per service process, made by its frame."""

from __future__ import annotations

import threading

from schemas.control import DeviceReport

CPU = "cpu_s"  # the process's CPU seconds, added to every pulse (the evaluation budget reads it)
DOING_CHARS = 200


class Counters:
    """Monotonic totals since the process started, and what it is working on now (a job id, ""
    when idle). Thread-safe: workers add from threads as well as from the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, float] = {}
        self._doing = ""
        self._compute: DeviceReport | None = None

    def add(self, name: str, amount: float = 1.0) -> None:
        with self._lock:
            self._totals[name] = self._totals.get(name, 0.0) + amount

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._totals)

    def set_doing(self, what: str) -> None:
        with self._lock:
            self._doing = what[:DOING_CHARS]

    def doing(self) -> str:
        with self._lock:
            return self._doing

    def set_compute(self, report: DeviceReport) -> None:
        with self._lock:
            self._compute = report

    def compute(self) -> DeviceReport | None:
        with self._lock:
            return self._compute
