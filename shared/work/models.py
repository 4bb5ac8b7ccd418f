"""Model blobs in the JetStream object store `models`, named by sha256, with a verified local cache.
Any other store of blobs named by sha256 (`wheels`) is read and written the same way.

nats-py's `ObjectStore.get` is capped near 40 MB/s by a 250 ms flow-control poll (nats.py#703),
so downloads use our own reader: a pull consumer on the object's chunk subject, streaming to a
temporary file and hashing as it goes. A blob is only ever renamed into the cache after its digest
matches its name, so nothing unverified is loadable.

An object's meta message is read as first written: `Bus.put_object` writes it only while the name
has none, so a later message on the meta subject (anyone who may write the store can send one)
changes nothing a reader sees, and a meta that does not decode, or names more chunks than the
store holds, is a `ModelError` naming the field, never a raw client error or a long wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import msgspec

from schemas import names
from schemas.codec import BadMessage, Count, Ident, Token, decode
from shared.bus.errors import BusError
from shared.bus.ports import Bus, Streams

log = logging.getLogger("conclave.models")

CHUNK_BYTES = 1024 * 1024
FETCH_BATCH = 64


class ModelError(BusError):
    pass


class ModelMissing(ModelError):
    """No blob with that digest in the object store."""


class DigestMismatch(ModelError):
    """The bytes received do not hash to the name they were asked for."""


class UnreadableMeta(ModelError):
    """The object's meta message does not decode, or promises chunks the store does not hold."""


class ObjectMeta(msgspec.Struct, frozen=True):
    """What the reader uses of an object's meta message (nats-py's `ObjectInfo` as JSON)."""

    name: Ident
    nuid: Token  # the chunks' subject token
    chunks: Count = 0
    deleted: bool = False


def meta_subject(name: str, store: str = names.MODELS_STORE) -> str:
    return names.object_meta_subject(store, name)


def chunk_subject(nuid: str, store: str = names.MODELS_STORE) -> str:
    return names.object_chunk_subject(store, nuid)


def blob_kind(store: str) -> str:
    """What errors call a blob of `store`: `model` for `models`, `wheel` for `wheels`."""
    return store.removesuffix("s")


async def read_meta(
    bus: Streams, digest: str, store: str = names.MODELS_STORE
) -> ObjectMeta | None:
    """Blob `digest`'s meta as first written (None: no such object); UnreadableMeta naming the
    field when it does not decode."""
    subject, kind = meta_subject(digest, store), blob_kind(store)
    raw = await bus.first_on(names.object_stream(store), subject)
    if raw is None:
        return None
    try:
        meta = decode(raw.data, ObjectMeta, subject=subject)
        names.check_token(meta.nuid, "nuid")
    except BadMessage as e:
        raise UnreadableMeta(f"{kind} {digest}: meta field {e.field}: {e.reason}") from e
    except names.BadName as e:
        raise UnreadableMeta(f"{kind} {digest}: meta field $.nuid: {e}") from e
    return None if meta.deleted else meta


async def is_stored(bus: Streams, digest: str, store: str = names.MODELS_STORE) -> bool:
    """Whether blob `digest` is in the object store with a readable meta."""
    try:
        return await read_meta(bus, digest, store) is not None
    except UnreadableMeta:
        return False


class UnloadableModel(ValueError):
    """A verified blob that this build cannot turn into a network: unreadable bytes, another
    game, or a shape or architecture that does not fit. Retrying cannot help."""

    def __init__(self, sha256: str, cause: str) -> None:
        super().__init__(f"{unloadable_prefix(sha256)} {cause}")
        self.sha256, self.cause = sha256, cause


def unloadable_prefix(sha256: str) -> str:
    """How a failure reason (a dead letter's) starts when model `sha256` cannot be loaded."""
    return f"unloadable model {sha256}:"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelStore:
    """The object store (`models` unless told) plus this node's cache directory of verified
    blobs."""

    def __init__(
        self,
        bus: Bus,
        cache_dir: Path,
        max_cache_bytes: int = 2 * 1024**3,
        *,
        store: str = names.MODELS_STORE,
    ) -> None:
        self.bus = bus
        self.cache_dir = cache_dir
        self.max_cache_bytes = max_cache_bytes
        self.store = store
        self.kind = blob_kind(store)
        self._stream = names.object_stream(store)
        self._locks: dict[str, asyncio.Lock] = {}

    async def put(self, data: bytes) -> str:
        """Store a blob under its sha256 (a no-op if it is there already); return the digest."""
        digest = await asyncio.to_thread(sha256_hex, data)
        meta = await self.meta(digest)
        if meta is not None:
            await self._check_chunks(digest, meta)
            return digest
        # Not nats-py's `put`: the store refuses its rollup header (`Bus.put_object`).
        await self.bus.put_object(self.store, digest, data, CHUNK_BYTES)
        return digest

    async def meta(self, digest: str) -> ObjectMeta | None:
        """The object's meta as first written (None: no such object); UnreadableMeta naming the
        field when it does not decode."""
        return await read_meta(self.bus, digest, self.store)

    def cached(self, digest: str) -> Path | None:
        path = self.cache_dir / digest
        return path if path.exists() else None

    async def path(self, digest: str) -> Path:
        """A local file holding the verified blob, downloading it once if needed."""
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            found = self.cached(digest)
            if found is not None:
                return found
            await asyncio.to_thread(self.cache_dir.mkdir, parents=True, exist_ok=True)
            path = await self._download(digest)
            await asyncio.to_thread(self.evict, keep=digest)
            return path

    async def read(self, digest: str) -> bytes:
        path = await self.path(digest)
        return await asyncio.to_thread(path.read_bytes)

    async def _download(self, digest: str) -> Path:
        meta = await self.meta(digest)
        if meta is None:
            raise ModelMissing(f"{self.kind} {digest} is not in the object store")
        await self._check_chunks(digest, meta)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{digest[:12]}-")
        os.close(fd)
        try:
            got = await self._stream_chunks(meta.nuid, meta.chunks, Path(tmp))
            if got != digest:
                raise DigestMismatch(f"{self.kind} {digest} arrived with sha256 {got}; discarded")
            final = self.cache_dir / digest
            await asyncio.to_thread(os.replace, tmp, final)
            return final
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def _check_chunks(self, digest: str, meta: ObjectMeta) -> None:
        """Refuse at once a meta that promises more chunks than its subject holds (the reader
        would otherwise wait for them)."""
        subject = chunk_subject(meta.nuid, self.store)
        stored = sum((await self.bus.subject_counts(self._stream, subject)).values())
        if stored < meta.chunks:
            raise UnreadableMeta(
                f"{self.kind} {digest}: meta field $.chunks: {meta.chunks}, "
                f"the store holds {stored}"
            )

    async def _stream_chunks(self, nuid: str, chunks: int, target: Path) -> str:
        hasher = hashlib.sha256()
        subject = chunk_subject(nuid, self.store)
        batches = self.bus.object_chunks(self._stream, subject, chunks, FETCH_BATCH)
        async with contextlib.aclosing(batches):
            with target.open("wb") as sink:
                async for payloads in batches:
                    payload = b"".join(payloads)
                    await asyncio.to_thread(_write_and_hash, sink, hasher, payload)
        return hasher.hexdigest()

    def evict(self, keep: str) -> list[str]:
        """Remove the least recently used blobs until the cache fits its size limit."""
        files = sorted(
            (p for p in self.cache_dir.iterdir() if p.is_file() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_atime,
        )
        total = sum(p.stat().st_size for p in files)
        removed = []
        for path in files:
            if total <= self.max_cache_bytes:
                break
            if path.name == keep:
                continue
            total -= path.stat().st_size
            path.unlink()
            removed.append(path.name)
        return removed


def _write_and_hash(sink: BinaryIO, hasher: hashlib._Hash, payload: bytes) -> None:
    sink.write(payload)
    hasher.update(payload)
