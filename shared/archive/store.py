"""The `Store` protocol and `LocalStore`, the same key layout as a directory tree.

Stores are synchronous (the syncer calls them through `asyncio.to_thread`). Keys are relative,
`/`-separated paths; metadata is a small `str -> str` map with S3's rules (lowercase ASCII names,
ASCII values), checked the same way by every store so tests on one hold for the other.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import msgspec

from shared.archive.errors import ArchiveError, ArchiveNotFound

_KEY_PART = re.compile(r"^[A-Za-z0-9_.=-]+$")
_META_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
META_SUFFIX = ".meta.json"
TMP_MARK = ".tmp-"
COPY_CHUNK = 1024 * 1024


class ObjectInfo(msgspec.Struct, frozen=True):
    size: int
    etag: str
    metadata: dict[str, str]


class Store(Protocol):
    def put_bytes(
        self, key: str, data: bytes, *, metadata: dict[str, str] | None = None
    ) -> None: ...

    def put_file(self, key: str, path: Path, *, metadata: dict[str, str] | None = None) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def get_file(self, key: str, path: Path) -> None: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...


def check_key(key: str) -> str:
    """Return `key` if it is a relative path of safe parts, else raise ValueError naming it."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise ValueError(f"archive key {key!r} must be '/'-separated parts of A-Z a-z 0-9 _ . = -")
    if key.endswith(META_SUFFIX) or TMP_MARK in parts[-1]:
        raise ValueError(f"archive key {key!r} must not end in {META_SUFFIX} or contain {TMP_MARK}")
    return key


def check_metadata(key: str, metadata: dict[str, str] | None) -> dict[str, str]:
    meta = dict(metadata or {})
    for name, value in meta.items():
        if not _META_NAME.match(name):
            raise ValueError(f"metadata name {name!r} of {key!r} must be lowercase a-z 0-9 _ -")
        if not value.isascii() or not value.isprintable():
            raise ValueError(f"metadata {name!r} of {key!r} must be printable ASCII")
    return meta


class LocalStore:
    """A directory with the archive layout; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None) -> None:
        meta = check_metadata(key, metadata)
        path = self._path(key)
        with _atomic(path) as f:
            f.write(data)
        _write_sidecar(path, len(data), hashlib.md5(data).hexdigest(), meta)

    def put_file(self, key: str, path: Path, *, metadata: dict[str, str] | None = None) -> None:
        meta = check_metadata(key, metadata)
        dest = self._path(key)
        md5 = hashlib.md5()
        size = 0
        with open(path, "rb") as src, _atomic(dest) as f:
            while chunk := src.read(COPY_CHUNK):
                md5.update(chunk)
                f.write(chunk)
                size += len(chunk)
        _write_sidecar(dest, size, md5.hexdigest(), meta)

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def get_file(self, key: str, path: Path) -> None:
        with self._open(key) as src, _atomic(path) as f:
            shutil.copyfileobj(src, f, COPY_CHUNK)

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        side = _read_sidecar(path)
        if side is None or side.size != size:  # written by hand, or a crash between the renames
            return ObjectInfo(size=size, etag="", metadata={})
        return ObjectInfo(size=size, etag=side.etag, metadata=side.metadata)

    def list(self, prefix: str) -> list[str]:
        keys = []
        top = self.root / prefix.rpartition("/")[0]
        for dirpath, _dirs, files in os.walk(top):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and not _hidden(name):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _open(self, key: str) -> Iterator[BinaryIO]:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError as e:
            raise ArchiveNotFound(f"no object {key!r} under {self.root}") from e
        except OSError as e:
            raise ArchiveError(f"cannot read {key!r} under {self.root}: {e}") from e
        with f:
            yield f


def _hidden(name: str) -> bool:
    return name.endswith(META_SUFFIX) or TMP_MARK in name


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + META_SUFFIX)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[BinaryIO]:
    """A temp file next to `path`, fsynced and renamed onto it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class _Sidecar(msgspec.Struct, frozen=True):
    size: int
    etag: str
    metadata: dict[str, str]


def _write_sidecar(path: Path, size: int, etag: str, meta: dict[str, str]) -> None:
    with _atomic(_sidecar(path)) as f:
        f.write(msgspec.json.encode(_Sidecar(size=size, etag=etag, metadata=meta)))


def _read_sidecar(path: Path) -> _Sidecar | None:
    try:
        return msgspec.json.decode(_sidecar(path).read_bytes(), type=_Sidecar)
    except (FileNotFoundError, msgspec.DecodeError):
        return None
