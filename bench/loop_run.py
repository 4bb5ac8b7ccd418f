"""A timed `conclave up` run, measured from outside: CPU per service and the loop's cadence.

    .venv/bin/python bench/loop_run.py --game connect4 --minutes 60 --data DIR [--json]
        [-- extra `conclave up` options]

Every 5 s it reads /proc for each process under `conclave up` and adds the CPU time each used
since the last reading to its service (`services.selfplay`, `services.evaluator`, ...; the NATS
server and the `up` process itself are `nats` and `up`). At the end it stops the run (SIGTERM)
and reads the bus: every candidate with the time until its decision (promoted or rejected), and
the games stored. Prints JSON: CPU seconds and shares per service (evaluation over the workers'
CPU, self-play + training over the services' CPU), the decisions, and the best checkpoint's path
for `bench/strength.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import names
from schemas.codec import decode
from schemas.jobs import ModelEvent
from shared.bus.client import BusConfig, NatsBus
from shared.bus.server import free_port
from shared.loop.evalplan import WORKER_SERVICES

TICKS = os.sysconf("SC_CLK_TCK")
SERVICES = ("selfplay", "trainer", "evaluator", "scheduler", "leader", "heartbeat", "syncer")


def children(root: int) -> dict[int, list[int]]:
    """pid -> child pids, for every process now."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(root: int) -> list[int]:
    tree, found, todo = children(root), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += tree.get(pid, [])
    return found


def service_of(pid: int, root: int) -> str:
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    words = [a.decode(errors="replace") for a in argv]
    for word in words:
        if word.startswith("services.") and word.removeprefix("services.") in SERVICES:
            return word.removeprefix("services.")
    if any("nats-server" in w for w in words):
        return "nats"
    return "up" if pid == root else "other"


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


class CpuLedger:
    """CPU seconds per service, summed from each process's increments between readings."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.last: dict[int, float] = {}
        self.used: dict[str, float] = {}

    def read(self) -> None:
        for pid in descendants(self.root):
            seconds = cpu_seconds(pid)
            if seconds is None:
                continue
            service = service_of(pid, self.root)
            spent = seconds - self.last.get(pid, 0.0)
            self.used[service] = self.used.get(service, 0.0) + max(0.0, spent)
            self.last[pid] = seconds


def shares(used: dict[str, float]) -> dict[str, float | None]:
    workers = sum(used.get(s, 0.0) for s in WORKER_SERVICES)
    services = sum(v for k, v in used.items() if k in SERVICES)
    evaluation = used.get("evaluator", 0.0)
    learning = used.get("selfplay", 0.0) + used.get("trainer", 0.0)
    return {
        "evaluation_of_workers": _ratio(evaluation, workers),
        "evaluation_of_services": _ratio(evaluation, services),
        "selfplay_and_training_of_services": _ratio(learning, services),
    }


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


async def decisions(url: str, seed: Path, game: str) -> dict[str, Any]:
    """Every candidate of `game` and how long its decision took, and the games stored."""
    bus = await NatsBus.connect(BusConfig(servers=[url], name="loop-run", nkey_seed=str(seed)))
    try:
        msgs = await bus.read_all(names.EVENTS_STREAM, names.model_event_subject("*"))
        games = sum(
            (await bus.subject_counts(names.GAMES_STREAM, names.games_subject(game))).values()
        )
    finally:
        await bus.close()
    events = [decode(m.data, ModelEvent) for m in msgs]
    events = [e for e in events if e.game == game]
    candidates = {e.sha256: e for e in events if e.kind == "candidate"}
    rows = []
    for e in events:
        if e.kind in ("promoted", "rejected") and e.sha256 in candidates:
            waited = e.at - candidates[e.sha256].at
            rows.append({"generation": e.generation, "kind": e.kind, "waited_s": round(waited, 1)})
    undecided = [
        {"generation": c.generation, "waiting_s": round(time.time() - c.at, 1)}
        for sha, c in candidates.items()
        if not any(e.sha256 == sha and e.kind != "candidate" for e in events)
    ]
    return {"decisions": rows, "undecided": undecided, "games": games}


def best_checkpoint(data: Path, game: str) -> str | None:
    found = sorted((data / "run" / game).glob("gen*.ckpt"))
    return str(found[-1]) if found else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    data = Path(args.data).absolute()
    argv = [
        sys.executable, "-m", "shared.cli.main", "up", "--game", args.game,
        "--data-dir", str(data), "--nats-port", str(port), *args.up,
    ]  # fmt: skip
    log = (data.parent / f"{data.name}-up.out").open("wb")
    up = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ledger = CpuLedger(up.pid)
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.minutes * 60 and up.poll() is None:
            ledger.read()
            time.sleep(5.0)
        ledger.read()
        summary = asyncio.run(
            decisions(f"nats://127.0.0.1:{port}", data / "auth" / "admin.nk", args.game)
        )
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()
    waits = [d["waited_s"] for d in summary["decisions"]]
    return {
        "game": args.game,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "cpu_s": {k: round(v, 1) for k, v in sorted(ledger.used.items())},
        "shares": shares(ledger.used),
        "promoted": sum(d["kind"] == "promoted" for d in summary["decisions"]),
        "rejected": sum(d["kind"] == "rejected" for d in summary["decisions"]),
        "longest_decision_wait_s": max(waits, default=None),
        **summary,
        "best_checkpoint": best_checkpoint(data, args.game),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="connect4")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--data", required=True, help="a new data directory for the run")
    parser.add_argument("--json", action="store_true", help="print JSON (the only output)")
    parser.add_argument("up", nargs="*", help="extra `conclave up` options, after --")
    args = parser.parse_args(argv)
    out = run(args)
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
