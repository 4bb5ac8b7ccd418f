"""Every stream, KV bucket and object store Conclave uses, as configuration (no I/O here).

`Bus.provision()` creates what is missing and updates what drifted; replicas come from the bus
config, except for the lease slots, which are single-replica by design. Only admin may create or
update them (`shared.auth.permissions`), so `conclave up` and `conclave provision` provision as
admin and every service only checks.

Streams refuse rollup headers: a `Nats-Rollup: all` publish would purge the whole stream, and
permissions cannot filter headers, so any identity allowed to write one key could otherwise wipe
a bucket. Nothing Conclave does needs them: KV deletes are `KV-Operation: DEL` markers, and
objects are written without the rollup nats-py's `put` uses (`Bus.put_object`). No bucket has
expiry markers: the server writes them as rollups and so turns rollups on wherever they are,
whatever the config says (measured on 2.15). Keys with a TTL simply go: `nodes` readers judge a
status by its server timestamp, and lease contenders re-read within `recheck_s` and take an
expired key by a compare-and-set on its now empty subject. Purges are denied by permissions,
not by `deny_purge`, which no one (admin included) could ever undo.
"""

from __future__ import annotations

from nats.js.api import (
    DiscardPolicy,
    Placement,
    RetentionPolicy,
    StreamConfig,
)

from schemas import names
from shared.lease.quorum import LEASE_BUCKET_MAX_AGE_S

DAY = 86400.0


def kv_stream(
    bucket: str, marker_ttl_s: float | None = None, max_age_s: float | None = None
) -> StreamConfig:
    """A history-1 KV bucket that allows per-message TTLs, with optional expiry markers (the
    server's expiry markers are rollups, so it allows rollups wherever it writes them) and an
    optional max age."""
    return StreamConfig(
        name=names.kv_stream(bucket),
        subjects=[names.kv_subject(bucket, ">")],
        allow_rollup_hdrs=marker_ttl_s is not None,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=120,
        max_msgs_per_subject=1,
        subject_delete_marker_ttl=marker_ttl_s,
        max_age=max_age_s,
    )


def object_store_stream(bucket: str) -> StreamConfig:
    """An object store's stream as nats-py creates it, except that it refuses rollups."""
    return StreamConfig(
        name=names.object_stream(bucket),
        subjects=names.object_subjects(bucket),
        discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=False,
        allow_direct=True,
    )


def streams() -> list[StreamConfig]:
    """Every stream, KV bucket and object store but the lease slots (`lease_slot_streams`)."""
    return [no_rollups(config) for config in _streams()]


def no_rollups(config: StreamConfig) -> StreamConfig:
    """`config`, refusing rollups unless it was set to allow them (expiry markers need them)."""
    if config.allow_rollup_hdrs is None:
        config.allow_rollup_hdrs = False
    return config


def lease_stream(bucket: str) -> StreamConfig:
    """A lease bucket: per-key TTLs, and a max age that removes a value written without one
    (`shared.lease.quorum.LEASE_BUCKET_MAX_AGE_S`)."""
    return kv_stream(bucket, max_age_s=float(LEASE_BUCKET_MAX_AGE_S))


def _streams() -> list[StreamConfig]:
    return [
        kv_stream(names.NODES_BUCKET),
        *(lease_stream(r) for r in names.LEASE_REGISTERS),
        kv_stream(names.REGISTRY_BUCKET),
        kv_stream(names.LOOP_BUCKET),
        StreamConfig(
            name=names.EVENTS_STREAM,
            subjects=names.events_subjects(),
            max_age=7 * DAY,
            max_bytes=256 * 1024**2,
        ),
        StreamConfig(
            name=names.JOBS_STREAM,
            subjects=[names.all_jobs()],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120,
        ),
        StreamConfig(name=names.DLQ_STREAM, subjects=[names.all_dead_letters()], max_age=30 * DAY),
        StreamConfig(
            name=names.ADVISORIES_STREAM,
            subjects=[names.max_deliveries_advisory(names.JOBS_STREAM)],
            max_age=7 * DAY,
        ),
        StreamConfig(
            name=names.GAMES_STREAM,
            subjects=[names.games_subject("*")],
            max_bytes=8 * 1024**3,
            duplicate_window=300,
        ),
        StreamConfig(name=names.RESULTS_STREAM, subjects=[names.all_results()]),
        object_store_stream(names.MODELS_STORE),
        object_store_stream(names.WHEELS_STORE),
    ]


def lease_slot_streams(
    replicas: int, registers: tuple[str, ...] = names.LEASE_REGISTERS
) -> list[StreamConfig]:
    """The slot buckets of each lease (by its register) on a hub with this replication: R1
    each, and in a cluster each pinned by its server tag to its own hub server, so losing one
    server loses one slot of each lease."""
    return [config for register in registers for config in _slot_streams(replicas, register)]


def _slot_streams(replicas: int, register: str) -> list[StreamConfig]:
    count = names.lease_slot_count(replicas)
    configs = []
    for slot, bucket in enumerate(names.lease_slot_buckets(replicas, register), start=1):
        config = lease_stream(bucket)
        config.num_replicas = 1
        if count == names.LEASE_SLOTS_IN_CLUSTER:
            config.placement = Placement(tags=[names.lease_slot_tag(slot)])
        configs.append(config)
    return configs


# The settings provisioning owns; a stream whose values all match is left alone.
_OWNED = (
    "subjects",
    "retention",
    "num_replicas",
    "max_age",
    "max_bytes",
    "max_msgs_per_subject",
    "duplicate_window",
    "discard",
    "allow_rollup_hdrs",
    "allow_msg_ttl",
    "deny_delete",
    "subject_delete_marker_ttl",
    "storage",
    "placement",  # a lease slot's server: the server moves a stream whose placement changed
)
# Owned settings whose absence is a value: no expiry markers (`nodes`) must remove them.
_UNSET_MEANS_OFF = ("subject_delete_marker_ttl",)


def same_settings(existing: StreamConfig, wanted: StreamConfig) -> bool:
    """Whether `existing` (as the server reports it) already has every value `wanted` sets."""
    for name in _OWNED:
        want, have = getattr(wanted, name), getattr(existing, name)
        if name in _UNSET_MEANS_OFF:
            want, have = want or None, have or None
        elif want is None or (name == "duplicate_window" and want == 0):  # 0: server default
            continue
        if isinstance(want, bool):  # the server leaves a false flag out of its answer
            have = bool(have)
        if isinstance(want, list):
            want, have = sorted(want), sorted(have or [])
        if have != want:
            return False
    return True
