"""The S3 archive: durable copies of models, game shards and registry documents (no NATS here).

`Store` is the byte-level interface (`S3Store`, `LocalStore`); `layout` names every key;
`ops` writes and verifies shards, models and JSON documents on any store.
"""

from shared.archive import layout
from shared.archive.errors import (
    ArchiveConflict,
    ArchiveError,
    ArchiveNotFound,
    ArchiveUnavailable,
    CorruptArchive,
)
from shared.archive.ops import (
    Manifest,
    archived_ranges,
    build_shard,
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
    write_shard,
)
from shared.archive.s3 import S3Config, S3Store, TokenBucket
from shared.archive.store import LocalStore, ObjectInfo, Store

__all__ = [
    "ArchiveConflict",
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
    "write_shard",
]
