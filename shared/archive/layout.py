"""Every archive key, built in one place. Keys are relative to the store's prefix.

models/<game>/<sha256>.ckpt            checkpoint bytes
models/<game>/<sha256>.json            its metadata document
games/<game>/shards/<first:012d>-<last:012d>-<tag>.msgpack.gz   gzip'd msgpack list of records
games/<game>/manifests/<first:012d>-<last:012d>-<tag>.json      what the shard holds
(<tag>: the first 16 hex digits of the shard's sha256; a range is archived when both are stored)
registry/<game>/best.json, registry/<game>/history.json
ratings/<game>.json
"""

from __future__ import annotations

import re

from schemas.names import check_token

_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENTRY = re.compile(r"^(\d{12})-(\d{12})-([0-9a-f]{16})$")
TAG_LEN = 16
MAX_SEQ = 10**12 - 1


def check_game(game: str) -> str:
    return check_token(game, "game")


def check_sha256(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
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


Entry = tuple[int, int, str]  # (first_seq, last_seq, tag)


def shard_tag(shard_sha256: str) -> str:
    """The name part that keeps shards of one range with different content apart."""
    return check_sha256(shard_sha256)[:TAG_LEN]


def _entry_name(first_seq: int, last_seq: int, shard_sha256: str) -> str:
    return f"{_range_name(first_seq, last_seq)}-{shard_tag(shard_sha256)}"


def shard_key(game: str, first_seq: int, last_seq: int, shard_sha256: str) -> str:
    return f"{shards_prefix(game)}{_entry_name(first_seq, last_seq, shard_sha256)}.msgpack.gz"


def manifest_key(game: str, first_seq: int, last_seq: int, shard_sha256: str) -> str:
    return f"{manifests_prefix(game)}{_entry_name(first_seq, last_seq, shard_sha256)}.json"


def manifest_key_of(game: str, entry: Entry) -> str:
    first, last, tag = entry
    return f"{manifests_prefix(game)}{_range_name(first, last)}-{tag}.json"


def parse_manifest_key(game: str, key: str) -> Entry | None:
    """The (first_seq, last_seq, tag) of a manifest key of `game`, or None for any other key."""
    return _parse(key, manifests_prefix(game), ".json")


def parse_shard_key(game: str, key: str) -> Entry | None:
    """The (first_seq, last_seq, tag) of a shard key of `game`, or None for any other key."""
    return _parse(key, shards_prefix(game), ".msgpack.gz")


def _parse(key: str, prefix: str, suffix: str) -> Entry | None:
    if not key.startswith(prefix) or not key.endswith(suffix):
        return None
    m = _ENTRY.match(key[len(prefix) : -len(suffix)])
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None


def parse_model_key(game: str, key: str) -> str | None:
    """The sha256 of a checkpoint key of `game`, or None for any other key."""
    prefix = models_prefix(game)
    if not key.startswith(prefix) or not key.endswith(".ckpt"):
        return None
    sha = key[len(prefix) : -len(".ckpt")]
    return sha if _SHA256.fullmatch(sha) else None


def registry_best_key(game: str) -> str:
    return f"registry/{check_game(game)}/best.json"


def registry_history_key(game: str) -> str:
    return f"registry/{check_game(game)}/history.json"


def ratings_key(game: str) -> str:
    return f"ratings/{check_game(game)}.json"
