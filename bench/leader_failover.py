"""Leader failover: SIGKILL the lease holder again and again, time each takeover, check overlaps.

    python bench/leader_failover.py --kills 20 --json

Runs leader services as real processes against a real nats-server (a 3-server cluster by
default). Each kill lands at a random phase of the renewal cycle. The failover time is from the
kill to the moment the next holder starts its term (its own `valid_from`). Overlaps are counted by
the same audit the tests use: any two terms whose validity promises intersect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.bus.client import BusConfig, NatsBus  # noqa: E402
from shared.bus.errors import BusError  # noqa: E402
from shared.bus.ports import Bus  # noqa: E402
from shared.bus.server import NatsCluster, NatsServer, ServerSpec  # noqa: E402
from shared.lease.audit import LeaseAudit, Term  # noqa: E402
from shared.lease.quorum import LeaseParams  # noqa: E402


def spawn(
    urls: list[str], node: str, params: LeaseParams, replicas: int, logs: Path
) -> subprocess.Popen[bytes]:
    proc = {
        "node_id": node,
        "service": "leader",
        "bus": {"servers": urls, "name": node, "replicas": replicas},
    }
    cfg = {"node_id": node, "lease": {"ttl_s": params.ttl_s, "renew_every_s": params.renew_every_s}}
    argv = [
        sys.executable,
        "-m",
        "services.leader",
        "--process",
        json.dumps(proc),
        "--config",
        json.dumps(cfg),
    ]
    with (logs / f"{node}.log").open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


async def provision(bus: Bus) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await bus.provision()
            return
        except BusError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def wait_for_term(audit: LeaseAudit, not_instance: str | None, timeout: float) -> Term:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for term in sorted(audit.terms.values(), key=lambda t: -t.valid_from):
            if term.instance != not_instance and term.valid_until > time.time():
                return term
        await asyncio.sleep(0.01)
    raise TimeoutError("no new leader in time")


async def run(
    args: argparse.Namespace, urls: list[str], replicas: int, logs: Path
) -> dict[str, object]:
    params = LeaseParams(ttl_s=args.ttl, renew_every_s=args.renew)
    bus = await NatsBus.connect(BusConfig(servers=urls, name="bench", replicas=replicas))
    await provision(bus)
    audit = await LeaseAudit().start(bus)
    nodes = [f"c{i}" for i in range(args.contenders)]
    procs = {n: spawn(urls, n, params, replicas, logs) for n in nodes}
    rng = random.Random(args.seed)
    failovers: list[float] = []
    try:
        holder = await wait_for_term(audit, None, 30)
        for _ in range(args.kills):
            await asyncio.sleep(1.5 + rng.uniform(0, params.renew_every_s))
            procs[holder.node].kill()
            killed_at = time.time()
            procs[holder.node].wait()
            new = await wait_for_term(audit, holder.instance, 30)
            failovers.append(new.valid_from - killed_at)
            procs[holder.node] = spawn(urls, holder.node, params, replicas, logs)
            holder = new
        await asyncio.sleep(0.5)
        return report(failovers, len(audit.overlaps()), params, args, len(audit.terms))
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
        await bus.close()


def report(
    failovers: list[float], overlaps: int, params: LeaseParams, args: argparse.Namespace, terms: int
) -> dict[str, object]:
    ordered = sorted(failovers)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "failover_s": {
            "p50": round(statistics.median(ordered), 3),
            "p95": pct(0.95),
            "max": round(max(ordered), 3),
            "min": round(min(ordered), 3),
            "n": len(ordered),
        },
        "overlaps": overlaps,
        "terms_seen": terms,
        "lease_ttl_s": params.ttl_s,
        "renew_every_s": params.renew_every_s,
        "contenders": args.contenders,
        "topology": "single" if args.single else "3-server cluster (R3)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--contenders", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--renew", type=float, default=1.0)
    parser.add_argument(
        "--single", action="store_true", help="one server instead of a 3-server cluster"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conclave-bench-") as tmp:
        root = Path(tmp)
        logs = root / "logs"
        logs.mkdir()
        if args.single:
            servers: NatsCluster | NatsServer = NatsServer(
                ServerSpec("bench", root / "nats")
            ).start()
            urls, replicas = [servers.url], 1
        else:
            servers = NatsCluster.create(root / "cluster").start()
            urls, replicas = servers.urls, 3
        try:
            result = asyncio.run(run(args, urls, replicas, logs))
        finally:
            servers.stop()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
