"""Every subject, stream, KV bucket, object store and key Conclave uses, named in one place."""

from __future__ import annotations

import base64
import re

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# KV buckets
NODES_BUCKET = "nodes"
ELECTION_BUCKET = "election"  # the leader lease's register: who leads, with which term
ARCHIVE_LEASE_BUCKET = "archive-lease"  # the syncer's lease register: who archives
# Each lease has its own register (replicated) and slots, so each bucket has one writer role.
LEASE_REGISTERS = (ELECTION_BUCKET, ARCHIVE_LEASE_BUCKET)
LEASE_SLOTS_IN_CLUSTER = 3  # lease slots: one single-replica bucket pinned to each hub server
REGISTRY_BUCKET = "registry"  # per game: best-model pointer, model metadata
LOOP_BUCKET = "loop"  # per game: the master loop's state, written by the leader only

# Object stores
MODELS_STORE = "models"  # checkpoint blobs, named by their sha256
WHEELS_STORE = "wheels"  # upgrade wheels (`conclave fleet upgrade`), named by their sha256

# Streams
EVENTS_STREAM = "EVENTS"
JOBS_STREAM = "JOBS"  # work queue: one durable pull consumer per job kind
DLQ_STREAM = "DLQ"  # jobs that exhausted their deliveries, with the reason
GAMES_STREAM = "GAMES"  # self-play game records (msgpack), deduplicated by game id
RESULTS_STREAM = "RESULTS"  # evaluation match results: the ratings pool

JOB_KINDS = ("selfplay", "train", "eval")

# Durable consumers (besides one per job kind, `job_consumer`)
DEAD_LETTER_CONSUMER = "dead-letters"  # the leader's, on ADVISORIES
SYNCER_GAMES_CONSUMER = "syncer-games"
SYNCER_RESULTS_CONSUMER = "syncer-results"
SYNCER_MODELS_CONSUMER = "syncer-models"  # candidate events, on EVENTS

# KV keys
LEADER_KEY = "leader"
SYNCER_KEY = "syncer"  # the archive's lease, in the archive lease buckets
PROTOCOL_KEY = "cluster.protocol"  # registry: the wire protocols the coordinator accepts
SYNC_STATUS_KEY = "sync.status"  # registry: the syncer's last archive run
MATCH_EVALUATORS_KEY = "eval.match"  # registry: the evaluators fast enough for matches
LOOP_STATE_KEY = "state"  # loop: the master loop's record (per game state, term-stamped)


def lease_slot_count(replicas: int) -> int:
    """How many lease slots a hub with this replication has: one per server of a 3-server
    cluster, so losing a server takes at most one slot; one on a single server."""
    return LEASE_SLOTS_IN_CLUSTER if replicas >= LEASE_SLOTS_IN_CLUSTER else 1


def lease_slot_bucket(slot: int, register: str = ELECTION_BUCKET) -> str:
    """The KV bucket of slot `slot` (from 1) of the lease whose register is `register`."""
    return f"{register}-{slot}"


def lease_slot_buckets(replicas: int, register: str = ELECTION_BUCKET) -> list[str]:
    count = lease_slot_count(replicas)
    return [lease_slot_bucket(i, register) for i in range(1, count + 1)]


def lease_slot_tag(slot: int) -> str:
    """The server tag that pins lease slot `slot`'s bucket to one hub server."""
    return f"lease-slot-{slot}"


class BadName(ValueError):
    """A node id or other name token that cannot be used in a subject or KV key."""


def check_token(value: str, field: str) -> str:
    """Return `value` if it is a valid subject token / KV key, else raise BadName naming `field`."""
    if not _TOKEN.match(value):
        raise BadName(f"{field} {value!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


ANY = "*"  # a one-token wildcard: builders given it make filters (permissions, subscriptions)
ALL = ">"  # a trailing wildcard: every subject under a prefix


def under(prefix: str) -> str:
    """Every subject under `prefix`: `$JS.ACK.JOBS` -> `$JS.ACK.JOBS.>`."""
    return f"{prefix}.{ALL}"


def token_or_any(value: str, field: str) -> str:
    return value if value == ANY else check_token(value, field)


def node_key(node_id: str) -> str:
    return check_token(node_id, "node id")


def service_kind(instance: str) -> str:
    """The service an instance name runs (`selfplay-2` -> `selfplay`): a node may run several
    processes of one service, each with its own name in pulses and status."""
    return instance.split("-", 1)[0]


def pulse_subject(node_id: str, service: str) -> str:
    """Core subject where each service process reports its event-loop lag about once a second."""
    return f"pulse.{node_id}.{service}"


def pulse_wildcard(node_id: str) -> str:
    return f"pulse.{node_id}.*"


def log_subject(node_id: str, service: str, level: str) -> str:
    """Core subject of a service's log lines (`conclave logs` filters by its tokens)."""
    return f"logs.{token_or_any(node_id, 'node id')}.{token_or_any(service, 'service')}.{level}"


def all_events() -> str:
    return under("events")


def events_subjects() -> list[str]:
    return [all_events()]


def leader_event_subject(kind: str) -> str:
    return f"events.leader.{kind}"


def leader_validity_subject() -> str:
    """Core subject where a lease holder says how long it may act as leader (an audit trail)."""
    return "leader.validity"


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def is_kv_subject(subject: str) -> bool:
    return subject.startswith("$KV.")


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def object_stream(store: str) -> str:
    return f"OBJ_{store}"


def object_prefix(store: str) -> str:
    """The root of every subject of an object store: its chunks and metas."""
    return f"$O.{store}"


def object_chunk_subject(store: str, nuid: str) -> str:
    """Where an object's chunks go: one token (`nuid`) per stored version."""
    return f"$O.{store}.C.{nuid}"


def object_subjects(store: str) -> list[str]:
    """Every subject of an object store's stream: chunks and metas."""
    return [f"$O.{store}.C.>", f"$O.{store}.M.>"]


def object_meta_subject(store: str, name: str) -> str:
    """An object's meta message, under its name in URL-safe base64 (as nats-py names it)."""
    return f"$O.{store}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


# Evaluation jobs wait in lanes, one durable consumer each, and an evaluator pulls from the first
# lane that has work: promotion matches, then gauntlets of the newest best, then rating games.
EVAL_LANES = ("match", "gauntlet", "rating")
# Self-play and training jobs wait in one lane per capability tier, fastest first: a worker pulls
# its own tier, then (only when that is empty) the slower ones, so a GPU node takes CPU-tier
# work that would otherwise wait, and a CPU node never gets a job sized for a GPU.
TIERS = ("gpu", "cpu")
TIERED_KINDS = ("selfplay", "train")
DEFAULT_TIER = "cpu"  # every node can run a CPU-tier job
# The one consumer of a kind from before lanes and tiers (on `jobs.<kind>.>`): a work-queue
# stream refuses the lanes' consumers beside it, so the coordinator drops it (`ensure_consumer`).
LEGACY_JOB_CONSUMERS = ("eval-workers", "selfplay-workers", "train-workers")


def legacy_job_consumer(kind: str) -> str | None:
    """The kind's consumer from before lanes and tiers, None if it never had one."""
    name = f"{kind}-workers"
    return name if name in LEGACY_JOB_CONSUMERS else None


def untiered_job_filter(kind: str) -> str:
    """Jobs of a tiered kind queued before tiers: `jobs.<kind>.<game>.<group>`, one token short."""
    return f"jobs.{kind}.{ANY}.{ANY}"


def job_lanes(kind: str) -> tuple[str, ...]:
    """The priority lanes of a job kind, highest first ("" for a kind with one queue)."""
    if kind == "eval":
        return EVAL_LANES
    return TIERS if kind in TIERED_KINDS else ("",)


def tier_lanes(tier: str) -> tuple[str, ...]:
    """The tiers a worker of `tier` pulls, in order: its own, then every slower one."""
    if tier not in TIERS:
        raise BadName(f"tier {tier!r} is not one of {TIERS}")
    return TIERS[TIERS.index(tier) :]


def _kind_and_lane(kind: str, lane: str) -> str:
    if not lane and kind in TIERED_KINDS:
        lane = DEFAULT_TIER
    if lane not in job_lanes(kind):
        raise BadName(f"job lane {lane!r} is not one of {job_lanes(kind)} for kind {kind!r}")
    return f"{kind}.{lane}" if lane else kind


def job_subject(kind: str, game: str, group: str, lane: str = "") -> str:
    """Jobs are filed by kind and lane (a tier, or an evaluation lane), game and group (e.g. a
    match), so queues can be counted by each: `jobs.selfplay.gpu.<game>.sp`,
    `jobs.eval.match.<game>.m3`. A tiered kind's lane defaults to `DEFAULT_TIER`."""
    prefix = _kind_and_lane(kind, lane)
    return f"jobs.{prefix}.{check_token(game, 'game')}.{check_token(group, 'job group')}"


def job_prefix(kind: str, lane: str | None = "") -> str:
    """How every job subject of a kind's lane begins, or (None) of all its lanes."""
    return f"jobs.{kind if lane is None else _kind_and_lane(kind, lane)}."


def job_filter(kind: str, lane: str | None = "") -> str:
    return f"{job_prefix(kind, lane)}{ALL}"


def all_jobs() -> str:
    return under("jobs")


def job_game_filter(kind: str, game: str, lane: str | None = None) -> str:
    """Every queued job of one kind for one game: in one lane, or (None) in all of them."""
    if lane is None:
        prefix = f"{kind}.*" if job_lanes(kind) != ("",) else kind
    else:
        prefix = _kind_and_lane(kind, lane)
    return f"jobs.{prefix}.{token_or_any(game, 'game')}.>"


def game_and_group(subject: str) -> tuple[str, str]:
    """The last two tokens of a job or dead-letter subject: its game and group."""
    *_, game, group = subject.split(".")
    return game, group


def job_consumer(kind: str, lane: str = "") -> str:
    """The one durable consumer shared by every worker of a job kind's lane."""
    return f"{_kind_and_lane(kind, lane).replace('.', '-')}-workers"


def job_consumers(kind: str) -> list[str]:
    return [job_consumer(kind, lane) for lane in job_lanes(kind)]


def consumer_kind(consumer: str) -> str:
    """The job kind of a job consumer's name (`eval-match-workers` -> `eval`)."""
    return consumer.removesuffix("-workers").split("-")[0]


def dlq_subject(kind: str, game: str, group: str) -> str:
    return f"dlq.{kind}.{token_or_any(game, 'game')}.{token_or_any(group, 'job group')}"


def dlq_filter(kind: str) -> str:
    """Every dead letter of one kind."""
    return under(f"dlq.{check_token(kind, 'dead-letter kind')}")


def all_dead_letters() -> str:
    return under("dlq")


def max_deliveries_advisory(stream: str) -> str:
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*"


def games_subject(game: str) -> str:
    return f"games.{token_or_any(game, 'game')}"


def results_subject(game: str, group: str) -> str:
    return f"results.{token_or_any(game, 'game')}.{token_or_any(group, 'job group')}"


def all_results() -> str:
    return under("results")


def model_event_subject(kind: str) -> str:
    return f"events.model.{kind}"


def train_progress_subject(game: str) -> str:
    """Where a trainer reports a job's progress while it trains (stored in EVENTS)."""
    return f"events.train.progress.{token_or_any(game, 'game')}"


def fleet_event_subject(action: str, node_id: str) -> str:
    """The audit event of a fleet command (`conclave fleet drain NODE`), stored in EVENTS; a
    filter with `ANY` for either token. Only admin publishes under `all_fleet_events`."""
    action, node_id = token_or_any(action, "fleet action"), token_or_any(node_id, "node id")
    return f"events.fleet.{action}.{node_id}"


def all_fleet_events() -> str:
    return under("events.fleet")


def job_failure_subject(job_id: str) -> str:
    """One subject per job, so the last failure of a job is one direct read of the EVENTS stream."""
    return f"events.job.failed.{token_or_any(job_id, 'job id')}"


ADVISORIES_STREAM = "ADVISORIES"  # keeps max-delivery advisories until the leader handles them


def best_key(game: str) -> str:
    return f"{check_token(game, 'game')}.best"


def decided_key(game: str, sha256: str) -> str:
    """Registry key the scheduler writes once a candidate's match is decided (a ModelEvent), so
    evaluators skip that match's jobs still queued."""
    return f"{token_or_any(game, 'game')}.decided.{check_token(sha256, 'sha256')}"


def model_key(game: str, sha256: str) -> str:
    return f"{token_or_any(game, 'game')}.model.{sha256}"


def is_model_key(key: str) -> bool:
    """Whether a registry key is a model's metadata (`model_key`)."""
    return ".model." in key


def trained_key(job_id: str) -> str:
    """Registry key the trainer writes when a training job has produced its candidate."""
    return f"trained.{token_or_any(job_id, 'job id')}"


def fleet_key(node_id: str) -> str:
    """Registry key of a node's standing fleet command (drain, resume), written only by admin;
    `ANY` for a filter. Its second token is no game key's (`<game>.best`, `.model.`, ...)."""
    return f"fleet.node.{token_or_any(node_id, 'node id')}"


def all_fleet_keys() -> str:
    """Every fleet key in the registry (what no identity but admin may write), and no other
    key: a game named `fleet` keeps its own (`fleet.best`)."""
    return fleet_key(ANY)


def fleet_order_key(node_id: str) -> str:
    """Registry key of the last one-off order (restart, upgrade) to a node's launcher, written
    only by admin; `ANY` for a filter."""
    return f"fleet.order.{token_or_any(node_id, 'node id')}"


def fleet_report_key(node_id: str) -> str:
    """Registry key where a node's launcher answers its last order, written by that node."""
    return f"fleet.report.{token_or_any(node_id, 'node id')}"


def loop_key(game: str) -> str:
    return check_token(game, "game")


def issued_key(game: str, group: str, job_id: str) -> str:
    """Loop-bucket key the leader writes (the EvalJob) before it submits an evaluation job: the
    results it owes. A filter with `ANY` for any of the tokens."""
    game, group = token_or_any(game, "game"), token_or_any(group, "job group")
    return f"issued.{game}.{group}.{token_or_any(job_id, 'job id')}"


# Dead-letter kinds besides the job kinds (`dlq_subject`'s first token).
SKIPPED_RESULTS = "results"  # a stored result that counts for nothing (and why)
REJECTED_RECORDS = "records"  # game records failing the rules check, in group REJECTED_GROUP
REJECTED_GROUP = "rejected"
MODEL_DEAD_KIND = "model"  # the syncer's: candidate events it cannot archive
ARCHIVE_DEAD_KIND = "archive"  # the syncer's: records naming no archivable game
SYNCER_DEAD_KINDS = (MODEL_DEAD_KIND, ARCHIVE_DEAD_KIND)


# The server's own subjects, as Conclave uses them (the adapter, permissions, the soak sniffer).
JS_API = "$JS.API"
JS_ANY_DOMAIN_API = "$JS.*.API"  # the API through any leaf link's domain (`js_domain_api`)
INBOX_ROOT = "_INBOX"
SERVICES_ROOT = "$SRV"  # NATS micro discovery


def js_domain_api(domain: str, subject: str) -> str:
    """`subject` (a JetStream API call or a KV put) sent through a leaf link's domain."""
    return f"$JS.{domain}.API.{subject}"


def js_ack(*tokens: str) -> str:
    """The acks of a stream's consumers, narrowed by tokens: `js_ack(stream, consumer)`."""
    return ".".join(("$JS.ACK", *tokens))


def is_js_ack(subject: str) -> bool:
    return subject.startswith(f"{js_ack()}.")


def js_flow_control(stream: str) -> str:
    return f"$JS.FC.{stream}"


def inbox_prefix(identity: str) -> str:
    """The inbox prefix of the identity with this public key (its clients connect with it)."""
    return f"{INBOX_ROOT}.{identity}"
