"""`S3Store`: the archive on any S3-compatible service, through boto3.

Credentials come from the standard AWS chain (environment, shared config, instance role), never
from `S3Config`. boto3 errors become `ArchiveUnavailable` (connection, timeout, 5xx, throttling:
retry later), `ArchiveNotFound`, or `ArchiveError`, always naming the bucket and key.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import msgspec
from boto3.exceptions import Boto3Error, RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig

from shared.archive.errors import ArchiveError, ArchiveNotFound, ArchiveUnavailable
from shared.archive.store import ObjectInfo, check_key, check_metadata

MIN_PART_MB = 5  # S3's smallest multipart part (all but the last)
READ_CHUNK = 1024 * 1024
_RETRYABLE_CODES = {
    "InternalError",
    "RequestTimeout",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
}
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


class S3Config(msgspec.Struct, frozen=True):
    bucket: str
    prefix: str = "conclave"
    endpoint_url: str | None = None
    region: str = "us-east-1"
    max_bytes_per_s: float | None = None  # both directions, across threads; None = unlimited
    part_size_mb: int = 8  # multipart threshold and part size: the memory bound per transfer
    max_concurrency: int = 8  # parallel parts of one transfer (memory: this many parts)
    max_attempts: int = 3  # botocore's standard retry mode, per request
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("S3Config.bucket must not be empty")
        if self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ValueError(f"S3Config.prefix {self.prefix!r} must not start or end with '/'")
        if self.part_size_mb < MIN_PART_MB:
            raise ValueError(f"S3Config.part_size_mb must be >= {MIN_PART_MB}")
        if self.max_bytes_per_s is not None and self.max_bytes_per_s <= 0:
            raise ValueError("S3Config.max_bytes_per_s must be positive or None")
        if self.max_concurrency < 1 or self.max_attempts < 1:
            raise ValueError("S3Config.max_concurrency and max_attempts must be >= 1")


class TokenBucket:
    """A thread-safe byte budget of `rate` per second with a burst of `burst` bytes.

    `take(n)` may run into debt and then sleeps it off, so a transfer larger than the burst is
    paced rather than refused.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate, self.burst = rate, burst
        self._clock, self._sleep = clock, sleep
        self._tokens = burst
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if n <= 0:  # s3transfer reports negative progress when it rewinds for a retry
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
            self._last = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)


class S3Store:
    """A `Store` on one bucket, every key under `cfg.prefix/`."""

    def __init__(self, cfg: S3Config, *, client: Any = None) -> None:
        self.cfg = cfg
        self.client = client if client is not None else make_client(cfg)
        part = cfg.part_size_mb * 1024 * 1024
        self.transfer = TransferConfig(
            multipart_threshold=part,
            multipart_chunksize=part,
            max_concurrency=cfg.max_concurrency,
            max_io_queue=cfg.max_concurrency,
            io_chunksize=256 * 1024,
        )
        rate = cfg.max_bytes_per_s
        self.limiter = TokenBucket(rate, max(rate / 4, 64 * 1024)) if rate else None

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.cfg.prefix}/{key}" if self.cfg.prefix else key

    def _throttle(self, n: int) -> None:
        if self.limiter is not None:
            self.limiter.take(n)

    def bucket_exists(self) -> bool:
        """Whether the bucket is there (a missing bucket otherwise looks like missing keys)."""
        with translated(self.cfg.bucket, ""):
            try:
                self.client.head_bucket(Bucket=self.cfg.bucket)
            except botocore.exceptions.ClientError as e:
                if _code(e) in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                    return False
                raise
        return True

    def create_bucket(self) -> None:
        """Create the bucket if missing (tests, local MinIO); production buckets are provisioned."""
        if not self.bucket_exists():
            with translated(self.cfg.bucket, ""):
                self.client.create_bucket(Bucket=self.cfg.bucket)

    def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None) -> None:
        meta, full = check_metadata(key, metadata), self._key(key)
        if len(data) > self.transfer.multipart_threshold:
            with translated(self.cfg.bucket, full):
                self.client.upload_fileobj(
                    io.BytesIO(data), self.cfg.bucket, full, **self._transfer_args(meta)
                )
            return
        self._throttle(len(data))
        with translated(self.cfg.bucket, full):
            self.client.put_object(Bucket=self.cfg.bucket, Key=full, Body=data, Metadata=meta)

    def put_file(self, key: str, path: Path, *, metadata: dict[str, str] | None = None) -> None:
        meta, full = check_metadata(key, metadata), self._key(key)
        with translated(self.cfg.bucket, full):
            self.client.upload_file(str(path), self.cfg.bucket, full, **self._transfer_args(meta))

    def _transfer_args(self, meta: dict[str, str]) -> dict[str, Any]:
        limited = self.limiter is not None
        callback = self._throttle if limited else None
        return {"ExtraArgs": {"Metadata": meta}, "Config": self.transfer, "Callback": callback}

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)
        with translated(self.cfg.bucket, full):
            body = self.client.get_object(Bucket=self.cfg.bucket, Key=full)["Body"]
            chunks = []
            while chunk := body.read(READ_CHUNK):
                self._throttle(len(chunk))
                chunks.append(chunk)
            return b"".join(chunks)

    def get_file(self, key: str, path: Path) -> None:
        """Download to `path` (boto3 writes a temporary file and renames it into place)."""
        full = self._key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        callback = self._throttle if self.limiter is not None else None
        with translated(self.cfg.bucket, full):
            self.client.download_file(
                self.cfg.bucket, full, str(path), Config=self.transfer, Callback=callback
            )

    def head(self, key: str) -> ObjectInfo | None:
        full = self._key(key)
        with translated(self.cfg.bucket, full):
            try:
                r = self.client.head_object(Bucket=self.cfg.bucket, Key=full)
            except botocore.exceptions.ClientError as e:
                if _code(e) in _NOT_FOUND_CODES:
                    return None
                raise
        etag = str(r.get("ETag", "")).strip('"')
        return ObjectInfo(size=int(r["ContentLength"]), etag=etag, metadata=dict(r["Metadata"]))

    def list(self, prefix: str) -> list[str]:
        root = f"{self.cfg.prefix}/" if self.cfg.prefix else ""
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        with translated(self.cfg.bucket, root + prefix):
            for page in paginator.paginate(Bucket=self.cfg.bucket, Prefix=root + prefix):
                keys.extend(obj["Key"][len(root) :] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        full = self._key(key)
        with translated(self.cfg.bucket, full):
            self.client.delete_object(Bucket=self.cfg.bucket, Key=full)


def make_client(cfg: S3Config) -> Any:
    config = botocore.config.Config(
        region_name=cfg.region,
        retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
        connect_timeout=cfg.connect_timeout_s,
        read_timeout=cfg.read_timeout_s,
        max_pool_connections=max(10, cfg.max_concurrency * 2),
    )
    return boto3.session.Session().client("s3", endpoint_url=cfg.endpoint_url, config=config)


def _code(e: botocore.exceptions.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: botocore.exceptions.ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def classify(e: BaseException, where: str) -> ArchiveError:
    """The typed archive error for a boto3/botocore exception about `where` (bucket/key)."""
    if isinstance(e, S3UploadFailedError) and e.__context__ is not None:
        return classify(e.__context__, where)
    if isinstance(e, RetriesExceededError) and isinstance(e.last_exception, BaseException):
        return classify(e.last_exception, where)
    if isinstance(e, botocore.exceptions.ClientError):
        code, status = _code(e), _status(e)
        if code in _NOT_FOUND_CODES:
            return ArchiveNotFound(f"no object {where}")
        if status >= 500 or code in _RETRYABLE_CODES:
            return ArchiveUnavailable(f"S3 unavailable for {where}: {code} (HTTP {status})")
        return ArchiveError(f"S3 refused {where}: {code} (HTTP {status}): {e}")
    if isinstance(e, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
        return ArchiveUnavailable(f"S3 unreachable for {where}: {e}")
    return ArchiveError(f"S3 failed for {where}: {type(e).__name__}: {e}")


@contextlib.contextmanager
def translated(bucket: str, key: str) -> Iterator[None]:
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, Boto3Error) as e:
        raise classify(e, f"s3://{bucket}/{key}") from e
