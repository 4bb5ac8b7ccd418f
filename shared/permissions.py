"""What each role's NATS identity may publish and subscribe to, derived from `schemas.names`.

Least privilege per role: a worker may pull its own job kind, publish its products and read what
it needs; only the coordinator writes the lease, the loop state, the best pointer and jobs (and
removes dead-lettered jobs from the queue), and nobody but `admin` deletes or purges a stream,
bucket or object store. Nothing here is hand-maintained apart from which
capability each role has: every subject comes from the module that names them. Pure: no I/O.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas import names

Role = Literal["coordinator", "selfplay", "trainer", "evaluator", "syncer", "admin"]
ROLES: tuple[Role, ...] = ("coordinator", "selfplay", "trainer", "evaluator", "syncer", "admin")
API = "$JS.API"
MODELS_STREAM = f"OBJ_{names.MODELS_STORE}"


class Permissions(msgspec.Struct, frozen=True):
    """Allow lists (everything else is denied); replies to requests are always allowed."""

    publish: list[str]
    subscribe: list[str]


def stream_read(stream: str) -> list[str]:
    """Read a stream's info and single messages (KV get, object info)."""
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
    ]


def ephemeral_consumers(stream: str) -> list[str]:
    """Create, read through and drop unnamed consumers (KV watches, readers of a stream)."""
    return [
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"{API}.CONSUMER.DELETE.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def durable_consumer(stream: str, name: str) -> list[str]:
    """Create (idempotently) and pull from one named consumer; never delete it."""
    return [
        f"{API}.CONSUMER.CREATE.{stream}.{name}",
        f"{API}.CONSUMER.CREATE.{stream}.{name}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{name}",
        f"{API}.CONSUMER.INFO.{stream}.{name}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",
    ]


def reader(stream: str) -> list[str]:
    return stream_read(stream) + ephemeral_consumers(stream)


def kv_read(bucket: str) -> list[str]:
    return reader(names.kv_stream(bucket))


def kv_write(bucket: str, key: str) -> list[str]:
    """Put `key` (a wildcard pattern allowed) directly or through the hub's domain prefix."""
    subject = names.kv_subject(bucket, key)
    return [subject, f"$JS.*.API.{subject}"]


def lease_slot_buckets() -> list[str]:
    """Every lease slot bucket a hub may have (a cluster's three, a single server's one among
    them), so one identity works on either."""
    return names.lease_slot_buckets(names.LEASE_SLOTS_IN_CLUSTER)


def lease_read() -> list[str]:
    """The lease register (`election`) and every lease slot."""
    buckets = [names.ELECTION_BUCKET, *lease_slot_buckets()]
    return [c for bucket in buckets for c in kv_read(bucket)]


def lease_write(key: str) -> list[str]:
    """Write `key` in the lease register and in every lease slot."""
    buckets = [names.ELECTION_BUCKET, *lease_slot_buckets()]
    return [c for bucket in buckets for c in kv_write(bucket, key)]


def jobs(kind: str) -> list[str]:
    """A worker of one job kind: its shared consumer, dead letters and failure reports."""
    return [
        *[
            c
            for name in names.job_consumers(kind)
            for c in durable_consumer(names.JOBS_STREAM, name)
        ],
        names.dlq_subject(kind, names.ANY, names.ANY),
        names.job_failure_subject(names.ANY),
    ]


def models_read() -> list[str]:
    return [*reader(MODELS_STREAM), *kv_read(names.REGISTRY_BUCKET)]


def models_write() -> list[str]:
    meta = names.model_key(names.ANY, names.ANY)
    return [f"$O.{names.MODELS_STORE}.>", *kv_write(names.REGISTRY_BUCKET, meta)]


def every_node() -> Permissions:
    """What every node does: provision checks, heartbeats, pulses and service discovery."""
    return Permissions(
        publish=[
            f"{API}.INFO",
            f"{API}.STREAM.INFO.*",
            *kv_write(names.NODES_BUCKET, names.ANY),
            names.pulse_subject(names.ANY, names.ANY),
            names.log_subject(names.ANY, names.ANY, names.ANY),
        ],
        subscribe=["_INBOX.>", "$SRV.>", names.pulse_subject(names.ANY, names.ANY)],
    )


def role_grants(role: Role) -> list[str]:
    """The publish grants a role adds to `every_node`."""
    if role == "selfplay":
        return [
            *jobs("selfplay"),
            names.games_subject(names.ANY),
            *models_read(),
        ]
    if role == "trainer":
        return [
            *jobs("train"),
            *reader(names.GAMES_STREAM),
            *models_read(),
            *models_write(),
            *kv_write(names.REGISTRY_BUCKET, names.trained_key(names.ANY)),
            names.model_event_subject("candidate"),
            names.train_progress_subject(names.ANY),
            names.dlq_subject("records", names.ANY, names.ANY),  # rejected game records
        ]
    if role == "evaluator":
        return [*jobs("eval"), names.results_subject(names.ANY, names.ANY), *models_read()]
    if role == "syncer":
        return [
            *lease_read(),
            *lease_write(names.SYNCER_KEY),
            *durable_consumer(names.GAMES_STREAM, names.SYNCER_GAMES_CONSUMER),
            *durable_consumer(names.RESULTS_STREAM, names.SYNCER_RESULTS_CONSUMER),
            *durable_consumer(names.EVENTS_STREAM, names.SYNCER_MODELS_CONSUMER),
            *reader(names.EVENTS_STREAM),
            *reader(names.RESULTS_STREAM),
            *models_read(),
            *kv_read(names.LOOP_BUCKET),
            *kv_write(names.REGISTRY_BUCKET, "sync.status"),
        ]
    if role == "coordinator":
        return coordinator_grants()
    return [">"]


def coordinator_grants() -> list[str]:
    """Leader and scheduler: the lease, the loop state, jobs, pointers; provisioning (create and
    update, never delete or purge a stream); removing a dead-lettered job from the queue."""
    return [
        f"{API}.STREAM.CREATE.*",
        f"{API}.STREAM.MSG.DELETE.{names.JOBS_STREAM}",
        f"{API}.STREAM.UPDATE.*",
        f"{API}.STREAM.NAMES",
        f"{API}.STREAM.LIST",
        *lease_read(),
        *lease_write(names.LEADER_KEY),
        *kv_read(names.NODES_BUCKET),
        *kv_read(names.LOOP_BUCKET),
        *kv_write(names.LOOP_BUCKET, ">"),
        *kv_read(names.REGISTRY_BUCKET),
        *kv_write(names.REGISTRY_BUCKET, ">"),
        "events.>",
        names.leader_validity_subject(),
        "jobs.>",
        "dlq.>",
        *reader(names.JOBS_STREAM),
        *[
            c
            for kind in names.JOB_KINDS
            for name in names.job_consumers(kind)
            for c in durable_consumer(names.JOBS_STREAM, name)
        ],
        *reader(names.DLQ_STREAM),
        *reader(names.ADVISORIES_STREAM),
        *durable_consumer(names.ADVISORIES_STREAM, names.DEAD_LETTER_CONSUMER),
        *reader(names.EVENTS_STREAM),
        *reader(names.RESULTS_STREAM),
        *stream_read(names.GAMES_STREAM),
        *stream_read(MODELS_STREAM),
    ]


def role_subscriptions(role: Role) -> list[str]:
    """Core subscriptions a role adds to `every_node` (consumers deliver to `_INBOX.>`)."""
    if role == "selfplay":
        return [names.model_event_subject("promoted")]  # prefetch the new best model
    return [">"] if role == "admin" else []


def permissions(role: Role) -> Permissions:
    """The full allow lists of `role` (sorted, without repeats)."""
    base = every_node()
    return Permissions(
        publish=sorted(set(base.publish) | set(role_grants(role))),
        subscribe=sorted(set(base.subscribe) | set(role_subscriptions(role))),
    )


def markdown_table() -> str:
    """Every role's allow lists as a markdown table (docs/security.md embeds it)."""
    rows = ["| role | may publish | may subscribe |", "|---|---|---|"]
    for role in ROLES:
        grant = permissions(role)
        publish = "<br>".join(f"`{s}`" for s in grant.publish)
        subscribe = "<br>".join(f"`{s}`" for s in grant.subscribe)
        rows.append(f"| {role} | {publish} | {subscribe} |")
    return "\n".join(rows) + "\n"
