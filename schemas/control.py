"""Control-plane wire messages: service pulses, node status, the leader lease and its events.

Every message is a frozen msgspec Struct with a versioned `type` tag; a new version of a message
gets a new tag, so an old reader rejects it by name instead of misreading it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

PROTOCOL = 1  # the wire protocol this build speaks; a new message tag in use bumps it


class Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=False, tag_field="type"):
    pass


class ServicePulse(Wire, frozen=True, tag="conclave.service_pulse.v1"):
    """A service process's liveness and event-loop lag over the last interval."""

    node: str
    service: str
    pid: int
    lag_p50_ms: float
    lag_max_ms: float
    started_at: float
    sent_at: float
    counters: dict[str, float] = {}  # work done since the process started (shared.counters)
    doing: str = ""  # the job it is working on, "" when idle


class ServiceState(msgspec.Struct, frozen=True):
    name: str
    alive: bool
    pid: int = 0
    lag_p50_ms: float = 0.0
    lag_max_ms: float = 0.0
    last_pulse_age_s: float | None = None
    counters: dict[str, float] = {}
    doing: str = ""


class Resources(msgspec.Struct, frozen=True):
    cores: int
    memory_bytes: int
    gpus: list[str] = []


class NodeStatus(Wire, frozen=True, tag="conclave.node_status.v1"):
    """What a node's heartbeat writes into KV `nodes` about once a second, with a per-key TTL."""

    node: str
    roles: list[str]
    services: list[ServiceState]
    version: str
    resources: Resources
    hostname: str
    started_at: float
    sent_at: float
    protocol: int = 1  # PROTOCOL of the build that wrote it


class Lease(Wire, frozen=True, tag="conclave.lease.v1"):
    """The leader lease value; `term` is 0 on the acquiring write, whose revision is the term."""

    node: str
    instance: str
    term: int
    acquired_at: float
    ttl_s: float


LeaderEventKind = Literal["elected", "lost", "fenced", "released"]


class LeaderEvent(Wire, frozen=True, tag="conclave.leader_event.v1"):
    """Published on `events.leader.<kind>` when a node gains or gives up leadership."""

    kind: LeaderEventKind
    node: str
    instance: str
    term: int
    at: float
    reason: str = ""


class LeaderValidity(Wire, frozen=True, tag="conclave.leader_validity.v1"):
    """A holder's promise: it leads `term` from `valid_from` to `valid_until` at most."""

    node: str
    instance: str
    term: int
    valid_from: float
    valid_until: float


class ClusterProtocol(Wire, frozen=True, tag="conclave.cluster_protocol.v1"):
    """The wire protocols the coordinator accepts (registry key `cluster.protocol`); a node
    outside the range is shown in status with the reason and pulls no work."""

    min_protocol: int
    max_protocol: int
    set_by: str
    at: float


CONTROL_MESSAGES: tuple[type[msgspec.Struct], ...] = (
    ServicePulse,
    NodeStatus,
    Lease,
    LeaderEvent,
    LeaderValidity,
    ClusterProtocol,
)
