"""Control-plane wire messages: service pulses, node status, the leader lease and its events.

Every message is a frozen msgspec Struct with a versioned `type` tag; a new version of a message
gets a new tag, so an old reader rejects it by name instead of misreading it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.codec import Count, Ident, NonNegative, Sha256, Text, Timestamp, Token

PROTOCOL = 2  # the wire protocol this build speaks; a new message tag in use bumps it
# 2: train jobs no longer carry `window_games` (a protocol-1 trainer requires it)


MAX_SERVICES = 256  # every role runs seven, plus a self-play process per usable core
MAX_ROLES = 16
MAX_COUNTERS = 64  # a process's work counters (shared.runtime.counters), a handful in practice
MAX_GPUS = 64

Counters = Annotated[dict[Token, NonNegative], Meta(max_length=MAX_COUNTERS)]


class Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=False, tag_field="type"):
    pass


MAX_NET_SIZES = 32
MAX_GAMES = 256


SELF_TEST_PASSED = "passed"  # DeviceReport.self_test of a worker that may take jobs


class DeviceReport(msgspec.Struct, frozen=True, kw_only=True):
    """A worker process's device: what its networks run on, whether it may take jobs, how fast
    it is and how much memory it holds (what placement and `conclave status` read)."""

    device: Ident  # torch's name: "cuda:0", "mps", "cpu"
    name: Ident = ""  # e.g. "NVIDIA H100 80GB HBM3"
    precision: Token = "fp32"
    tier: Token = "cpu"  # one of schemas.names.TIERS: the job queues it pulls, its own first
    self_test: Text = ""  # "passed", or why this worker takes no jobs; "" while testing
    # Measured positions/s of each network size it has run ("4x64": blocks x channels).
    positions_per_s: Annotated[dict[Token, NonNegative], Meta(max_length=MAX_NET_SIZES)] = {}
    rss_bytes: Count = 0  # the process's resident memory
    device_memory_bytes: Count = 0  # allocated on the device (VRAM); 0 on the CPU
    device_memory_total: Count = 0


class ServicePulse(Wire, frozen=True, kw_only=True, tag="conclave.service_pulse.v1"):
    """A service process's liveness and event-loop lag over the last interval."""

    node: Token
    service: Token
    pid: Count
    lag_p50_ms: NonNegative
    lag_max_ms: NonNegative
    started_at: Timestamp
    sent_at: Timestamp
    counters: Counters = {}  # work done since the process started (shared.runtime.counters)
    doing: Ident = ""  # the job it is working on, "" when idle
    compute: DeviceReport | None = None  # a worker's device, once chosen


class ServiceState(msgspec.Struct, frozen=True, kw_only=True):
    name: Token
    alive: bool
    pid: Count = 0
    lag_p50_ms: NonNegative = 0.0
    lag_max_ms: NonNegative = 0.0
    last_pulse_age_s: NonNegative | None = None
    counters: Counters = {}
    doing: Ident = ""
    compute: DeviceReport | None = None


class Resources(msgspec.Struct, frozen=True):
    cores: Count
    memory_bytes: Count
    gpus: Annotated[list[Ident], Meta(max_length=MAX_GPUS)] = []


class NodeStatus(Wire, frozen=True, kw_only=True, tag="conclave.node_status.v1"):
    """What a node's heartbeat writes into KV `nodes` about once a second, with a per-key TTL."""

    node: Token
    roles: Annotated[list[Token], Meta(max_length=MAX_ROLES)]
    services: Annotated[list[ServiceState], Meta(max_length=MAX_SERVICES)]
    version: Token
    resources: Resources
    hostname: Ident
    started_at: Timestamp
    sent_at: Timestamp
    protocol: Count = 1  # PROTOCOL of the build that wrote it
    games: Annotated[list[Token], Meta(max_length=MAX_GAMES)] = []  # installed on the node
    draining: bool = False  # a standing `fleet drain`: its workers take no new jobs
    # How long the heartbeat's last read from the hub took (its reachability); None: no answer.
    rtt_ms: NonNegative | None = None


class Lease(Wire, frozen=True, kw_only=True, tag="conclave.lease.v1"):
    """The leader lease value; `term` is 0 on the acquiring write, whose revision is the term."""

    node: Token
    instance: Ident
    term: Count
    acquired_at: Timestamp
    ttl_s: NonNegative


LeaderEventKind = Literal["elected", "lost", "fenced", "released"]


class LeaderEvent(Wire, frozen=True, kw_only=True, tag="conclave.leader_event.v1"):
    """Published on `events.leader.<kind>` when a node gains or gives up leadership."""

    kind: LeaderEventKind
    node: Token
    instance: Ident
    term: Count
    at: Timestamp
    reason: Text = ""


class LeaderValidity(Wire, frozen=True, kw_only=True, tag="conclave.leader_validity.v1"):
    """A holder's promise: it leads `term` from `valid_from` to `valid_until` at most. `final`:
    it stepped down at `valid_until` (a release), which ends the term before its promises ran
    out, so a contender may take over at once without the two overlapping."""

    node: Token
    instance: Ident
    term: Count
    valid_from: Timestamp
    valid_until: Timestamp
    final: bool = False


class ClusterProtocol(Wire, frozen=True, tag="conclave.cluster_protocol.v1"):
    """The wire protocols the coordinator accepts (registry key `cluster.protocol`); a node
    outside the range is shown in status with the reason and pulls no work. A node below
    `next_min_protocol` (the announced next minimum) still works and is only warned about, so
    an upgrade can be announced before it is enforced."""

    min_protocol: Count
    max_protocol: Count
    set_by: Token
    at: Timestamp
    next_min_protocol: Count | None = None


class MatchEvaluators(Wire, frozen=True, kw_only=True, tag="conclave.match_evaluators.v1"):
    """Who may play promotion matches (registry key `eval.match`): the evaluators fast enough
    not to hold the gate up (`node/service`, shared.loop.placement.match_evaluators); the others
    take gauntlet and rating jobs only."""

    evaluators: Annotated[list[Ident], Meta(max_length=4096)] | None  # None: every one may
    term: Count
    at: Timestamp


FleetAction = Literal["drain", "resume"]


class FleetCommand(Wire, frozen=True, kw_only=True, tag="conclave.fleet_command.v1"):
    """An admin's command to one node: the node's standing state (registry key
    `fleet.node.<node>`, read by its heartbeat and workers, so a node that was away finds it)
    and an audit event (`events.fleet.<action>.<node>`). `drain`: its workers finish their
    jobs and take no new ones; `resume`: they take jobs again."""

    action: FleetAction
    node: Token
    issued_by: Ident  # who: the local user and host, and the identity's public key
    at: Timestamp
    reason: Text = ""


FleetOrderAction = Literal["restart", "upgrade"]
FleetOutcome = Literal["received", "done", "refused", "failed"]


class WheelRef(msgspec.Struct, frozen=True, kw_only=True):
    """A wheel in the `wheels` object store: stored under its sha256, which a node checks."""

    name: Ident  # its file name (`conclave-0.3.0-py3-none-any.whl`)
    digest: Sha256
    size: Count
    version: Token  # the version it installs


class FleetOrder(Wire, frozen=True, kw_only=True, tag="conclave.fleet_order.v1"):
    """A one-off admin order to one node's launcher (registry key `fleet.order.<node>`, audited
    on `events.fleet.<action>.<node>`): `restart` its services, or `upgrade` them to `wheel`.
    A launcher carries out each order id once and answers with a `FleetReport`."""

    id: Token
    action: FleetOrderAction
    node: Token
    issued_by: Ident
    at: Timestamp
    wheel: WheelRef | None = None
    reason: Text = ""


class FleetReport(Wire, frozen=True, kw_only=True, tag="conclave.fleet_report.v1"):
    """A launcher's answer to an order (registry key `fleet.report.<node>`, written by the node's
    own identity): `received`, then `done`, `refused` (it keeps running what it ran, `reason`
    says why) or `failed`. `version` is what the node's services run after it."""

    order: Token
    action: FleetOrderAction
    node: Token
    outcome: FleetOutcome
    version: Token
    since: Timestamp  # when the node took the order: services started after it are new
    at: Timestamp
    reason: Text = ""


CONTROL_MESSAGES: tuple[type[msgspec.Struct], ...] = (
    ServicePulse,
    NodeStatus,
    Lease,
    LeaderEvent,
    LeaderValidity,
    ClusterProtocol,
    MatchEvaluators,
    FleetCommand,
    FleetOrder,
    FleetReport,
)
