"""The one adapter between Conclave and NATS: connection, provisioning, KV and typed errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ObjectInfo,
    ObjectMetaOptions,
    RawStreamMsg,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue
from nats.nuid import NUID

import nats
from schemas import names
from shared.bus import micro, objects, provision, queue
from shared.bus.consumers import ConsumerCounts, WorkConsumer
from shared.bus.errors import BusError, CasFailed, ConnectFailed, NoPlacement
from shared.bus.message import Entry, Message, Subscription, from_nats, from_raw
from shared.bus.ports import SystemClock
from shared.bus.translate import NO_MESSAGE_FOUND, STREAM_NAME_IN_USE, translated

log = logging.getLogger("conclave.bus")

_DELETED_OPS = {"DEL", "PURGE"}
FOLLOW_BATCH = 256
FOLLOW_WAIT_S = 5.0
FOLLOW_RETRY_S = 1.0
FOLLOW_INACTIVE_S = 60.0  # a follower that stopped fetching for this long is dropped by the server
# A one-off reader's consumer (`read_all`, `snapshot`) is dropped by the server this long after
# its last fetch. Readers may not delete consumers (`shared.auth.permissions`), so this bounds
# how many a reader leaves: its reads per second times this (measured: tests/test_consumer_count).
READ_INACTIVE_S = 5.0
# A key watch's consumer is dropped this long after its watcher stopped (or lost its connection)
# rather than nats-py's 5 minutes: an evaluator watches a key per match job (measured: ~100 such
# left on `KV_registry` at a job every 3 s). A watch lost longer than this, nats-py notices by
# its missing heartbeats (2 x 5 s) and makes again, as after a server restart.
WATCH_INACTIVE_S = 10.0
RECONNECT_WAIT_S = 0.5  # the first round's wait; doubled each round through the pool, up to:
RECONNECT_WAIT_CAP_S = 2.0
NOT_PROVISIONED = "(only admin provisions: `conclave provision --creds admin.nk`)"


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
    # Where replies come to; None: the seed's own (`_INBOX.<public key>`), the only one its
    # identity may subscribe to. Set it for a client that reaches the hub through a leaf link
    # (no seed of its own): the link identity's.
    inbox_prefix: str | None = None


@dataclass(frozen=True)
class Connection:
    """Where the client is connected, and which servers it knows."""

    url: str
    servers: list[str]
    server_name: str
    version: str


class NatsBus:
    """The `Bus` on nats-py: a connected client plus JetStream contexts and bucket handles."""

    def __init__(self, nc: Client, cfg: BusConfig) -> None:
        self.nc = nc
        self.cfg = cfg
        self.js: JetStreamContext = nc.jetstream(domain=cfg.domain, timeout=cfg.request_timeout_s)
        self._kv: dict[str, KeyValue] = {}
        self._followers: set[asyncio.Task[None]] = set()
        self.closing = False
        self._clock = SystemClock()

    @classmethod
    async def connect(cls, cfg: BusConfig) -> NatsBus:
        """Connect with settings for flaky links; fail with ConnectFailed after the timeout."""
        holder: list[NatsBus] = []
        reconnects = Reconnects(random.Random())

        async def on_error(e: Exception) -> None:
            log.warning("nats error: %s", e, extra={"error": type(e).__name__})

        async def on_disconnect() -> None:
            reconnects.reset()  # nats-py calls it before its first attempt to reconnect
            if holder and not holder[0].closing:
                log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected", extra={"url": str(holder[0].nc.connected_url)})

        options: dict[str, Any] = {
            "servers": cfg.servers,
            "name": cfg.name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": RECONNECT_WAIT_S,
            "reconnect_to_server_handler": reconnects,
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
        try:
            prefix = cfg.inbox_prefix or (identity_inbox(cfg.nkey_seed) if cfg.nkey_seed else None)
        except (OSError, ValueError) as e:  # as nats-py would fail on it, but before connecting
            raise ConnectFailed(f"cannot read the nkey seed {cfg.nkey_seed}: {e}") from e
        if prefix:
            options["inbox_prefix"] = prefix
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
        for task in list(self._followers):
            task.cancel()
        if self.nc.is_closed:
            return
        with suppress(TimeoutError, nats.errors.Error):
            await self.nc.flush(timeout=2)
        await self.nc.close()

    # -- provisioning -------------------------------------------------------------------------

    async def provision(self) -> None:
        """Create every stream, bucket and object store Conclave uses that is missing, and bring
        any whose settings drifted up to date. What exists as configured is only read
        (STREAM.INFO): only admin may create or update streams, so a service checks what admin
        provisioned (`conclave up`, `conclave provision`) and fails, naming the stream, if
        anything is missing or out of date."""
        for config in provision.streams():
            await self.ensure_stream(config)
        for config in provision.lease_slot_streams(self.cfg.replicas):
            await self._ensure_slot_stream(config)

    async def ensure_stream(self, config: StreamConfig, replicas: int | None = None) -> None:
        """Create `config`'s stream or update it if it drifted; `replicas` defaults to the bus
        config's."""
        config.num_replicas = self.cfg.replicas if replicas is None else replicas
        config.storage = StorageType.FILE
        existing = await self._stream_config(config.name or "")
        if existing is not None:
            if not provision.same_settings(existing, config):
                with translated(f"update stream {config.name} {NOT_PROVISIONED}"):
                    await self.js.update_stream(config)
            return
        with translated(f"add stream {config.name} {NOT_PROVISIONED}"):
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as e:
                if e.err_code != STREAM_NAME_IN_USE:
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
                f"shared/bus/nats_templates/cluster.conf.tmpl) ({e})"
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
        return names.js_domain_api(self.cfg.domain, subject) if self.cfg.domain else subject

    async def cas_delete(self, bucket: str, key: str, last: int, timeout: float = 2.0) -> int:
        headers = {"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(last)}
        with translated(f"delete {bucket}/{key}"):
            ack = await self.js.publish(
                self._put_subject(bucket, key), b"", headers=headers, timeout=timeout
            )
        return int(ack.seq)

    async def snapshot(self, bucket: str) -> dict[str, Entry]:
        """The current value of every present key in a bucket.

        Ends at the entry the server says is the last (`delta` 0), not at nats-py's end
        marker: that marker can come first when the entries are still unread on the socket
        while the consumer's info already counts them delivered (seen: an empty snapshot).
        """
        kv = await self.kv(bucket)
        entries: dict[str, Entry] = {}
        with translated(f"snapshot {bucket}"):
            if (await kv.status()).values == 0:
                return entries
            watcher = await kv.watchall(inactive_threshold=READ_INACTIVE_S)
            try:
                async for update in _initial(watcher, self.cfg.request_timeout_s):
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
    async def watch(self, bucket: str, key: str) -> AsyncIterator[KeyWatch]:
        """A watcher on one key; a lost watch is not fatal, so callers also wait with timeouts."""
        kv = await self.kv(bucket)
        with translated(f"watch {bucket}/{key}"):
            watcher = KeyWatch(await kv.watch(key, inactive_threshold=WATCH_INACTIVE_S))
        try:
            yield watcher
        finally:
            await watcher.stop()

    async def subject_counts(self, stream: str, subjects: str) -> dict[str, int]:
        """Messages per subject matching `subjects` (a filter with wildcards) in `stream`."""
        with translated(f"count {subjects}"):
            info = await self.js.stream_info(stream, subjects_filter=subjects)
        return dict(info.state.subjects or {})

    async def first_time(self, stream: str, subject: str) -> float | None:
        """When the oldest message on `subject` (a filter) was stored; None when there is none."""
        msg = await self.first_on(stream, subject)
        return msg.timestamp.timestamp() if msg and msg.timestamp else None

    async def read_all(self, stream: str, subject: str, batch: int = 256) -> list[Message]:
        """Every message stored on `subject` (a filter), oldest first, and any stored while it
        reads; no durable consumer, and the one-off one it reads with is gone `READ_INACTIVE_S`
        after (memory, one replica: cheap to make).

        Reads until the server has nothing pending, not up to the count it started with: a
        KV key rewritten meanwhile moves to the end, so a count would read it twice and miss
        another (seen at 1000 heartbeating nodes).
        """
        total = sum((await self.subject_counts(stream, subject)).values())
        if total == 0:
            return []
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            inactive_threshold=READ_INACTIVE_S,
            mem_storage=True,
            num_replicas=1,
        )
        msgs: list[Msg] = []
        with translated(f"read {subject}"):
            sub = await self.js.pull_subscribe(subject, stream=stream, config=config)
            try:
                while not msgs or msgs[-1].metadata.num_pending > 0:
                    try:
                        msgs += await sub.fetch(batch, timeout=5)
                    except nats.errors.TimeoutError:
                        if (await sub.consumer_info()).num_pending or 0:
                            raise
                        break  # what was pending went away (deleted or expired)
            finally:
                await sub.unsubscribe()
        return [from_nats(m) for m in msgs]

    async def follow(
        self,
        stream: str,
        subject: str,
        start_seq: int,
        handler: Callable[[Message], Awaitable[None]],
        wait_s: float = FOLLOW_WAIT_S,
    ) -> asyncio.Task[None]:
        """Hand every message on `subject` from `start_seq` on to `handler`, in order, until the
        bus closes (or the returned task is cancelled). An ordered consumer, but named: an
        identity that may create unnamed consumers on a stream could take over its durables
        (the server treats a `name` in an unnamed create as an update), so none may there. A
        lost consumer is noticed within about two `wait_s` and made again from where it was."""
        sub = await self._follower(stream, subject, start_seq)
        task = asyncio.create_task(self._follow(sub, stream, subject, wait_s, start_seq, handler))
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)
        return task

    async def _follower(
        self, stream: str, subject: str, start_seq: int
    ) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start_seq),
            inactive_threshold=FOLLOW_INACTIVE_S,
            mem_storage=True,
            num_replicas=1,
        )
        with translated(f"follow {subject}"):
            return await self.js.pull_subscribe(subject, stream=stream, config=config)

    async def _follow(
        self,
        sub: JetStreamContext.PullSubscription,
        stream: str,
        subject: str,
        wait_s: float,
        next_seq: int,
        handler: Callable[[Message], Awaitable[None]],
    ) -> None:
        while not self.closing:
            try:
                msgs = await sub.fetch(FOLLOW_BATCH, timeout=wait_s)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except (nats.errors.Error, BusError) as e:  # the consumer is gone: from where we were
                log.warning("following %s: %r; starting again at #%d", subject, e, next_seq)
                await asyncio.sleep(FOLLOW_RETRY_S)
                with suppress(BusError, nats.errors.Error):
                    old, sub = sub, await self._follower(stream, subject, next_seq)
                    await old.unsubscribe()
                continue
            for msg in msgs:
                next_seq = int(msg.metadata.sequence.stream) + 1
                await handler(from_nats(msg))

    def object_chunks(
        self, stream: str, subject: str, count: int, batch: int
    ) -> AsyncGenerator[list[bytes], None]:
        """The first `count` chunk payloads on `subject` of an object store's `stream`, in
        batches of up to `batch` (`shared.bus.objects`)."""
        return objects.chunks(self.js, stream, subject, count, batch)

    async def put_object(self, store: str, name: str, data: bytes, chunk_bytes: int) -> bool:
        """Store `data` as object `name` in the object store `store`, as nats-py's reader expects
        it but without the rollup header nats-py's `put` sends (the store refuses rollups, so no
        writer can wipe it): the chunks, then the meta message, written only while the object
        has none, so a stored object never changes. Returns False if it already had one (the
        chunks just sent are then unreferenced; nobody but admin can purge them)."""
        nuid = NUID().next().decode()
        chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
        with translated(f"put object {store}/{name}"):
            for chunk in chunks:
                await self.js.publish(names.object_chunk_subject(store, nuid), chunk)
        info = ObjectInfo(
            name=name,
            bucket=store,
            nuid=nuid,
            size=len(data),
            chunks=len(chunks),
            mtime=datetime.now(UTC).isoformat(),
            digest=f"SHA-256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()}",
            options=ObjectMetaOptions(max_chunk_size=chunk_bytes),
        )
        meta = names.object_meta_subject(store, name)
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        try:
            with translated(f"put object {store}/{name} meta"):
                await self.js.publish(meta, json.dumps(info.as_dict()).encode(), headers=headers)
        except CasFailed:
            return False
        return True

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

    async def publish_once(self, subject: str, data: bytes, msg_id: str) -> bool:
        """JetStream publish under `msg_id`; False when the stream already had that id."""
        with translated(f"publish {subject}"):
            ack = await self.js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        return not ack.duplicate

    async def subscribe(
        self, subject: str, handler: Callable[[Message], Awaitable[None]]
    ) -> Subscription:
        """Core subscription: `handler` gets every message on `subject` (a filter)."""

        async def on_message(msg: Msg) -> None:
            await handler(from_nats(msg))

        with translated(f"subscribe {subject}"):
            sub: Subscription = await self.nc.subscribe(subject, cb=on_message)
        return sub

    async def flush(self, timeout_s: int = 10) -> None:
        """Wait until the server has everything published so far."""
        with translated("flush"):
            # nats-py writes its PING straight to the socket while SUBs and PUBs wait for its
            # flusher task, so the PONG alone can come back before the server has them (seen:
            # a subscription made and flushed that missed the next message). Send them first.
            await self.nc._flush_pending(force_flush=True)
            await self.nc.flush(timeout=timeout_s)

    def connection(self) -> Connection:
        nc = self.nc
        info = nc._server_info if hasattr(nc, "_server_info") else {}
        url = nc.connected_url
        return Connection(
            url=url.geturl() if url else "",
            servers=[u.geturl() for u in nc.servers],
            server_name=str(info.get("server_name", "")),
            version=str(info.get("version", "")),
        )

    @property
    def clock(self) -> SystemClock:
        """Real time: a real server's TTLs and ack-waits run on it."""
        return self._clock

    @property
    def replicas(self) -> int:
        """How many servers keep each stream and bucket (the lease's slot count too)."""
        return self.cfg.replicas

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts, in bytes."""
        return int(self.nc.max_payload)

    # -- durable work consumers (`shared.bus.queue`) -----------------------------------------

    async def add_consumer(self, stream: str, consumer: WorkConsumer) -> None:
        """Create (or update) a durable consumer on `stream`."""
        await queue.add_consumer(self.js, stream, consumer)

    async def consumer_exists(self, stream: str, durable: str) -> bool:
        return await queue.consumer_exists(self.js, stream, durable)

    async def consumer_counts(self, stream: str, durable: str) -> ConsumerCounts:
        return await queue.consumer_counts(self.js, stream, durable)

    async def delete_consumer(self, stream: str, durable: str) -> None:
        """Remove a durable consumer (nothing if there is none)."""
        await queue.delete_consumer(self.js, stream, durable)

    async def bind(self, stream: str, durable: str) -> queue.Consumer:
        """Pull from an existing durable consumer; never creates or reconfigures it."""
        return await queue.bind(self.js, stream, durable)

    async def pull(
        self, stream: str, subjects: str, consumer: WorkConsumer | str
    ) -> queue.Consumer:
        """Pull from durable `consumer` on `subjects`: made with its settings (a WorkConsumer),
        or bound by name (made with the defaults when missing)."""
        return await queue.pull(self.js, stream, subjects, consumer)

    # -- micro services (`shared.bus.micro`) -------------------------------------------------

    async def register_service(
        self, name: str, version: str, description: str, metadata: dict[str, str]
    ) -> micro.Registration | None:
        """Announce this process as a NATS micro service; None, logged, if refused."""
        return await micro.register(self.nc, name, version, description, metadata)

    async def ping_services(self, wait_s: float) -> list[dict[str, Any]]:
        """The metadata of every micro service answering `$SRV.PING` within `wait_s`."""
        return await micro.ping_metadata(self.nc, wait_s)

    # -- stored messages by sequence or subject ----------------------------------------------

    async def first_on(self, stream: str, subject: str) -> Message | None:
        """The oldest message stored on `subject` (a filter); None when there is none."""
        return await self._get(f"read the first {subject}", stream, seq=1, subject=subject)

    async def last_on(self, stream: str, subject: str) -> Message | None:
        """The newest message stored on `subject` (a filter); None when there is none."""
        return await self._get(f"read the last {subject}", stream, subject=subject)

    async def at_seq(self, stream: str, seq: int) -> Message | None:
        """The message stored at `seq`; None when there is none (removed or never)."""
        return await self._get(f"read {stream} #{seq}", stream, seq=seq)

    async def _get(
        self, what: str, stream: str, seq: int | None = None, subject: str | None = None
    ) -> Message | None:
        with translated(what):
            try:
                raw = await self.js.get_msg(
                    stream, seq=seq, subject=subject, next=seq is not None and subject is not None
                )
            except nats.js.errors.NotFoundError:
                return None
        return from_raw(raw)

    async def delete_at(self, stream: str, seq: int) -> None:
        """Remove the message at `seq` (nothing if it is already gone)."""
        with translated(f"delete {stream} #{seq}"):
            try:
                await self.js.delete_msg(stream, seq)
            except nats.js.errors.APIError as e:
                if e.err_code != NO_MESSAGE_FOUND and not isinstance(
                    e, nats.js.errors.NotFoundError
                ):
                    raise

    async def stream_seqs(self, stream: str) -> tuple[int, int]:
        """The first and last sequence stored in `stream`."""
        with translated(f"stream info {stream}"):
            info = await self.js.stream_info(stream)
        return int(info.state.first_seq), int(info.state.last_seq)


class Reconnects:
    """nats-py's `reconnect_to_server_handler`: which server to try next and after what wait.
    Round robin over the pool nats-py shuffled for this outage, as its own selection does, but
    waiting `reconnect_delay` before each attempt, so that a fleet cut off at once (a hub
    restart) does not come back in lockstep."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.attempts = 0

    def reset(self) -> None:
        """A new outage begins: its first attempt next."""
        self.attempts = 0

    def __call__(self, servers: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
        attempt, self.attempts = self.attempts, self.attempts + 1
        pool = max(1, len(servers))
        server = servers[attempt % pool] if servers else None
        return server, reconnect_delay(attempt, pool, self.rng)


def reconnect_delay(
    attempt: int,
    pool: int,
    rng: random.Random,
    base_s: float = RECONNECT_WAIT_S,
    cap_s: float = RECONNECT_WAIT_CAP_S,
) -> float:
    """The wait before reconnect attempt `attempt` (0: an outage's first) over `pool` servers.

    The first is drawn from [0, base_s] (full jitter): clients cut off together spread their
    first attempts, and nothing has failed yet that a zero wait would repeat. Each later one
    waits between half and all of `base_s` doubled per round through the pool, up to `cap_s`
    (equal jitter): a refused connect is instant, so it must never be near zero."""
    rounds = min(attempt // max(1, pool), 32)  # 2 ** rounds stays a float
    ceiling = min(cap_s, base_s * 2.0**rounds)
    if attempt == 0:
        return rng.random() * ceiling
    return ceiling / 2 + rng.random() * ceiling / 2


class KeyWatch:
    """Changes to a watched key, as entries, with None once the initial values are all seen."""

    def __init__(self, watcher: KeyValue.KeyWatcher) -> None:
        self._watcher = watcher

    def __aiter__(self) -> AsyncIterator[Entry | None]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[Entry | None]:
        async for update in self._watcher:
            yield None if update is None else _watched(update)

    async def stop(self) -> None:
        """End the watch (safe to call more than once, or on a lost connection)."""
        with suppress(TimeoutError, nats.errors.Error):
            await self._watcher.stop()  # type: ignore[no-untyped-call]


def _watched(update: KeyValue.Entry) -> Entry:
    value = None if update.operation in _DELETED_OPS else (update.value or b"")
    created: object = update.created  # nats-py annotates it as int; it is the server's datetime
    return Entry(
        update.key, update.revision or 0, value, created if isinstance(created, datetime) else None
    )


async def _initial(watcher: KeyValue.KeyWatcher, timeout: float) -> AsyncIterator[KeyValue.Entry]:
    """The watcher's initial entries, up to the one with nothing pending after it. Only if
    none comes (every key expired meanwhile) does the end marker end it, after `timeout`."""
    marked = False
    while True:
        try:
            entry: KeyValue.Entry | None = await watcher.updates(timeout)  # type: ignore[no-untyped-call]
        except nats.errors.TimeoutError:
            if marked:
                return
            raise
        if entry is None:
            marked = True
            continue
        yield entry
        if entry.delta == 0:
            return


def identity_inbox(seed_file: str) -> str:
    """The inbox prefix of the identity whose nkey seed is in `seed_file`."""
    import nkeys  # only clients with an identity need it

    seed = Path(seed_file).read_bytes().strip()
    return names.inbox_prefix(nkeys.from_seed(seed).public_key.decode())


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
