"""Consumers on the hub over a `conclave up` run: do one-off readers leave them behind?

    .venv/bin/python bench/consumers.py --minutes 20 [--every 30] [--game tictactoe]
        [--data DIR] [--bound N] [-- extra `conclave up` options]

Runs `conclave up --game GAME --data-dir DIR --nats-port P` (DIR: a new temporary directory,
removed afterwards, unless `--data` names one; P: a free port) for `--minutes`. Every `--every`
seconds it reads the hub's monitoring endpoint (`/jsz?accounts=true&streams=true`; its address
from the ports file the server writes under DIR/nats/ports) and records each stream's consumer
count, durable and one-off alike. Then it stops the run (SIGTERM to its process group, SIGKILL
after 120 s) and prints JSON: per stream the max and last count, the same for the total, and
every sample. Issue 18's acceptance: the total stays within a fixed bound however long the run
(`--bound N` adds `within_bound`, and exits 1 when it does not hold).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.bus.server import free_port

JSZ = "jsz?accounts=true&streams=true"
PORTS_WAIT_S = 120.0


def stream_consumers(jsz: dict[str, Any]) -> dict[str, int]:
    """Consumers per stream (summed over accounts) in a `/jsz?accounts=true&streams=true`
    answer."""
    counts: dict[str, int] = {}
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            name = str(stream.get("name", ""))
            state = stream.get("state") or {}
            counts[name] = counts.get(name, 0) + int(state.get("consumer_count", 0))
    return counts


def read_counts(monitor_url: str) -> dict[str, int]:
    """Consumers per stream on the server whose monitoring endpoint is `monitor_url`."""
    with urllib.request.urlopen(f"{monitor_url}/{JSZ}", timeout=10) as r:
        return stream_consumers(json.loads(r.read()))


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Max and last count per stream and of the total, over `samples` ({t_s, streams})."""
    names = sorted({name for s in samples for name in s["streams"]})
    totals = [sum(s["streams"].values()) for s in samples]
    last = samples[-1]["streams"] if samples else {}
    return {
        "total": {"max": max(totals, default=0), "last": totals[-1] if totals else 0},
        "streams": {
            name: {
                "max": max(s["streams"].get(name, 0) for s in samples),
                "last": last.get(name, 0),
            }
            for name in names
        },
    }


def monitor_url(data: Path, up: subprocess.Popen[bytes], wait_s: float = PORTS_WAIT_S) -> str:
    """The monitoring address `conclave up`'s server wrote to its ports file."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise RuntimeError(f"conclave up exited with {up.returncode} before its server ran")
        for path in (data / "nats" / "ports").glob("*.ports"):
            try:
                return str(json.loads(path.read_text())["monitoring"][0])
            except (OSError, ValueError, KeyError, IndexError):
                pass  # written but not yet complete
        time.sleep(0.5)
    raise RuntimeError(f"no ports file under {data / 'nats' / 'ports'} in {wait_s:.0f} s")


def sample_run(
    up: subprocess.Popen[bytes], url: str, minutes: float, every_s: float
) -> list[dict[str, Any]]:
    """A sample now and every `every_s` until `minutes` have passed (or `up` exits)."""
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        try:
            samples.append({"t_s": round(elapsed, 1), "streams": read_counts(url)})
        except (OSError, urllib.error.URLError, ValueError) as e:
            print(f"sample at {elapsed:.0f} s failed: {e!r}", file=sys.stderr)
        if elapsed >= minutes * 60 or up.poll() is not None:
            return samples
        time.sleep(max(0.0, min(every_s, minutes * 60 - elapsed)))


def stop(up: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the run's process group; SIGKILL if it has not ended within 120 s."""
    try:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(120)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, signal.SIGKILL)
        up.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.data).absolute() if args.data else Path(tempfile.mkdtemp(prefix="consumers-"))
    data.mkdir(parents=True, exist_ok=True)
    port = args.nats_port or free_port()
    argv = [
        sys.executable, "-m", "shared.cli.main", "up", "--game", args.game,
        "--data-dir", str(data), "--nats-port", str(port), *args.up,
    ]  # fmt: skip
    log_path = data.parent / f"{data.name}-up.out"
    with log_path.open("wb") as log:
        up = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    try:
        samples = sample_run(up, monitor_url(data, up), args.minutes, args.every)
    finally:
        exited = up.poll()
        stop(up)
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)
    out: dict[str, Any] = {
        "game": args.game,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "up_exited_early": exited,  # None: it ran until stopped
        **summary(samples),
        "samples": samples,
        "log": str(log_path),
    }
    if args.bound is not None:
        out["within_bound"] = out["total"]["max"] <= args.bound
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--game", default="tictactoe")
    parser.add_argument("--data", help="the run's data directory (default: a temporary one)")
    parser.add_argument("--nats-port", type=int, help="default: a free port")
    parser.add_argument("--bound", type=int, help="the most consumers the hub may hold")
    parser.add_argument("up", nargs="*", help="extra `conclave up` options, after --")
    args = parser.parse_args(argv)
    out = run(args)
    print(json.dumps(out, indent=2))
    return 1 if out.get("within_bound") is False else 0


if __name__ == "__main__":
    sys.exit(main())
