"""The one adapter between Conclave and NATS: connection, provisioning, KV and typed errors."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RawStreamMsg, StorageType, StreamConfig
from nats.js.kv import KeyValue

import nats
from schemas import names
from shared import provision

log = logging.getLogger("conclave.bus")

_WRONG_LAST_SEQUENCE = 10071
_STREAM_NAME_IN_USE = 10058
_NO_SUITABLE_PEERS = 10005  # no server matches a stream's placement (tags, cluster)
_DELETED_OPS = {"DEL", "PURGE"}


class BusError(Exception):
    """A broker operation failed."""


class Unavailable(BusError):
    """No answer in time: disconnected, no JetStream leader, or a stream leader election."""


class CasFailed(BusError):
    """A compare-and-set write found a different last revision than expected."""


class NoPlacement(BusError):
    """No hub server matches a stream's placement: for a lease slot, its server tag is missing."""


class ConnectFailed(BusError):
    """The first connection to NATS did not succeed in time."""


class BusConfig(msgspec.Struct, frozen=True):
    """How a process connects; built once at the edge and passed down."""

    servers: list[str]
    name: str
    replicas: int = 1
    domain: str | None = None
    ping_interval_s: float = 15.0
    max_outstanding_pings: int = 2
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 5.0
    creds: str | None = None
    nkey_seed: str | None = None  # a role's seed file (`conclave auth init`)
    tls_ca: str | None = None  # verify the server against this CA (`conclave auth init --tls`)


@dataclass(frozen=True)
class Entry:
    """The last message of a KV key; `value` is None when it was deleted or expired."""

    key: str
    revision: int
    value: bytes | None
    written_at: datetime | None

    @property
    def present(self) -> bool:
        return self.value is not None


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn nats-py errors into Conclave's typed errors, naming the operation."""
    try:
        yield
    except nats.js.errors.APIError as e:
        if e.err_code == _WRONG_LAST_SEQUENCE:
            raise CasFailed(f"{what}: {e.description}") from e
        if e.err_code == _NO_SUITABLE_PEERS:
            raise NoPlacement(f"{what}: {e.description}") from e
        if isinstance(e, nats.js.errors.ServiceUnavailableError):
            raise Unavailable(f"{what}: {e.description}") from e
        raise BusError(f"{what}: {e.description} (code {e.err_code})") from e
    except (
        TimeoutError,
        nats.errors.TimeoutError,
        nats.errors.NoRespondersError,
        nats.errors.ConnectionClosedError,
        nats.errors.OutboundBufferLimitError,
        nats.js.errors.NoStreamResponseError,
    ) as e:
        raise Unavailable(f"{what}: {type(e).__name__}") from e


class Bus:
    """A connected client plus JetStream contexts and the bucket handles we use."""

    def __init__(self, nc: Client, cfg: BusConfig) -> None:
        self.nc = nc
        self.cfg = cfg
        self.js: JetStreamContext = nc.jetstream(domain=cfg.domain, timeout=cfg.request_timeout_s)
        self._kv: dict[str, KeyValue] = {}
        self.closing = False

    @classmethod
    async def connect(cls, cfg: BusConfig) -> Bus:
        """Connect with settings for flaky links; fail with ConnectFailed after the timeout."""
        holder: list[Bus] = []

        async def on_error(e: Exception) -> None:
            log.warning("nats error: %s", e, extra={"error": type(e).__name__})

        async def on_disconnect() -> None:
            if holder and not holder[0].closing:
                log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected", extra={"url": str(holder[0].nc.connected_url)})

        options: dict[str, Any] = {
            "servers": cfg.servers,
            "name": cfg.name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "ping_interval": cfg.ping_interval_s,
            "max_outstanding_pings": cfg.max_outstanding_pings,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
        }
        if cfg.creds:
            options["user_credentials"] = cfg.creds
        if cfg.nkey_seed:
            options["nkeys_seed"] = cfg.nkey_seed
        if cfg.tls_ca:
            options["tls"] = ssl.create_default_context(cafile=cfg.tls_ca)
        try:
            # nats-py's own first connect loops through every reconnect attempt before failing.
            nc = await asyncio.wait_for(nats.connect(**options), cfg.connect_timeout_s)
        except (TimeoutError, OSError, nats.errors.Error) as e:
            raise ConnectFailed(f"cannot connect to {', '.join(cfg.servers)}: {e!r}") from e
        bus = cls(nc, cfg)
        holder.append(bus)
        return bus

    async def close(self) -> None:
        """Flush what we published, then close (a drain would wait out open pull requests)."""
        self.closing = True
        if self.nc.is_closed:
            return
        with suppress(TimeoutError, nats.errors.Error):
            await self.nc.flush(timeout=2)
        await self.nc.close()

    # -- provisioning -------------------------------------------------------------------------

    async def provision(self) -> None:
        """Create every stream and bucket Conclave uses that is missing, and bring any whose
        settings drifted up to date. What exists as configured is only read (STREAM.INFO), so a
        worker whose identity may not create or update streams provisions nothing once the
        coordinator has."""
        for config in provision.streams():
            await self.ensure_stream(config)
        for config in provision.lease_slot_streams(self.cfg.replicas):
            await self._ensure_slot_stream(config)
        for store in provision.object_stores(self.cfg.replicas):
            if await self._stream_config(f"OBJ_{store.bucket}") is not None:
                continue
            with translated(f"object store {store.bucket}"):
                # nats-py overwrites config.bucket with its first argument, so pass both.
                await self.js.create_object_store(store.bucket or "", config=store)

    async def ensure_stream(self, config: StreamConfig, replicas: int | None = None) -> None:
        """Create `config`'s stream or update it if it drifted; `replicas` defaults to the bus
        config's."""
        config.num_replicas = self.cfg.replicas if replicas is None else replicas
        config.storage = StorageType.FILE
        existing = await self._stream_config(config.name or "")
        if existing is not None:
            if not provision.same_settings(existing, config):
                with translated(f"update stream {config.name}"):
                    await self.js.update_stream(config)
            return
        with translated(f"add stream {config.name}"):
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as e:
                if e.err_code != _STREAM_NAME_IN_USE:
                    raise
                await self.js.update_stream(config)

    async def _ensure_slot_stream(self, config: StreamConfig) -> None:
        """Ensure a lease slot's R1 stream; a hub whose servers lack the slot's server tag
        cannot place it, which is a setup error, so name the missing tag."""
        try:
            await self.ensure_stream(config, replicas=1)
        except NoPlacement as e:
            tags = ", ".join(config.placement.tags or []) if config.placement else ""
            raise NoPlacement(
                f"stream {config.name}: no hub server has the server tag {tags}; each hub "
                "server needs its lease-slot-N server tag (server_tags, see "
                f"nats/cluster.conf.tmpl) ({e})"
            ) from e

    async def _stream_config(self, name: str) -> StreamConfig | None:
        with translated(f"stream info {name}"):
            try:
                return (await self.js.stream_info(name)).config
            except nats.js.errors.NotFoundError:
                return None

    async def kv(self, bucket: str) -> KeyValue:
        if bucket not in self._kv:
            with translated(f"bind KV {bucket}"):
                self._kv[bucket] = await self.js.key_value(bucket)
        return self._kv[bucket]

    # -- KV with per-key TTL and compare-and-set ---------------------------------------------

    async def last(self, bucket: str, key: str) -> Entry:
        """The raw last message of a key: treats delete, purge and expiry markers as absent."""
        subject = names.kv_subject(bucket, key)
        with translated(f"get {bucket}/{key}"):
            try:
                msg = await self.js.get_msg(names.kv_stream(bucket), subject=subject)
            except nats.js.errors.NotFoundError:
                return Entry(key, 0, None, None)
        return _entry(key, msg)

    async def write(
        self,
        bucket: str,
        key: str,
        value: bytes,
        *,
        ttl_s: float | None = None,
        expect_last: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Put `value`; with `expect_last`, only if the key's last revision is that (0: none)."""
        headers: dict[str, str] = {}
        if ttl_s is not None:
            headers["Nats-TTL"] = ttl_header(ttl_s)
        if expect_last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect_last)
        with translated(f"write {bucket}/{key}"):
            ack = await self.js.publish(
                self._put_subject(bucket, key),
                value,
                headers=headers or None,
                timeout=timeout or self.cfg.request_timeout_s,
            )
        return int(ack.seq)

    def _put_subject(self, bucket: str, key: str) -> str:
        # Through a leaf server, writes reach the hub's KV stream only by its domain's API prefix.
        subject = names.kv_subject(bucket, key)
        return f"$JS.{self.cfg.domain}.API.{subject}" if self.cfg.domain else subject

    async def cas_delete(self, bucket: str, key: str, last: int, timeout: float = 2.0) -> int:
        headers = {"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(last)}
        with translated(f"delete {bucket}/{key}"):
            ack = await self.js.publish(
                self._put_subject(bucket, key), b"", headers=headers, timeout=timeout
            )
        return int(ack.seq)

    async def snapshot(self, bucket: str) -> dict[str, Entry]:
        """The current value of every present key in a bucket."""
        kv = await self.kv(bucket)
        entries: dict[str, Entry] = {}
        with translated(f"snapshot {bucket}"):
            watcher = await kv.watchall()
            try:
                while (update := await _next(watcher, self.cfg.request_timeout_s)) is not None:
                    if update.operation not in _DELETED_OPS and update.value is not None:
                        entries[update.key] = Entry(
                            update.key, update.revision or 0, update.value, None
                        )
                    else:
                        entries.pop(update.key, None)
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
        return entries

    @asynccontextmanager
    async def watch(self, bucket: str, key: str) -> AsyncIterator[KeyValue.KeyWatcher]:
        """A watcher on one key; a lost watch is not fatal, so callers also wait with timeouts."""
        kv = await self.kv(bucket)
        with translated(f"watch {bucket}/{key}"):
            watcher = await kv.watch(key)
        try:
            yield watcher
        finally:
            with suppress(TimeoutError, nats.errors.Error):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def subject_counts(self, stream: str, subjects: str) -> dict[str, int]:
        """Messages per subject matching `subjects` (a filter with wildcards) in `stream`."""
        with translated(f"count {subjects}"):
            info = await self.js.stream_info(stream, subjects_filter=subjects)
        return dict(info.state.subjects or {})

    async def first_time(self, stream: str, subject: str) -> float | None:
        """When the oldest message on `subject` (a filter) was stored; None when there is none."""
        with translated(f"read the first {subject}"):
            try:
                msg = await self.js.get_msg(stream, seq=1, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return None
        return msg.time.timestamp() if msg.time else None

    async def read_all(self, stream: str, subject: str, batch: int = 256) -> list[Msg]:
        """Every message stored on `subject` (a filter), oldest first; no durable consumer."""
        total = sum((await self.subject_counts(stream, subject)).values())
        if total == 0:
            return []
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0)
        msgs: list[Msg] = []
        with translated(f"read {subject}"):
            sub = await self.js.pull_subscribe(subject, stream=stream, config=config)
            try:
                while len(msgs) < total:
                    msgs += await sub.fetch(min(batch, total - len(msgs)), timeout=5)
            finally:
                await sub.unsubscribe()
        return msgs

    # -- messages ------------------------------------------------------------------------------

    async def publish(self, subject: str, data: bytes) -> None:
        """Core publish: fire and forget, buffered while reconnecting."""
        with translated(f"publish {subject}"):
            await self.nc.publish(subject, data)

    async def publish_durable(self, subject: str, data: bytes, msg_id: str | None = None) -> int:
        """JetStream publish, acknowledged once stored; `msg_id` makes retries idempotent."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        with translated(f"publish {subject}"):
            ack = await self.js.publish(subject, data, headers=headers)
        return int(ack.seq)

    async def subscribe(
        self, subject: str, handler: Callable[[Msg], Awaitable[None]]
    ) -> Subscription:
        with translated(f"subscribe {subject}"):
            return await self.nc.subscribe(subject, cb=handler)


async def _next(watcher: KeyValue.KeyWatcher, timeout: float) -> KeyValue.Entry | None:
    entry: KeyValue.Entry | None = await watcher.updates(timeout)  # type: ignore[no-untyped-call]
    return entry


def ttl_header(ttl_s: float) -> str:
    """The server keeps whole seconds of a message TTL (measured), so refuse anything else."""
    if ttl_s < 1 or ttl_s != int(ttl_s):
        raise ValueError(f"ttl_s must be a whole number of seconds >= 1, got {ttl_s}")
    return f"{int(ttl_s)}s"


def _entry(key: str, msg: RawStreamMsg) -> Entry:
    headers = msg.headers or {}
    deleted = headers.get("KV-Operation") in _DELETED_OPS or "Nats-Marker-Reason" in headers
    value = None if deleted else (msg.data or b"")
    return Entry(key, int(msg.seq or 0), value, msg.time)
