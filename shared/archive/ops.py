"""Archive operations over any `Store`: game shards with manifests, models, JSON documents.

A shard and its manifest are named by the shard's range and digest and count as archived only when
both are stored; a checkpoint is written before its metadata document, so metadata means a complete
checkpoint. Readers verify every checksum and raise
`CorruptArchive` naming the key instead of returning bad bytes.
"""

from __future__ import annotations

import bisect
import concurrent.futures as futures
import gzip
import hashlib
import itertools
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from shared.archive import layout
from shared.archive.errors import ArchiveError, CorruptArchive
from shared.archive.layout import MAX_SEQ
from shared.archive.store import Store

T = TypeVar("T")
GZIP_LEVEL = 6
HASH_CHUNK = 1024 * 1024


class Manifest(msgspec.Struct, frozen=True, tag_field="type", tag="conclave.archive_manifest.v1"):
    """What a shard holds; `shard_sha256` is of the stored (gzip'd) object, `raw_sha256` of the
    msgpack payload inside it."""

    game: str
    first_seq: int
    last_seq: int
    count: int
    game_ids: list[str]
    shard_key: str
    shard_bytes: int
    shard_sha256: str
    raw_sha256: str
    created_at: float


class _RecordId(msgspec.Struct):
    game_id: str


_id_decoder = msgspec.msgpack.Decoder(_RecordId)
_shard_decoder = msgspec.msgpack.Decoder(list[bytes])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_game_id(seq: int, data: bytes) -> str:
    """The `game_id` field of a msgpack game record, the only field the archive reads."""
    try:
        return _id_decoder.decode(data).game_id
    except (msgspec.DecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise ArchiveError(f"record at seq {seq} has no readable game_id: {e}") from e


def encode_shard(records: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(raw msgpack payload, gzip'd shard); deterministic (mtime 0), so re-encoding is identical."""
    raw = msgspec.msgpack.encode(list(records))
    return raw, gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0)


def _check_records(records: Sequence[tuple[int, bytes]], game_ids: Sequence[str] | None) -> None:
    if not records:
        raise ValueError("write_shard: records must not be empty")
    seqs = [seq for seq, _ in records]
    if any(b <= a for a, b in itertools.pairwise(seqs)):
        raise ValueError("write_shard: record seqs must be strictly increasing")
    if game_ids is not None and len(game_ids) != len(records):
        raise ValueError(f"write_shard: {len(game_ids)} game_ids for {len(records)} records")


def build_shard(
    game: str,
    records: Sequence[tuple[int, bytes]],
    *,
    game_ids: Sequence[str] | None = None,
    created_at: float,
) -> tuple[Manifest, bytes]:
    """The manifest and gzip'd bytes of a shard of `records` (seq, msgpack bytes), pure."""
    _check_records(records, game_ids)
    first, last = records[0][0], records[-1][0]
    ids = list(game_ids) if game_ids is not None else [record_game_id(s, d) for s, d in records]
    raw, shard = encode_shard([data for _, data in records])
    shard_sha256 = sha256_hex(shard)
    manifest = Manifest(
        game=game,
        first_seq=first,
        last_seq=last,
        count=len(records),
        game_ids=ids,
        shard_key=layout.shard_key(game, first, last, shard_sha256),
        shard_bytes=len(shard),
        shard_sha256=shard_sha256,
        raw_sha256=sha256_hex(raw),
        created_at=created_at,
    )
    return manifest, shard


def write_shard(
    store: Store,
    game: str,
    records: Sequence[tuple[int, bytes]],
    *,
    game_ids: Sequence[str] | None = None,
    clock: Callable[[], float] = time.time,
    beside: futures.Executor | None = None,
) -> Manifest:
    """Archive `records` as one shard with its manifest; return the manifest.

    Idempotent: the same records make the same keys, so writing them again replaces the pair
    with identical bytes and never duplicates. `game_ids` default to each record's `game_id`.
    `beside` runs the manifest's upload (`store_shard`); without it, a thread of this call's own.
    """
    manifest, shard = build_shard(game, records, game_ids=game_ids, created_at=clock())
    if beside is not None:
        store_shard(store, manifest, shard, beside)
        return manifest
    with futures.ThreadPoolExecutor(1, thread_name_prefix="archive-manifest") as own:
        store_shard(store, manifest, shard, own)
    return manifest


def store_shard(store: Store, manifest: Manifest, shard: bytes, beside: futures.Executor) -> None:
    """Store a built shard and its manifest side by side (the manifest on `beside`, a pool the
    caller owns), in one round trip rather than two.

    Their names carry the shard's digest, so a shard of the same range with other content never
    replaces this one; a range counts as archived only once both objects are stored.
    """
    key = layout.manifest_key(
        manifest.game, manifest.first_seq, manifest.last_seq, manifest.shard_sha256
    )
    manifest_put = beside.submit(store.put_bytes, key, msgspec.json.encode(manifest))
    meta = {"sha256": manifest.shard_sha256, "count": str(manifest.count)}
    try:
        store.put_bytes(manifest.shard_key, shard, metadata=meta)
    except BaseException:
        futures.wait([manifest_put])
        raise
    manifest_put.result()


def committed_entries(store: Store, game: str) -> list[layout.Entry]:
    """The (first_seq, last_seq, tag) of every shard of `game` stored with its manifest."""
    manifests = store.list(layout.manifests_prefix(game))
    shards = store.list(layout.shards_prefix(game))
    entries = {layout.parse_manifest_key(game, k) for k in manifests}
    entries &= {layout.parse_shard_key(game, k) for k in shards}
    return sorted(e for e in entries if e is not None)


def archived_ranges(store: Store, game: str) -> list[tuple[int, int]]:
    """The seq ranges archived for `game`: sorted, disjoint, overlapping shards merged."""
    return merged((first, last) for first, last, _ in committed_entries(store, game))


def merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def covers(ranges: Sequence[tuple[int, int]], seq: int) -> bool:
    """Whether `seq` lies in one of the sorted, disjoint `ranges` (from `archived_ranges`)."""
    i = bisect.bisect_right(ranges, (seq, MAX_SEQ)) - 1
    return i >= 0 and ranges[i][0] <= seq <= ranges[i][1]


def last_archived_seq(ranges: Sequence[tuple[int, int]]) -> int:
    """The highest archived seq, 0 if none: where a restarted syncer resumes."""
    return max((last for _, last in ranges), default=0)


def read_manifest(store: Store, game: str, entry: layout.Entry) -> Manifest:
    key = layout.manifest_key_of(game, entry)
    data = store.get_bytes(key)
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except (msgspec.DecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise CorruptArchive(f"manifest {key} is unreadable: {e}") from e
    described = (manifest.game, manifest.first_seq, manifest.last_seq, manifest.shard_sha256)
    if described[:3] != (game, *entry[:2]) or not described[3].startswith(entry[2]):
        raise CorruptArchive(
            f"manifest {key} describes {manifest.game} {manifest.first_seq}-{manifest.last_seq}"
            f" with shard sha256 {manifest.shard_sha256[:16]}"
        )
    return manifest


def list_manifests(store: Store, game: str) -> list[Manifest]:
    """Every committed manifest of `game` in seq order (what a disaster restore replays).

    Shards of one syncer never overlap; two syncers in a lease gap could archive a game twice,
    so readers of several shards skip game ids they have already seen."""
    return [read_manifest(store, game, entry) for entry in committed_entries(store, game)]


def restore_shards(
    store: Store, game: str, *, after_seq: int = 0
) -> Iterator[tuple[Manifest, list[bytes]]]:
    """Disaster restore: every committed shard of `game` whose range ends after `after_seq`, in
    seq order, with its verified records (the first corrupt shard raises `CorruptArchive`)."""
    for entry in committed_entries(store, game):
        if entry[1] > after_seq:
            manifest = read_manifest(store, game, entry)
            yield manifest, read_shard(store, game, manifest)


def read_shard(store: Store, game: str, manifest: Manifest) -> list[bytes]:
    """The records of a shard, verified against both checksums and the count of `manifest`."""
    key = layout.shard_key(game, manifest.first_seq, manifest.last_seq, manifest.shard_sha256)
    shard = store.get_bytes(key)
    if sha256_hex(shard) != manifest.shard_sha256:
        raise CorruptArchive(f"shard {key}: sha256 of the stored bytes does not match its manifest")
    try:
        raw = gzip.decompress(shard)
    except (OSError, EOFError, zlib.error) as e:
        raise CorruptArchive(f"shard {key}: not valid gzip: {e}") from e
    if sha256_hex(raw) != manifest.raw_sha256:
        raise CorruptArchive(f"shard {key}: sha256 of the payload does not match its manifest")
    try:
        records = _shard_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise CorruptArchive(f"shard {key}: payload is not a msgpack list of records: {e}") from e
    if len(records) != manifest.count:
        raise CorruptArchive(f"shard {key}: {len(records)} records, manifest says {manifest.count}")
    return records


def put_model(store: Store, game: str, sha256: str, data: bytes, meta_json: bytes) -> bool:
    """Archive a checkpoint and its metadata document; False if both were already there."""
    key = layout.model_key(game, sha256)
    if sha256_hex(data) != sha256:
        raise CorruptArchive(f"model {key}: the data's sha256 is {sha256_hex(data)}, not its name")
    return _put_model(
        store,
        game,
        sha256,
        len(data),
        lambda: store.put_bytes(key, data, metadata={"sha256": sha256}),
        meta_json,
    )


def put_model_file(store: Store, game: str, sha256: str, path: Path, meta_json: bytes) -> bool:
    """`put_model` for a checkpoint file, streamed (multipart on S3) with bounded memory."""
    key = layout.model_key(game, sha256)
    got = file_sha256(path)
    if got != sha256:
        raise CorruptArchive(f"model {key}: file {path} has sha256 {got}, not its name")
    size = path.stat().st_size
    return _put_model(
        store,
        game,
        sha256,
        size,
        lambda: store.put_file(key, path, metadata={"sha256": sha256}),
        meta_json,
    )


def _put_model(
    store: Store, game: str, sha256: str, size: int, upload: Callable[[], None], meta_json: bytes
) -> bool:
    key, meta_key = layout.model_key(game, sha256), layout.model_meta_key(game, sha256)
    info, meta_info = store.head(key), store.head(meta_key)
    done = info is not None and info.size == size
    meta_done = meta_info is not None and meta_info.size == len(meta_json)
    if not done:
        upload()
    if not (done and meta_done):
        store.put_bytes(meta_key, meta_json)  # after the checkpoint: metadata means complete
    return not (done and meta_done)


def get_model(store: Store, game: str, sha256: str) -> bytes:
    """The checkpoint named `sha256`, verified; `CorruptArchive` if its bytes hash otherwise."""
    key = layout.model_key(game, sha256)
    data = store.get_bytes(key)
    if sha256_hex(data) != sha256:
        raise CorruptArchive(f"model {key}: stored bytes have sha256 {sha256_hex(data)}")
    return data


def get_model_file(store: Store, game: str, sha256: str, path: Path) -> None:
    """Download a checkpoint to `path`, verified; on a mismatch `path` is removed and
    `CorruptArchive` raised."""
    key = layout.model_key(game, sha256)
    store.get_file(key, path)
    got = file_sha256(path)
    if got != sha256:
        path.unlink(missing_ok=True)
        raise CorruptArchive(f"model {key}: stored bytes have sha256 {got}")


def get_model_meta(store: Store, game: str, sha256: str) -> bytes:
    return store.get_bytes(layout.model_meta_key(game, sha256))


def list_models(store: Store, game: str) -> list[str]:
    """The sha256 of every archived checkpoint of `game`."""
    shas = (layout.parse_model_key(game, k) for k in store.list(layout.models_prefix(game)))
    return [s for s in shas if s is not None]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def put_json(store: Store, key: str, doc: Any) -> None:
    """Store a JSON document (a msgspec Struct, dict, list...) under `key`."""
    store.put_bytes(key, msgspec.json.encode(doc), metadata={"content-type": "application/json"})


def get_json(store: Store, key: str, type_: type[T]) -> T:
    """The document under `key` decoded as `type_`; `CorruptArchive` naming the key if it is not."""
    data = store.get_bytes(key)
    try:
        return msgspec.json.decode(data, type=type_)
    except (msgspec.DecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise CorruptArchive(f"document {key} is not a valid {type_.__name__}: {e}") from e
