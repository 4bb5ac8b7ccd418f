"""The S3 archive: durable copies of models, game shards and registry documents (no NATS here).

All calls are synchronous; an async service runs them with `asyncio.to_thread`.
- `Store` (`S3Store(S3Config(...))`, `LocalStore(root)`): put_bytes / put_file / get_bytes /
  get_file / head / list / delete on keys relative to the archive root.
- `layout`: every key (models, shards, manifests, registry, ratings).
- Shards: `write_shard` / `store_shard` (idempotent; shard and manifest side by side, named by
  range and digest), `committed_entries`, `archived_ranges`, `covers`, `last_archived_seq`,
  `read_shard` (verified), `restore_shards` (disaster restore, in seq order).
- Models: `put_model` / `put_model_file` (digest checked before upload, skipped when present),
  `get_model` / `get_model_file` (verified), `list_models`, `get_model_meta`.
- Documents: `put_json`, `get_json`.
Errors: `ArchiveUnavailable` (retry later), `ArchiveNotFound`, `CorruptArchive`, all
`ArchiveError`; `ValueError` for a malformed key, game or argument.
"""

from shared.archive import layout
from shared.archive.errors import (
    ArchiveError,
    ArchiveNotFound,
    ArchiveUnavailable,
    CorruptArchive,
)
from shared.archive.ops import (
    Manifest,
    archived_ranges,
    build_shard,
    committed_entries,
    covers,
    get_json,
    get_model,
    get_model_file,
    get_model_meta,
    last_archived_seq,
    list_manifests,
    list_models,
    put_json,
    put_model,
    put_model_file,
    read_manifest,
    read_shard,
    restore_shards,
    store_shard,
    write_shard,
)
from shared.archive.s3 import S3Config, S3Store, TokenBucket
from shared.archive.store import LocalStore, ObjectInfo, Store

__all__ = [
    "ArchiveError",
    "ArchiveNotFound",
    "ArchiveUnavailable",
    "CorruptArchive",
    "LocalStore",
    "Manifest",
    "ObjectInfo",
    "S3Config",
    "S3Store",
    "Store",
    "TokenBucket",
    "archived_ranges",
    "build_shard",
    "committed_entries",
    "covers",
    "get_json",
    "get_model",
    "get_model_file",
    "get_model_meta",
    "last_archived_seq",
    "layout",
    "list_manifests",
    "list_models",
    "put_json",
    "put_model",
    "put_model_file",
    "read_manifest",
    "read_shard",
    "restore_shards",
    "store_shard",
    "write_shard",
]
