"""Model blobs through the object store: our chunk reader, digest checks, cache eviction."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from schemas import names
from shared.bus.ports import Bus
from shared.work.models import (
    CHUNK_BYTES,
    DigestMismatch,
    ModelMissing,
    ModelStore,
    UnreadableMeta,
    chunk_subject,
    meta_subject,
    sha256_hex,
)


async def test_round_trip_is_byte_identical_and_cached(bus: Bus, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    writer = ModelStore(bus, tmp_path / "writer")
    digest = await writer.put(data)
    assert digest == sha256_hex(data)
    assert await writer.put(data) == digest  # idempotent
    reader = ModelStore(bus, tmp_path / "reader")
    path = await reader.path(digest)
    assert path.read_bytes() == data
    assert await reader.path(digest) == path


async def test_a_blob_under_the_wrong_name_is_never_cached(bus: Bus, tmp_path: Path) -> None:
    store = ModelStore(bus, tmp_path / "c")
    fake = sha256_hex(b"what the name promises")
    await bus.put_object(names.MODELS_STORE, fake, b"something else entirely", CHUNK_BYTES)
    with pytest.raises(DigestMismatch):
        await store.path(fake)
    assert list((tmp_path / "c").iterdir()) == []


async def test_missing_model_is_a_typed_error(bus: Bus, tmp_path: Path) -> None:
    with pytest.raises(ModelMissing):
        await ModelStore(bus, tmp_path / "c").path("0" * 64)


async def test_cache_evicts_least_recently_used_beyond_its_size(bus: Bus, tmp_path: Path) -> None:
    store = ModelStore(bus, tmp_path / "c", max_cache_bytes=2 * 1024 * 1024)
    digests = [await store.put(os.urandom(1024 * 1024)) for _ in range(3)]
    for d in digests:
        await store.path(d)
    kept = {p.name for p in (tmp_path / "c").iterdir()}
    assert digests[-1] in kept and len(kept) == 2


async def test_a_meta_written_over_a_stored_object_changes_nothing(
    bus: Bus, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024)
    digest = await ModelStore(bus, tmp_path / "writer").put(data)
    for later in (b"\xffgarbage", b'{"name": "x", "nuid": "elsewhere", "chunks": 9}'):
        await bus.js.publish(meta_subject(digest), later)  # a raw publish, no write-once header
    assert (await ModelStore(bus, tmp_path / "reader").path(digest)).read_bytes() == data


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        (b"\xffgarbage", "$"),
        (b'{"name": "x", "nuid": ">", "chunks": 1}', "$.nuid"),
        (b'{"name": "x", "nuid": "n1", "chunks": -1}', "$.chunks"),
        (b'{"name": "x", "nuid": "n1", "chunks": 9}', "$.chunks"),  # promises chunks never stored
    ],
)
async def test_an_unreadable_meta_is_a_model_error_naming_the_field_at_once(
    bus: Bus, tmp_path: Path, meta: bytes, field: str
) -> None:
    digest = sha256_hex(meta)
    await bus.js.publish(chunk_subject("n1"), b"one chunk")
    await bus.js.publish(meta_subject(digest), meta)
    started = time.monotonic()
    with pytest.raises(UnreadableMeta, match=re.escape(f"field {field}")):
        await ModelStore(bus, tmp_path / "c").path(digest)
    assert time.monotonic() - started < 5.0  # no wait for chunks that never come
    with pytest.raises(UnreadableMeta):  # nor can the name be stored over it
        await ModelStore(bus, tmp_path / "w").put(meta)
