"""The archive layer against a real S3-compatible server (moto, subprocess) and a LocalStore."""

from __future__ import annotations

import gzip
import os
import re
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import msgspec
import pytest

from shared.archive import (
    ArchiveError,
    ArchiveNotFound,
    ArchiveUnavailable,
    CorruptArchive,
    LocalStore,
    S3Config,
    S3Store,
    Store,
    TokenBucket,
    archived_ranges,
    build_shard,
    covers,
    get_json,
    get_model,
    get_model_file,
    get_model_meta,
    last_archived_seq,
    layout,
    list_manifests,
    list_models,
    put_json,
    put_model,
    put_model_file,
    read_shard,
    restore_shards,
    write_shard,
)
from shared.archive.ops import sha256_hex
from shared.archive.s3 import classify

if TYPE_CHECKING:
    from tests.s3server import MotoServer

GAME = "tictactoe"


def s3_store(server: MotoServer, **kw: Any) -> S3Store:
    cfg = S3Config(bucket=f"b-{uuid.uuid4().hex[:12]}", endpoint_url=server.url, **kw)
    store = S3Store(cfg)
    store.create_bucket()
    return store


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        yield LocalStore(tmp_path / "archive")
        return
    request.getfixturevalue("aws_env")
    yield s3_store(request.getfixturevalue("moto_server"), max_attempts=1)


def clobber(store: Store, key: str, data: bytes) -> None:
    """Overwrite an object's bytes behind the archive's back (bit rot, a bad tool)."""
    if isinstance(store, S3Store):
        full = f"{store.cfg.prefix}/{key}"
        store.client.put_object(Bucket=store.cfg.bucket, Key=full, Body=data)
    else:
        assert isinstance(store, LocalStore)
        (store.root / key).write_bytes(data)


def record(game_id: str, size: int = 200) -> bytes:
    body = {"type": "conclave.game.v1", "game_id": game_id, "moves": list(range(9))}
    return msgspec.msgpack.encode({**body, "policy": os.urandom(size)})


def records(first: int, n: int) -> list[tuple[int, bytes]]:
    return [(seq, record(f"g{seq}")) for seq in range(first, first + n)]


def model_blob(size: int = 50_000) -> tuple[str, bytes]:
    data = os.urandom(size)
    return sha256_hex(data), data


def test_object_basics(store: Store) -> None:
    store.put_bytes("x/a.bin", b"abc", metadata={"sha256": "00", "count": "3"})
    store.put_bytes("x/b.bin", b"")
    info = store.head("x/a.bin")
    assert info is not None and info.size == 3 and info.metadata == {"sha256": "00", "count": "3"}
    assert store.head("x/missing") is None
    assert store.list("x/") == ["x/a.bin", "x/b.bin"] and store.list("y/") == []
    store.delete("x/a.bin")
    store.delete("x/a.bin")
    assert store.list("x/") == ["x/b.bin"]
    with pytest.raises(ArchiveNotFound, match=re.escape("x/a.bin")):
        store.get_bytes("x/a.bin")
    with pytest.raises(ValueError, match="archive key"):
        store.put_bytes("../escape", b"")
    with pytest.raises(ValueError, match="metadata name"):
        store.put_bytes("x/c", b"", metadata={"Bad Name": "v"})


def test_model_round_trip(store: Store, tmp_path: Path) -> None:
    sha, data = model_blob()
    assert put_model(store, GAME, sha, data, b'{"generation": 3}')
    assert get_model(store, GAME, sha) == data
    assert get_model_meta(store, GAME, sha) == b'{"generation": 3}'
    assert list_models(store, GAME) == [sha]
    get_model_file(store, GAME, sha, tmp_path / "out" / "m.ckpt")
    assert (tmp_path / "out" / "m.ckpt").read_bytes() == data


def test_model_reupload_is_skipped(store: Store, tmp_path: Path) -> None:
    sha, data = model_blob()
    assert put_model(store, GAME, sha, data, b"{}")
    keys = store.list("")
    assert not put_model(store, GAME, sha, data, b"{}")
    path = tmp_path / "m.ckpt"
    path.write_bytes(data)
    assert not put_model_file(store, GAME, sha, path, b"{}")
    assert store.list("") == keys == [layout.model_key(GAME, sha), layout.model_meta_key(GAME, sha)]


def test_model_named_by_wrong_digest_is_refused(store: Store) -> None:
    sha, data = model_blob()
    with pytest.raises(CorruptArchive, match=sha):
        put_model(store, GAME, sha, data + b"x", b"{}")
    assert store.list("") == []


def test_corrupt_model_is_detected(store: Store, tmp_path: Path) -> None:
    sha, data = model_blob()
    put_model(store, GAME, sha, data, b"{}")
    clobber(store, layout.model_key(GAME, sha), data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CorruptArchive, match=layout.model_key(GAME, sha)):
        get_model(store, GAME, sha)
    with pytest.raises(CorruptArchive, match=layout.model_key(GAME, sha)):
        get_model_file(store, GAME, sha, tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists()


def test_shard_round_trip(store: Store) -> None:
    recs = records(101, 50)
    manifest = write_shard(store, GAME, recs, clock=lambda: 1234.5)
    assert (manifest.first_seq, manifest.last_seq, manifest.count) == (101, 150, 50)
    assert manifest.game_ids == [f"g{s}" for s in range(101, 151)]
    assert manifest.created_at == 1234.5
    assert read_shard(store, GAME, manifest) == [data for _, data in recs]
    assert manifest.shard_key == layout.shard_key(GAME, 101, 150, manifest.shard_sha256)
    shard = store.get_bytes(manifest.shard_key)
    assert sha256_hex(shard) == manifest.shard_sha256
    assert msgspec.msgpack.decode(gzip.decompress(shard)) == [data for _, data in recs]
    assert list_manifests(store, GAME) == [manifest]


def test_shard_rewrite_is_idempotent(store: Store) -> None:
    recs = records(1, 20)
    first = write_shard(store, GAME, recs, clock=lambda: 1.0)
    keys = store.list("")
    again = write_shard(store, GAME, recs, clock=lambda: 2.0)
    assert store.list("") == keys and len(keys) == 2
    assert list_manifests(store, GAME) == [again]
    assert again.shard_key == first.shard_key and again.shard_sha256 == first.shard_sha256


def test_other_content_for_a_range_never_replaces_a_shard(store: Store) -> None:
    """Two syncers in a lease gap: both shards stay whole and readable; ranges merge."""
    recs = records(1, 20)
    mine = write_shard(store, GAME, recs)
    theirs = write_shard(store, GAME, [(s, record(f"other{s}")) for s in range(1, 21)])
    wider = write_shard(store, GAME, records(11, 20))
    assert len({mine.shard_key, theirs.shard_key, wider.shard_key}) == 3
    assert read_shard(store, GAME, mine) == [d for _, d in recs]
    assert len(list_manifests(store, GAME)) == 3
    assert archived_ranges(store, GAME) == [(1, 30)]


def test_half_stored_pair_is_not_archived(store: Store) -> None:
    """A crash between the two puts: a lone shard or a lone manifest is redone, not trusted."""
    recs = records(1, 5)
    manifest, shard = build_shard(GAME, recs, created_at=1.0)
    store.put_bytes(manifest.shard_key, shard)
    lone = layout.manifest_key(GAME, 6, 9, "ab" * 32)
    store.put_bytes(lone, b"{}")
    assert archived_ranges(store, GAME) == [] and list_manifests(store, GAME) == []
    again = write_shard(store, GAME, recs)
    assert read_shard(store, GAME, again) == [d for _, d in recs]
    assert archived_ranges(store, GAME) == [(1, 5)]


def test_archived_ranges(store: Store) -> None:
    for first in (201, 1, 101, 1001):
        write_shard(store, GAME, records(first, 10))
    write_shard(store, "connect4", records(1, 3))
    assert archived_ranges(store, GAME) == [(1, 10), (101, 110), (201, 210), (1001, 1010)]
    assert archived_ranges(store, "connect4") == [(1, 3)]
    assert archived_ranges(store, "othello") == []
    ranges = archived_ranges(store, GAME)
    assert [s for s in (0, 1, 10, 11, 100, 105, 210, 211, 1010, 1011) if covers(ranges, s)] == [
        1,
        10,
        105,
        210,
        1010,
    ]
    assert last_archived_seq(ranges) == 1010 and last_archived_seq([]) == 0


def test_restore_replays_shards_in_order(store: Store) -> None:
    written = {first: records(first, 5) for first in (11, 1, 21)}
    for recs in written.values():
        write_shard(store, GAME, recs)
    restored = [(m.first_seq, recs) for m, recs in restore_shards(store, GAME)]
    assert restored == [(f, [d for _, d in written[f]]) for f in (1, 11, 21)]
    assert [m.first_seq for m, _ in restore_shards(store, GAME, after_seq=14)] == [11, 21]
    assert [m.first_seq for m, _ in restore_shards(store, GAME, after_seq=15)] == [21]


def test_corrupt_shard_is_detected(store: Store) -> None:
    manifest = write_shard(store, GAME, records(1, 10))
    key = manifest.shard_key
    good = store.get_bytes(key)
    clobber(store, key, good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    with pytest.raises(CorruptArchive, match=key):
        read_shard(store, GAME, manifest)
    clobber(store, key, good[: len(good) // 2])
    with pytest.raises(CorruptArchive, match=key):
        read_shard(store, GAME, manifest)


def test_write_shard_validates_records(store: Store) -> None:
    with pytest.raises(ValueError, match="empty"):
        write_shard(store, GAME, [])
    with pytest.raises(ValueError, match="increasing"):
        write_shard(store, GAME, [(2, record("a")), (1, record("b"))])
    with pytest.raises(ArchiveError, match="seq 7"):
        write_shard(store, GAME, [(7, b"\x01opaque")])
    manifest = write_shard(store, GAME, [(7, b"\x01opaque")], game_ids=["id7"])
    assert manifest.game_ids == ["id7"] and read_shard(store, GAME, manifest) == [b"\x01opaque"]


def test_payload_checksum_is_checked_after_the_shard_checksum(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    manifest = write_shard(store, GAME, records(1, 4))
    forged = gzip.compress(msgspec.msgpack.encode([b"a", b"b", b"c", b"d"]))
    for bad, error in ((forged, "payload"), (b"not gzip", "gzip")):
        sha = sha256_hex(bad)
        store.put_bytes(layout.shard_key(GAME, 1, 4, sha), bad)
        with pytest.raises(CorruptArchive, match=error):
            read_shard(store, GAME, msgspec.structs.replace(manifest, shard_sha256=sha))


class Best(msgspec.Struct, frozen=True):
    sha256: str
    generation: int


def test_json_documents(store: Store) -> None:
    put_json(store, layout.registry_best_key(GAME), Best("ab" * 32, 4))
    put_json(store, layout.ratings_key(GAME), {"ab": 1520.5})
    assert get_json(store, layout.registry_best_key(GAME), Best) == Best("ab" * 32, 4)
    assert get_json(store, layout.ratings_key(GAME), dict[str, float]) == {"ab": 1520.5}
    with pytest.raises(ArchiveNotFound, match=re.escape("history.json")):
        get_json(store, layout.registry_history_key(GAME), list[str])
    clobber(store, layout.ratings_key(GAME), b"{not json")
    with pytest.raises(CorruptArchive, match=re.escape("ratings/tictactoe.json")):
        get_json(store, layout.ratings_key(GAME), dict[str, float])


def test_local_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    write_shard(store, GAME, records(1, 3))
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert all(".tmp-" not in n for n in names)
    assert len(names) == 4  # shard, manifest, and a .meta.json sidecar for each


def test_unavailable_then_recovers(aws_env: None, fresh_moto: MotoServer) -> None:
    store = s3_store(fresh_moto, max_attempts=1, connect_timeout_s=1.0)
    fresh_moto.stop()
    with pytest.raises(ArchiveUnavailable, match="shards/"):
        write_shard(store, GAME, records(1, 3))
    with pytest.raises(ArchiveUnavailable):
        store.head("x")
    with pytest.raises(ArchiveUnavailable):
        store.list("")
    fresh_moto.start()  # same port; moto keeps no state across restarts
    store.create_bucket()
    manifest = write_shard(store, GAME, records(1, 3))
    assert archived_ranges(store, GAME) == [(1, 3)] and len(read_shard(store, GAME, manifest)) == 3


def test_missing_bucket_is_an_error_naming_it(
    aws_env: None, moto_server: MotoServer, tmp_path: Path
) -> None:
    store = S3Store(S3Config(bucket="never-created", endpoint_url=moto_server.url, max_attempts=1))
    assert not store.bucket_exists()
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ArchiveError, match=r"never-created.*NoSuchBucket") as err:
        store.put_file("a/f", tmp_path / "f")
    assert type(err.value) is ArchiveError
    with pytest.raises(ArchiveError, match="NoSuchBucket"):
        store.list("")


def test_rate_limit_paces_uploads(aws_env: None, moto_server: MotoServer) -> None:
    rate = 1_000_000.0
    store = s3_store(moto_server, max_bytes_per_s=rate)  # burst is rate / 4
    start = time.monotonic()
    store.put_bytes("slow/a.bin", os.urandom(800_000))
    store.put_bytes("slow/b.bin", os.urandom(400_000))
    assert time.monotonic() - start >= 0.7  # (1.2 MB - 0.25 MB burst) at 1 MB/s = 0.95 s


def test_token_bucket_arithmetic() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(100.0, 50.0, clock=lambda: now[0], sleep=sleep)
    bucket.take(50)  # the burst
    bucket.take(100)  # one second of debt
    now[0] += 0.5
    bucket.take(25)  # 50 tokens refilled, 25 left
    bucket.take(-10)  # progress rewinds are ignored
    assert slept == [1.0]


def test_multipart_upload_with_bounded_parts(
    aws_env: None, moto_server: MotoServer, tmp_path: Path
) -> None:
    store = s3_store(moto_server, part_size_mb=5, max_concurrency=2)
    src = tmp_path / "big.ckpt"
    src.write_bytes(os.urandom(21 * 1024 * 1024))
    sha = sha256_hex(src.read_bytes())
    tracemalloc.start()
    try:
        put_model_file(store, GAME, sha, src, b"{}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    info = store.head(layout.model_key(GAME, sha))
    assert info is not None and info.size == 21 * 1024 * 1024
    assert info.etag.endswith("-5")  # 4 parts of 5 MiB and one of 1 MiB
    assert info.metadata == {"sha256": sha}
    # about part_size x concurrency at most (measured 3.3 MiB), never the whole 21 MiB file
    assert peak < 12 * 1024 * 1024, peak
    get_model_file(store, GAME, sha, tmp_path / "back.ckpt")
    assert (tmp_path / "back.ckpt").read_bytes() == src.read_bytes()
    blob = os.urandom(6 * 1024 * 1024)  # put_bytes above the threshold goes multipart too
    store.put_bytes("big/blob", blob, metadata={"kind": "test"})
    info = store.head("big/blob")
    assert info is not None and info.etag.endswith("-2") and info.metadata == {"kind": "test"}
    assert store.get_bytes("big/blob") == blob


def test_s3_config_is_validated() -> None:
    with pytest.raises(ValueError, match="part_size_mb"):
        S3Config(bucket="b", part_size_mb=4)
    with pytest.raises(ValueError, match="prefix"):
        S3Config(bucket="b", prefix="conclave/")
    with pytest.raises(ValueError, match="max_bytes_per_s"):
        S3Config(bucket="b", max_bytes_per_s=0)


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, "GetObject")


def test_classify_client_errors() -> None:
    assert isinstance(classify(_client_error("NoSuchKey", 404), "s3://b/k"), ArchiveNotFound)
    assert isinstance(classify(_client_error("SlowDown", 503), "s3://b/k"), ArchiveUnavailable)
    assert isinstance(classify(_client_error("InternalError", 500), "s3://b/k"), ArchiveUnavailable)
    denied = classify(_client_error("AccessDenied", 403), "s3://b/k")
    assert type(denied) is ArchiveError and "s3://b/k" in str(denied)
