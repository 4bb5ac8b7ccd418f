"""Every archive key, built in one place. Keys are relative to the store's prefix.

models/<game>/<sha256>.ckpt            checkpoint bytes
models/<game>/<sha256>.json            its metadata document
games/<game>/shards/<first:012d>-<last:012d>.msgpack.gz     gzip'd msgpack list of records
games/<game>/manifests/<first:012d>-<last:012d>.json        written after its shard
registry/<game>/best.json, registry/<game>/history.json
ratings/<game>.json
"""

from __future__ import annotations

import re

from schemas.names import check_token

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RANGE = re.compile(r"^(\d{12})-(\d{12})$")
MAX_SEQ = 10**12 - 1


def check_game(game: str) -> str:
    return check_token(game, "game")


def check_sha256(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"sha256 {sha256!r} must be 64 lowercase hex digits")
    return sha256


def check_range(first_seq: int, last_seq: int) -> None:
    if not 0 <= first_seq <= last_seq <= MAX_SEQ:
        raise ValueError(f"seq range {first_seq}-{last_seq} must satisfy 0 <= first <= last < 1e12")


def models_prefix(game: str) -> str:
    return f"models/{check_game(game)}/"


def model_key(game: str, sha256: str) -> str:
    return f"{models_prefix(game)}{check_sha256(sha256)}.ckpt"


def model_meta_key(game: str, sha256: str) -> str:
    return f"{models_prefix(game)}{check_sha256(sha256)}.json"


def _range_name(first_seq: int, last_seq: int) -> str:
    check_range(first_seq, last_seq)
    return f"{first_seq:012d}-{last_seq:012d}"


def shards_prefix(game: str) -> str:
    return f"games/{check_game(game)}/shards/"


def manifests_prefix(game: str) -> str:
    return f"games/{check_game(game)}/manifests/"


def shard_key(game: str, first_seq: int, last_seq: int) -> str:
    return f"{shards_prefix(game)}{_range_name(first_seq, last_seq)}.msgpack.gz"


def manifest_key(game: str, first_seq: int, last_seq: int) -> str:
    return f"{manifests_prefix(game)}{_range_name(first_seq, last_seq)}.json"


def parse_manifest_key(game: str, key: str) -> tuple[int, int] | None:
    """The (first_seq, last_seq) of a manifest key of `game`, or None for any other key."""
    prefix = manifests_prefix(game)
    if not key.startswith(prefix) or not key.endswith(".json"):
        return None
    m = _RANGE.match(key[len(prefix) : -len(".json")])
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_model_key(game: str, key: str) -> str | None:
    """The sha256 of a checkpoint key of `game`, or None for any other key."""
    prefix = models_prefix(game)
    if not key.startswith(prefix) or not key.endswith(".ckpt"):
        return None
    sha = key[len(prefix) : -len(".ckpt")]
    return sha if _SHA256.match(sha) else None


def registry_best_key(game: str) -> str:
    return f"registry/{check_game(game)}/best.json"


def registry_history_key(game: str) -> str:
    return f"registry/{check_game(game)}/history.json"


def ratings_key(game: str) -> str:
    return f"ratings/{check_game(game)}.json"
