"""Every stream, KV bucket and object store Conclave uses, as configuration (no I/O here).

`Bus.provision()` creates what is missing and updates what drifted; replicas come from the bus
config, except for the lease slots, which are single-replica by design.
"""

from __future__ import annotations

from nats.js.api import (
    DiscardPolicy,
    ObjectStoreConfig,
    Placement,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from schemas import names

DAY = 86400.0


def kv_stream(bucket: str, marker_ttl_s: float | None = None) -> StreamConfig:
    """A history-1 KV bucket that allows per-message TTLs, with optional expiry markers."""
    return StreamConfig(
        name=names.kv_stream(bucket),
        subjects=[f"$KV.{bucket}.>"],
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=120,
        max_msgs_per_subject=1,
        subject_delete_marker_ttl=marker_ttl_s,
    )


def streams() -> list[StreamConfig]:
    return [
        kv_stream(names.NODES_BUCKET, marker_ttl_s=2),
        kv_stream(names.ELECTION_BUCKET, marker_ttl_s=1),
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
            subjects=["jobs.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120,
        ),
        StreamConfig(name=names.DLQ_STREAM, subjects=["dlq.>"], max_age=30 * DAY),
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
        StreamConfig(name=names.RESULTS_STREAM, subjects=["results.>"]),
    ]


def lease_slot_streams(replicas: int) -> list[StreamConfig]:
    """The lease slot buckets of a hub with this replication: R1 each, and in a cluster each
    pinned by its server tag to its own hub server, so losing one server loses one slot."""
    count = names.lease_slot_count(replicas)
    configs = []
    for slot, bucket in enumerate(names.lease_slot_buckets(replicas), start=1):
        config = kv_stream(bucket, marker_ttl_s=1)
        config.num_replicas = 1
        if count == names.LEASE_SLOTS_IN_CLUSTER:
            config.placement = Placement(tags=[names.lease_slot_tag(slot)])
        configs.append(config)
    return configs


def object_stores(replicas: int) -> list[ObjectStoreConfig]:
    return [
        ObjectStoreConfig(bucket=names.MODELS_STORE, storage=StorageType.FILE, replicas=replicas)
    ]


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


def same_settings(existing: StreamConfig, wanted: StreamConfig) -> bool:
    """Whether `existing` (as the server reports it) already has every value `wanted` sets."""
    for name in _OWNED:
        want = getattr(wanted, name)
        if want is None or (name == "duplicate_window" and want == 0):  # 0: the server's default
            continue
        have = getattr(existing, name)
        if isinstance(want, list):
            want, have = sorted(want), sorted(have or [])
        if have != want:
            return False
    return True
