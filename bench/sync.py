"""The sync benchmark: archive throughput against raw boto3, and model fan-out to node caches.

    .venv/bin/python bench/sync.py --json

- `archive_mb_per_s`, `raw_boto3_mb_per_s`, `ratio`: bench/sync_archive.py's measurement (same
  bytes, same moto server, same run; target ratio >= 0.8).
- `fanout_s`: a new model of `--model-mb` (default 20 MB) is put into the object store once; then
  `--nodes` (default 24) node caches, each its own NATS connection and cache directory, spread
  over `--processes` processes (the nodes' own CPUs would be separate machines), are told to go at
  once and fetch it through our chunk reader, verifying its digest. The time from "go" until the
  last cache holds the verified file (target <= 2 s on loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import sync_archive  # noqa: E402
from shared.bus.client import BusConfig, NatsBus  # noqa: E402
from shared.bus.server import NatsServer, ServerSpec  # noqa: E402
from shared.work.models import ModelStore, sha256_hex  # noqa: E402
from tests.s3server import FAKE_AWS_ENV, running_moto  # noqa: E402

MB = 1_000_000


async def fanout(url: str, work: Path, nodes: int, model_mb: float, procs: int) -> dict[str, Any]:
    """Put a model once; `procs` processes holding `nodes` caches between them fetch it at once."""
    data = os.urandom(int(model_mb * MB))
    publisher = await NatsBus.connect(BusConfig(servers=[url], name="publisher"))
    await publisher.provision()
    started = time.perf_counter()
    digest = await ModelStore(publisher, work / "publisher").put(data)
    put_s = time.perf_counter() - started
    per_proc = [nodes // procs + (1 if i < nodes % procs else 0) for i in range(procs)]
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--worker",
            url,
            digest,
            str(work / f"p{i}"),
            str(count),
            stdout=asyncio.subprocess.PIPE,
        )
        for i, count in enumerate(per_proc)
    ]
    for w in workers:  # each says "ready" once all its caches are connected
        assert w.stdout is not None
        await w.stdout.readline()
    go = time.time()
    await publisher.publish("bench.fanout.go", b"")
    finished = [float((await w.communicate())[0].decode().split()[-1]) for w in workers]
    await publisher.close()
    verified = await asyncio.to_thread(count_verified, work, digest)
    return {
        "fanout_s": round(max(finished) - go, 3),
        "fanout_nodes": nodes,
        "fanout_processes": procs,
        "fanout_verified": verified,
        "model_mb": model_mb,
        "put_s": round(put_s, 3),
    }


def count_verified(work: Path, digest: str) -> int:
    return sum(sha256_hex(p.read_bytes()) == digest for p in work.glob(f"p*/n*/{digest}"))


async def worker(url: str, digest: str, root: Path, count: int) -> None:
    """One process of node caches: connect, say ready, wait for go, fetch, print the end time."""
    buses = [
        await NatsBus.connect(BusConfig(servers=[url], name=f"cache{i}")) for i in range(count)
    ]
    go = asyncio.Event()

    async def on_go(_: object) -> None:
        go.set()

    await buses[0].subscribe("bench.fanout.go", on_go)
    await buses[0].flush()
    print("ready", flush=True)
    await go.wait()
    stores = [ModelStore(bus, root / f"n{i}") for i, bus in enumerate(buses)]
    await asyncio.gather(*(store.path(digest) for store in stores))
    print(f"done {time.time()}", flush=True)
    for bus in buses:
        await bus.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, digest, root, count = sys.argv[2:6]
        asyncio.run(worker(url, digest, Path(root), int(count)))
        return 0
    parser.add_argument("--nodes", type=int, default=24)
    parser.add_argument("--processes", type=int, default=4, help="processes holding the caches")
    parser.add_argument("--model-mb", type=float, default=20.0)
    parser.add_argument("--archive-rounds", type=int, default=3, help="0 skips the S3 half")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.update(FAKE_AWS_ENV)  # moto accepts any credentials; never real ones here
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = NatsServer(ServerSpec("bench", work / "nats")).start()
        try:
            result = asyncio.run(
                fanout(server.url, work, args.nodes, args.model_mb, args.processes)
            )
        finally:
            server.stop()
        if args.archive_rounds > 0:
            archive_args = argparse.Namespace(
                shard_total_mb=200.0,
                shard_mb=8.0,
                model_mb=64.0,
                rounds=args.archive_rounds,
                e2e_mb=0.0,
            )
            with running_moto(work / "moto.log") as moto:
                archived = sync_archive.run(moto, archive_args, work)
            keys = ("archive_mb_per_s", "raw_boto3_mb_per_s", "ratio")
            result = {**{k: archived[k] for k in keys}, **result}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
