"""The S3 half of the sync benchmark: archive-layer uploads against raw boto3, same bytes, same run.

    .venv/bin/python bench/sync_archive.py --json

Starts its own moto S3 server on 127.0.0.1. The same pre-built shard objects (default 200 MB
in 8 MB shards) and one model file (default 64 MB) go up three ways in each round:
- archive: what the syncer does, `store_shard` of each shard (the shard and its manifest put side
  by side), and `put_model_file` (sha256 check of the file, then a multipart upload, then its
  metadata);
- store: the same objects through `S3Store.put_bytes` / `put_file` alone;
- raw: boto3 `put_object` / `upload_file` with boto3's default transfer settings.
Rounds rotate which path goes first; MB/s count shard + model bytes only. `ratio` is archive over
raw (target >= 0.8), `store_ratio` store over raw. `write_shard_mb_per_s` is the end-to-end rate
of `write_shard` (msgpack + gzip + checksums + upload) over `--e2e-mb` of raw game records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.archive import S3Config, S3Store, layout, put_model_file, write_shard  # noqa: E402
from shared.archive.ops import Manifest, build_shard, store_shard  # noqa: E402
from tests.s3server import FAKE_AWS_ENV, MotoServer, running_moto  # noqa: E402

MB = 1_000_000
GAME = "connect4"


def game_records(
    first_seq: int, raw_bytes: int, rng: np.random.Generator
) -> list[tuple[int, bytes]]:
    """Connect-4-sized msgpack records (~40 plies, float32 policy rows) totalling `raw_bytes`."""
    out: list[tuple[int, bytes]] = []
    seq, total = first_seq, 0
    while total < raw_bytes:
        plies = int(rng.integers(10, 43))
        policy = rng.dirichlet(np.ones(7), size=plies).astype("<f4").tobytes()
        doc = {
            "type": "conclave.game.v1",
            "game_id": f"g{seq}",
            "moves": [3] * plies,
            "policy": policy,
            "plies": plies,
            "num_actions": 7,
        }
        data = msgspec.msgpack.encode(doc)
        out.append((seq, data))
        seq, total = seq + 1, total + len(data)
    return out


def build_shards(
    total_mb: float, shard_mb: float, rng: np.random.Generator, distinct: int = 4
) -> list[tuple[Manifest, bytes]]:
    """Shards totalling `total_mb`; only `distinct` are encoded, the rest reuse their bytes
    under other seq ranges (generating 250 MB of records would dominate the run)."""
    made: list[tuple[Manifest, bytes]] = []
    size, seq = 0, 1
    while size < total_mb * MB:
        if len(made) < distinct:
            recs = game_records(seq, int(shard_mb * MB * 1.1), rng)
            manifest, blob = build_shard(GAME, recs, created_at=time.time())
        else:
            manifest, blob = made[len(made) % distinct]
            last = seq + manifest.count - 1
            key = layout.shard_key(GAME, seq, last, manifest.shard_sha256)
            manifest = msgspec.structs.replace(
                manifest, first_seq=seq, last_seq=last, shard_key=key
            )
        made.append((manifest, blob))
        size, seq = size + len(blob), manifest.last_seq + 1
    return made


def archive_round(
    store: S3Store, shards: list[tuple[Manifest, bytes]], model: Path, sha: str
) -> float:
    """What the syncer does: `store_shard` for each shard (the shard and its manifest side by
    side), `put_model_file` for the model (digest check, existence check, upload, metadata)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="archive-manifest") as beside:
        for manifest, blob in shards:
            store_shard(store, manifest, blob, beside)
    put_model_file(store, GAME, sha, model, b"{}")
    return time.perf_counter() - start


def store_round(store: S3Store, shards: list[tuple[Manifest, bytes]], model: Path) -> float:
    """The byte layer alone: the same objects through `S3Store.put_bytes` / `put_file`."""
    start = time.perf_counter()
    for manifest, blob in shards:
        store.put_bytes(f"store/{manifest.shard_key}", blob)
    store.put_file("store/model.ckpt", model)
    return time.perf_counter() - start


def raw_round(client: Any, bucket: str, shards: list[tuple[Manifest, bytes]], model: Path) -> float:
    start = time.perf_counter()
    for manifest, blob in shards:
        client.put_object(Bucket=bucket, Key=f"raw/{manifest.shard_key}", Body=blob)
    client.upload_file(str(model), bucket, "raw/model.ckpt")
    return time.perf_counter() - start


def empty_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])


def e2e_write_shard(store: S3Store, raw_mb: float, rng: np.random.Generator) -> float:
    batches = [
        game_records(10**9 + i * 10**6, int(4 * MB), rng) for i in range(max(1, int(raw_mb / 4)))
    ]
    raw = sum(len(d) for b in batches for _, d in b)
    start = time.perf_counter()
    for recs in batches:
        write_shard(store, GAME, recs)
    return raw / MB / (time.perf_counter() - start)


def run(server: MotoServer, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    shards = build_shards(args.shard_total_mb, args.shard_mb, rng)
    model = work / "model.ckpt"
    model.write_bytes(os.urandom(int(args.model_mb * MB)))
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    total = (sum(len(b) for _, b in shards) + model.stat().st_size) / MB
    times = {"archive": 0.0, "store": 0.0, "raw": 0.0}
    for r in range(args.rounds):
        store = S3Store(S3Config(bucket=f"bench-{uuid.uuid4().hex[:8]}", endpoint_url=server.url))
        store.create_bucket()
        order = ["archive", "store", "raw"]
        for path in order[r % 3 :] + order[: r % 3]:  # rotate who goes first
            if path == "archive":
                times[path] += archive_round(store, shards, model, sha)
            elif path == "store":
                times[path] += store_round(store, shards, model)
            else:
                times[path] += raw_round(store.client, store.cfg.bucket, shards, model)
        if r < args.rounds - 1:
            empty_bucket(store.client, store.cfg.bucket)  # moto holds objects in memory
    rate = {path: total * args.rounds / t for path, t in times.items()}
    e2e = e2e_write_shard(store, args.e2e_mb, rng) if args.e2e_mb else None
    return {
        "mb_per_round": round(total, 1),
        "shards": len(shards),
        "rounds": args.rounds,
        "archive_mb_per_s": round(rate["archive"], 1),
        "store_mb_per_s": round(rate["store"], 1),
        "raw_boto3_mb_per_s": round(rate["raw"], 1),
        "ratio": round(rate["archive"] / rate["raw"], 3),
        "store_ratio": round(rate["store"] / rate["raw"], 3),
        "write_shard_mb_per_s": round(e2e, 1) if e2e else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shard-total-mb", type=float, default=200.0)
    parser.add_argument("--shard-mb", type=float, default=8.0, help="compressed size of each shard")
    parser.add_argument("--model-mb", type=float, default=64.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--e2e-mb", type=float, default=32.0, help="raw MB through write_shard; 0 skips"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.update(FAKE_AWS_ENV)  # moto accepts any credentials; never real ones here
    with tempfile.TemporaryDirectory() as tmp, running_moto(Path(tmp) / "moto.log") as server:
        result = run(server, args, Path(tmp))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
