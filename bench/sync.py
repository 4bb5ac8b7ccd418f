"""The sync benchmark: archive throughput against raw boto3, and model fan-out to node caches.

    .venv/bin/python bench/sync.py --json

- `archive_mb_per_s`, `raw_boto3_mb_per_s`, `ratio`: bench/sync_archive.py's measurement (same
  bytes, same moto server, same run; target ratio >= 0.8).
- `fanout_s`: a new model of `--model-mb` (default 20 MB) is put into the object store once; then
  `--nodes` (default 24) node caches, each its own NATS connection and cache directory, fetch it
  at the same time through our chunk reader and verify its digest. The time until the last cache
  holds the verified file (target <= 2 s on loopback).
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
from shared.bus import Bus, BusConfig  # noqa: E402
from shared.models import ModelStore, sha256_hex  # noqa: E402
from shared.natsserver import NatsServer, ServerSpec  # noqa: E402
from tests.s3server import FAKE_AWS_ENV, running_moto  # noqa: E402

MB = 1_000_000


async def fanout(url: str, work: Path, nodes: int, model_mb: float) -> dict[str, Any]:
    data = os.urandom(int(model_mb * MB))
    publisher = await Bus.connect(BusConfig(servers=[url], name="publisher"))
    await publisher.provision()
    started = time.perf_counter()
    digest = await ModelStore(publisher, work / "publisher").put(data)
    put_s = time.perf_counter() - started
    buses = [await Bus.connect(BusConfig(servers=[url], name=f"node{i}")) for i in range(nodes)]
    stores = [ModelStore(bus, work / f"node{i}") for i, bus in enumerate(buses)]
    started = time.perf_counter()
    paths = await asyncio.gather(*(store.path(digest) for store in stores))
    fanout_s = time.perf_counter() - started
    verified = sum(sha256_hex(p.read_bytes()) == digest for p in paths)
    for bus in [publisher, *buses]:
        await bus.close()
    return {
        "fanout_s": round(fanout_s, 3),
        "fanout_nodes": nodes,
        "fanout_verified": verified,
        "model_mb": model_mb,
        "put_s": round(put_s, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=24)
    parser.add_argument("--model-mb", type=float, default=20.0)
    parser.add_argument("--archive-rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.update(FAKE_AWS_ENV)  # moto accepts any credentials; never real ones here
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = NatsServer(ServerSpec("bench", work / "nats")).start()
        try:
            result = asyncio.run(fanout(server.url, work, args.nodes, args.model_mb))
        finally:
            server.stop()
        archive_args = argparse.Namespace(
            shard_total_mb=200.0,
            shard_mb=8.0,
            model_mb=64.0,
            rounds=args.archive_rounds,
            e2e_mb=0.0,
        )
        with running_moto(work / "moto.log") as moto:
            archived = sync_archive.run(moto, archive_args, work)
    result = {
        "archive_mb_per_s": archived["archive_mb_per_s"],
        "raw_boto3_mb_per_s": archived["raw_boto3_mb_per_s"],
        "ratio": archived["ratio"],
        **result,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
