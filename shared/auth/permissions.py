"""What each NATS identity may publish and subscribe to, derived from `schemas.names`.

Least privilege per role: a worker may pull its own job kind, publish its products and read what
it needs; only the coordinator writes the leader lease, the loop state, the best pointer and jobs
(and removes dead-lettered jobs from the queue), and only the syncer the archive lease: each
lease's buckets have one writer role, the only one that could roll them up. No role creates,
updates, deletes or purges a stream, bucket or object store (`admin` provisions them); a durable
consumer is created and configured only by the role that owns it (`durables`), and pulled from
and acked only by its users. Each identity subscribes only to its own inbox (`_INBOX.<public
key>.>`). A node identity (which every service on its node connects with, carrying the node's
roles) writes only its own status key and publishes pulses and logs only under its own node id;
the shared role identities stay as they were. Fleet commands (registry keys
`fleet.node.<node>` and their audit events `events.fleet.>`) are admin's alone: every other
identity is denied them, even the coordinator, whose registry and event grants are wildcards.
Nothing here is hand-maintained
apart from which capability each role has: every subject comes from the module that names them.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from schemas import names

Role = Literal["coordinator", "selfplay", "trainer", "evaluator", "syncer", "admin"]
ROLES: tuple[Role, ...] = ("coordinator", "selfplay", "trainer", "evaluator", "syncer", "admin")
API = names.JS_API
DOMAIN_API = names.JS_ANY_DOMAIN_API  # the same API through a leaf link
MODELS_STREAM = names.object_stream(names.MODELS_STORE)
# What only admin does to streams, buckets and object stores (denied to every other identity).
STREAM_ADMIN = ("CREATE", "UPDATE", "DELETE", "PURGE")
WORKER_OF_KIND: dict[str, Role] = {"selfplay": "selfplay", "train": "trainer", "eval": "evaluator"}
KEY = "<public-key>"  # an identity's key where none is given (the docs)


class Permissions(msgspec.Struct, frozen=True):
    """Allow lists (everything else is denied) and a publish deny list that overrides them;
    replies to requests are always allowed."""

    publish: list[str]
    subscribe: list[str]
    publish_deny: list[str] = []


@dataclass(frozen=True)
class Durable:
    """A shared durable consumer: only `owner` creates or reconfigures it; only `users` pull from
    it and ack its messages."""

    stream: str
    name: str
    owner: Role
    users: tuple[Role, ...]


def durables() -> list[Durable]:
    """Every durable consumer Conclave uses."""
    jobs = [
        Durable(names.JOBS_STREAM, consumer, "coordinator", (WORKER_OF_KIND[kind],))
        for kind in names.JOB_KINDS
        for consumer in names.job_consumers(kind)
    ]
    return [
        *jobs,
        Durable(
            names.ADVISORIES_STREAM, names.DEAD_LETTER_CONSUMER, "coordinator", ("coordinator",)
        ),
        Durable(names.GAMES_STREAM, names.SYNCER_GAMES_CONSUMER, "syncer", ("syncer",)),
        Durable(names.RESULTS_STREAM, names.SYNCER_RESULTS_CONSUMER, "syncer", ("syncer",)),
        Durable(names.EVENTS_STREAM, names.SYNCER_MODELS_CONSUMER, "syncer", ("syncer",)),
    ]


def has_durables(stream: str) -> bool:
    return any(d.stream == stream for d in durables())


def stream_read(stream: str) -> list[str]:
    """Read a stream's info and single messages (KV get, object info)."""
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        names.under(f"{API}.DIRECT.GET.{stream}"),
    ]


def ephemeral_consumers(stream: str) -> list[str]:
    """Create and read through randomly named consumers (one-off readers, `Bus.follow`), and on
    a stream without durables unnamed ones too (KV watches): the server takes a `name` in an
    unnamed create as an update of that consumer, which a subject cannot show, while a named
    create names its consumer in the subject, so the durables' names are denied (`denied`).
    Nobody but admin deletes a consumer (ephemerals expire by themselves)."""
    unnamed = [] if has_durables(stream) else [f"{API}.CONSUMER.CREATE.{stream}"]
    return [
        *unnamed,
        names.under(f"{API}.CONSUMER.CREATE.{stream}"),
        f"{API}.CONSUMER.INFO.{stream}.{names.ANY}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{names.ANY}",
        names.under(names.js_ack(stream)),
        names.under(names.js_flow_control(stream)),
    ]


def durable_use(durable: Durable) -> list[str]:
    """Bind to, pull from and ack one durable consumer."""
    stream, name = durable.stream, durable.name
    return [
        f"{API}.CONSUMER.INFO.{stream}.{name}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}",
        names.under(names.js_ack(stream, name)),
    ]


def durable_configure(durable: Durable) -> list[str]:
    """Create or update one durable consumer (every API form of it)."""
    stream, name = durable.stream, durable.name
    return [
        f"{API}.CONSUMER.CREATE.{stream}.{name}",
        names.under(f"{API}.CONSUMER.CREATE.{stream}.{name}"),
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{name}",
    ]


def reader(stream: str) -> list[str]:
    return stream_read(stream) + ephemeral_consumers(stream)


def kv_read(bucket: str) -> list[str]:
    return reader(names.kv_stream(bucket))


def kv_write(bucket: str, key: str) -> list[str]:
    """Put `key` (a wildcard pattern allowed); `with_domains` adds the leaf form."""
    return [names.kv_subject(bucket, key)]


def lease_buckets(register: str) -> list[str]:
    """A lease's register and every slot bucket a hub may have for it (a cluster's three, a
    single server's one among them), so one identity works on either."""
    return [register, *names.lease_slot_buckets(names.LEASE_SLOTS_IN_CLUSTER, register)]


def lease_read(register: str) -> list[str]:
    """Read the lease whose register is `register`: the register and its slots."""
    return [c for bucket in lease_buckets(register) for c in kv_read(bucket)]


def lease_write(register: str, key: str) -> list[str]:
    """Write `key` in the lease's register and in every one of its slots."""
    return [c for bucket in lease_buckets(register) for c in kv_write(bucket, key)]


def durable_grants(roles: frozenset[Role]) -> list[str]:
    """The durables `roles` own (configure) or use (bind, pull, ack)."""
    grants: list[str] = []
    for durable in durables():
        if durable.owner in roles:
            grants += durable_configure(durable)
        if roles & set(durable.users):
            grants += durable_use(durable)
    return grants


def jobs(kind: str) -> list[str]:
    """A worker of one job kind: dead letters and failure reports (its consumers come from
    `durable_grants`: bind, pull and ack, never create)."""
    return [names.dlq_subject(kind, names.ANY, names.ANY), names.job_failure_subject(names.ANY)]


def models_read() -> list[str]:
    return [*reader(MODELS_STREAM), *kv_read(names.REGISTRY_BUCKET)]


def models_write() -> list[str]:
    meta = names.model_key(names.ANY, names.ANY)
    return [
        names.under(names.object_prefix(names.MODELS_STORE)),
        *kv_write(names.REGISTRY_BUCKET, meta),
    ]


def telemetry(node_id: str) -> list[str]:
    """Pulses and log lines of `node_id`'s services (`names.ANY`: of every node's)."""
    return [
        names.pulse_subject(node_id, names.ANY),
        names.log_subject(node_id, names.ANY, names.ANY),
    ]


def every_identity(identity: str, node_id: str = names.ANY) -> Permissions:
    """What every identity does: provision checks, its services' pulses and logs (a role
    identity's under any node, a node identity's under its own), service discovery, replies to
    its own inbox."""
    return Permissions(
        publish=[f"{API}.INFO", f"{API}.STREAM.INFO.{names.ANY}", *telemetry(node_id)],
        subscribe=[
            names.under(names.inbox_prefix(identity)),
            names.under(names.SERVICES_ROOT),
        ],
    )


def role_grants(role: Role) -> list[str]:
    """The publish grants a role adds to `every_identity`."""
    if role == "selfplay":
        return [*jobs("selfplay"), names.games_subject(names.ANY), *models_read()]
    if role == "trainer":
        return [
            *jobs("train"),
            *reader(names.GAMES_STREAM),
            *models_read(),
            *models_write(),
            *kv_write(names.REGISTRY_BUCKET, names.trained_key(names.ANY)),
            names.model_event_subject("candidate"),
            names.train_progress_subject(names.ANY),
            names.dlq_subject(names.REJECTED_RECORDS, names.ANY, names.ANY),
        ]
    if role == "evaluator":
        return [*jobs("eval"), names.results_subject(names.ANY, names.ANY), *models_read()]
    if role == "syncer":
        return [
            *lease_read(names.ARCHIVE_LEASE_BUCKET),
            *lease_write(names.ARCHIVE_LEASE_BUCKET, names.SYNCER_KEY),
            *reader(names.EVENTS_STREAM),
            *reader(names.RESULTS_STREAM),
            *models_read(),
            *kv_read(names.LOOP_BUCKET),
            *kv_write(names.REGISTRY_BUCKET, names.SYNC_STATUS_KEY),
            *[names.dlq_subject(kind, names.ANY, names.ANY) for kind in names.SYNCER_DEAD_KINDS],
        ]
    if role == "coordinator":
        return coordinator_grants()
    return [">"]


def coordinator_grants() -> list[str]:
    """Leader and scheduler: the lease, the loop state, jobs, pointers; the job consumers (it
    writes the jobs, so it sets how they are delivered); removing a dead-lettered job."""
    return [
        f"{API}.STREAM.MSG.DELETE.{names.JOBS_STREAM}",
        f"{API}.STREAM.NAMES",
        f"{API}.STREAM.LIST",
        *(f"{API}.CONSUMER.DELETE.{names.JOBS_STREAM}.{c}" for c in names.LEGACY_JOB_CONSUMERS),
        *lease_read(names.ELECTION_BUCKET),
        *lease_write(names.ELECTION_BUCKET, names.LEADER_KEY),
        *kv_read(names.NODES_BUCKET),
        *kv_read(names.LOOP_BUCKET),
        *kv_write(names.LOOP_BUCKET, ">"),
        *kv_read(names.REGISTRY_BUCKET),
        *kv_write(names.REGISTRY_BUCKET, ">"),
        names.all_events(),
        names.leader_validity_subject(),
        names.all_jobs(),
        names.all_dead_letters(),
        *reader(names.JOBS_STREAM),
        *reader(names.DLQ_STREAM),
        *reader(names.ADVISORIES_STREAM),
        *reader(names.EVENTS_STREAM),
        *reader(names.RESULTS_STREAM),
        *stream_read(names.GAMES_STREAM),
        *stream_read(MODELS_STREAM),
    ]


def role_subscriptions(role: Role) -> list[str]:
    """Core subscriptions a role adds to `every_identity` (consumers deliver to its inbox)."""
    if role == "selfplay":
        return [names.model_event_subject("promoted")]  # prefetch the new best model
    return []


def fleet_commands() -> list[str]:
    """Issuing a fleet command: its standing registry key and its audit event (admin only)."""
    return [
        *kv_write(names.REGISTRY_BUCKET, names.all_fleet_keys()),
        *kv_write(names.REGISTRY_BUCKET, names.fleet_order_key(names.ANY)),
        names.all_fleet_events(),
    ]


def denied(roles: frozenset[Role]) -> list[str]:
    """What `roles` may never publish, whatever their wildcards allow: stream administration,
    fleet commands, unnamed consumers beside durables, and configuring, deleting or (unless
    they use them) pulling from or acking others' durables."""
    deny = [names.under(f"{API}.STREAM.{verb}") for verb in STREAM_ADMIN]
    deny += fleet_commands()
    deny += sorted({f"{API}.CONSUMER.CREATE.{d.stream}" for d in durables()})  # see ephemerals
    for durable in durables():
        stream, name = durable.stream, durable.name
        deny.append(f"{API}.CONSUMER.DELETE.{stream}.{name}")
        if durable.owner not in roles:
            deny += durable_configure(durable)
        if not roles & set(durable.users):
            deny.append(f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}")
            deny.append(names.under(names.js_ack(stream, name)))
    return deny


def with_domains(subjects: list[str]) -> list[str]:
    """Each JetStream API subject (KV puts included) also through a leaf link's domain prefix."""
    extra = [
        DOMAIN_API + s.removeprefix(API) if s.startswith(f"{API}.") else f"{DOMAIN_API}.{s}"
        for s in subjects
        if s.startswith(f"{API}.") or names.is_kv_subject(s)
    ]
    return subjects + extra


def _sorted(subjects: list[str]) -> list[str]:
    return sorted(set(with_domains(subjects)))


def permissions(role: Role, identity: str = KEY) -> Permissions:
    """The full lists of `role` for the identity with public key `identity` (sorted, without
    repeats). Admin may do everything, read every inbox included."""
    if role == "admin":
        return Permissions(publish=[">"], subscribe=[">"])
    return combined(frozenset({role}), identity)


def combined(
    roles: frozenset[Role],
    identity: str,
    extra: Permissions | None = None,
    node_id: str = names.ANY,
) -> Permissions:
    """The lists of an identity that acts as every one of `roles` (none: only `every_identity`)
    for `node_id` (a node identity) or any node (a role identity), plus `extra`."""
    base = every_identity(identity, node_id)
    publish = base.publish + [g for role in sorted(roles) for g in role_grants(role)]
    subscribe = base.subscribe + [s for role in sorted(roles) for s in role_subscriptions(role)]
    if extra is not None:
        publish, subscribe = publish + extra.publish, subscribe + extra.subscribe
    return Permissions(
        publish=_sorted(publish + durable_grants(roles)),
        subscribe=sorted(set(subscribe)),
        publish_deny=_sorted(denied(roles)),
    )


def node_permissions(node_id: str, identity: str, roles: tuple[Role, ...] = ()) -> Permissions:
    """A node's own identity, which every service on the node connects with: its status key, its
    services' pulses and logs (publish, and the heartbeat reads the pulses), and everything
    `roles` (the roles the node runs) may do, except speak for another node."""
    if "admin" in roles:
        raise ValueError(f"node {node_id}: roles may not include admin")
    own = Permissions(
        publish=[
            *kv_write(names.NODES_BUCKET, names.node_key(node_id)),
            *kv_read(names.REGISTRY_BUCKET),  # its fleet orders, answered under its own key
            *kv_write(names.REGISTRY_BUCKET, names.fleet_report_key(node_id)),
            *reader(names.object_stream(names.WHEELS_STORE)),  # the wheel of an upgrade
        ],
        subscribe=[names.pulse_wildcard(node_id)],
    )
    return combined(frozenset(roles), identity, own, node_id)


def covers(pattern: str, subject: str) -> bool:
    """Whether permission `pattern` covers `subject` (which may itself hold wildcards, as a
    subscription does): `>` covers the rest, `*` one token that is not `>`."""
    have, want = pattern.split("."), subject.split(".")
    for i, token in enumerate(have):
        if token == ">":
            return len(want) > i
        if i >= len(want) or want[i] == ">" or (token != "*" and token != want[i]):
            return False
    return len(want) == len(have)


def may_publish(grant: Permissions, subject: str) -> bool:
    allowed = any(covers(p, subject) for p in grant.publish)
    return allowed and not any(covers(p, subject) for p in grant.publish_deny)


def may_subscribe(grant: Permissions, subject: str) -> bool:
    return any(covers(p, subject) for p in grant.subscribe)


EXAMPLE_NODE = "NODE"
OTHER_NODE = "OTHER"
NODE_ROLES: tuple[Role, ...] = tuple(role for role in ROLES if role != "admin")


def identities_shown() -> list[tuple[str, Permissions]]:
    """Every kind of identity, with placeholders for its key (and node id); a node identity
    without roles (one with roles adds those roles' lists to it)."""
    shown = [(role, permissions(role, KEY)) for role in NODE_ROLES]
    node = (f"node {EXAMPLE_NODE}", node_permissions(EXAMPLE_NODE, KEY))
    return [*shown, node, ("admin", permissions("admin", KEY))]


def capability_columns() -> list[tuple[str, Permissions]]:
    """The capability table's identities: `identities_shown` and a node identity carrying every
    role (what `conclave up` runs its node as)."""
    *shown, admin = identities_shown()
    every_role = node_permissions(EXAMPLE_NODE, KEY, NODE_ROLES)
    return [*shown, (f"node {EXAMPLE_NODE} with every role", every_role), admin]


def capabilities() -> list[tuple[str, str, str]]:
    """What the docs' capability table checks: (what, `pub`/`sub`, a concrete subject)."""
    jobs_consumer = names.job_consumer("selfplay")
    other = names.node_key(OTHER_NODE)
    return [
        ("purge a stream or bucket", "pub", f"{API}.STREAM.PURGE.{names.GAMES_STREAM}"),
        ("update a stream's limits", "pub", f"{API}.STREAM.UPDATE.{names.DLQ_STREAM}"),
        ("delete an object store", "pub", f"{API}.STREAM.DELETE.{MODELS_STREAM}"),
        (
            "create or reconfigure a job consumer",
            "pub",
            f"{API}.CONSUMER.DURABLE.CREATE.{names.JOBS_STREAM}.{jobs_consumer}",
        ),
        (
            "delete a job consumer",
            "pub",
            f"{API}.CONSUMER.DELETE.{names.JOBS_STREAM}.{jobs_consumer}",
        ),
        (
            "reconfigure the syncer's consumer",
            "pub",
            f"{API}.CONSUMER.CREATE.{names.GAMES_STREAM}.{names.SYNCER_GAMES_CONSUMER}.{names.games_subject(names.ANY)}",
        ),
        (
            "create an unnamed consumer on GAMES",
            "pub",
            f"{API}.CONSUMER.CREATE.{names.GAMES_STREAM}",
        ),
        (
            "pull self-play jobs",
            "pub",
            f"{API}.CONSUMER.MSG.NEXT.{names.JOBS_STREAM}.{jobs_consumer}",
        ),
        (
            "pull the syncer's games",
            "pub",
            f"{API}.CONSUMER.MSG.NEXT.{names.GAMES_STREAM}.{names.SYNCER_GAMES_CONSUMER}",
        ),
        ("publish jobs", "pub", names.job_subject("selfplay", "tictactoe", "sp")),
        (
            "write the leader lease",
            "pub",
            names.kv_subject(names.ELECTION_BUCKET, names.LEADER_KEY),
        ),
        (
            "write the archive lease",
            "pub",
            names.kv_subject(names.ARCHIVE_LEASE_BUCKET, names.SYNCER_KEY),
        ),
        (
            "write the best-model pointer",
            "pub",
            names.kv_subject(names.REGISTRY_BUCKET, names.best_key("tictactoe")),
        ),
        ("write a checkpoint", "pub", names.object_chunk_subject(names.MODELS_STORE, "x")),
        ("publish game records", "pub", names.games_subject("tictactoe")),
        (
            f"write its status (`{EXAMPLE_NODE}`)",
            "pub",
            names.kv_subject(names.NODES_BUCKET, EXAMPLE_NODE),
        ),
        ("write another node's status", "pub", names.kv_subject(names.NODES_BUCKET, other)),
        (
            f"publish its pulses (`{EXAMPLE_NODE}`)",
            "pub",
            names.pulse_subject(EXAMPLE_NODE, "selfplay"),
        ),
        (
            f"publish its log lines (`{EXAMPLE_NODE}`)",
            "pub",
            names.log_subject(EXAMPLE_NODE, "selfplay", "info"),
        ),
        (
            f"drain or resume a node (`{EXAMPLE_NODE}`)",
            "pub",
            names.kv_subject(names.REGISTRY_BUCKET, names.fleet_key(EXAMPLE_NODE)),
        ),
        ("record a fleet command's audit event", "pub", names.fleet_event_subject("drain", other)),
        (
            f"order a node's restart or upgrade (`{EXAMPLE_NODE}`)",
            "pub",
            names.kv_subject(names.REGISTRY_BUCKET, names.fleet_order_key(EXAMPLE_NODE)),
        ),
        (
            f"answer its fleet orders (`{EXAMPLE_NODE}`)",
            "pub",
            names.kv_subject(names.REGISTRY_BUCKET, names.fleet_report_key(EXAMPLE_NODE)),
        ),
        (
            "answer another node's fleet orders",
            "pub",
            names.kv_subject(names.REGISTRY_BUCKET, names.fleet_report_key(other)),
        ),
        ("store an upgrade wheel", "pub", names.object_chunk_subject(names.WHEELS_STORE, "x")),
        ("publish another node's pulses", "pub", names.pulse_subject(other, "selfplay")),
        ("publish another node's log lines", "pub", names.log_subject(other, "selfplay", "info")),
        ("read its own inbox", "sub", f"{names.inbox_prefix(KEY)}.x"),
        ("read another identity's inbox", "sub", f"{names.inbox_prefix('OTHER')}.x"),
        ("read every inbox (`_INBOX.>`)", "sub", names.under(names.INBOX_ROOT)),
    ]


def capability_table() -> str:
    """Who may do what, checked against the permissions (docs/security.md embeds it)."""
    shown = capability_columns()
    rows = [
        "| may ... | " + " | ".join(name for name, _ in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for what, verb, subject in capabilities():
        check = may_publish if verb == "pub" else may_subscribe
        cells = ["yes" if check(grant, subject) else "no" for _, grant in shown]
        rows.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def markdown_table() -> str:
    """Every identity's lists as a markdown table (docs/security.md embeds it)."""
    rows = ["| identity | may publish | never publishes | may subscribe |", "|---|---|---|---|"]
    for name, grant in identities_shown():
        cells = [grant.publish, grant.publish_deny, grant.subscribe]
        text = [("<br>".join(f"`{s}`" for s in cell) or "-") for cell in cells]
        rows.append(f"| {name} | " + " | ".join(text) + " |")
    return "\n".join(rows) + "\n"
