"""What a soak run records, as it happens: the input of the report (written as record.json).

Times are wall-clock seconds (time.time()). Everything here is plain data; the harness fills it
in and `shared.soak.report` turns it into figures without touching NATS or processes.
"""

from __future__ import annotations

from typing import Literal

import msgspec

FaultKind = Literal[
    "kill-service",  # SIGKILL one service process of a node; its launcher restarts it
    "kill-node",  # SIGKILL a node's launcher and services; the harness restarts the node
    "kill-server",  # SIGKILL one hub NATS server; the harness restarts it on the same ports
    "stop-service",  # SIGSTOP a service for a while (a blocked event loop), then SIGCONT
    "cut-network",  # cut a node off the network for a while (network namespaces; root only)
    "kill-leader-node",  # kill-node aimed at the node holding the leader lease
    "drain",  # `fleet drain` a self-play node until drained (or a bound), then `fleet resume`
    "rolling-restart",  # `fleet restart --rolling` of every node
    "rolling-upgrade",  # `fleet upgrade --wheel W --rolling` of every node to a bumped version
]


class NodeSpec(msgspec.Struct, frozen=True):
    node_id: str
    roles: list[str]
    via_leaf: bool


class Sample(msgspec.Struct, frozen=True):
    """Once a second: the nodes whose heartbeat is present in KV `nodes` at `t`."""

    t: float
    alive: list[str]


class TermSpan(msgspec.Struct, frozen=True):
    """A leader term as its holder promised it on `leader.validity` (first from, last until)."""

    term: int
    node: str
    valid_from: float
    valid_until: float


class OrderTimeline(msgspec.Struct, frozen=True):
    """One node's part in a fleet order (rolling restart or upgrade). `ordered_at` is the
    order's own time; `received_at` and `done_at` the node's report (when it took the order,
    when it answered done or refused); `healthy_at` when the harness saw it healthy after it
    (None: never). The pids and `services_started_at` show that new services run."""

    node: str
    ordered_at: float | None
    received_at: float | None
    done_at: float | None
    healthy_at: float | None
    outcome: str = ""  # the node's last answer: received, done, refused, failed ("": none)
    version: str = ""  # what its services report once healthy
    pids_before: list[int] = []
    pids_after: list[int] = []
    services_started_at: float | None = None


class Fault(msgspec.Struct, frozen=True):
    """One injected fault. `node` is the node it takes out of the alive set, if any (kill-node,
    cut-network); `recovered_at` is when the harness saw the target healthy again (None: never).
    `leader_node` is set when the node it took out held the leader lease at `at`; `orders` are
    the per-node timelines of a fleet order.
    """

    kind: FaultKind
    target: str  # "n07", "n07/selfplay", "hub/n2"
    at: float
    recovered_at: float | None
    node: str | None = None
    detail: str = ""
    leader_node: bool = False
    orders: list[OrderTimeline] = []


class MemorySample(msgspec.Struct, frozen=True):
    """Resident memory (bytes) of every process of the run at `t`, by label
    ("n07/selfplay", "n07/launcher", "hub/n1")."""

    t: float
    rss: dict[str, int]


class JobCounts(msgspec.Struct, frozen=True):
    """One job kind's consumer at the end of the run.

    submitted: jobs published; deliveries: every delivery incl. redeliveries; redelivered:
    deliveries beyond the first of each job; pending: never delivered; in_flight: delivered,
    not yet acked; completed: acked (submitted - pending - in_flight - dead_lettered).
    """

    kind: str
    submitted: int
    deliveries: int
    redelivered: int
    pending: int
    in_flight: int
    dead_lettered: int
    completed: int


class GameAudit(msgspec.Struct, frozen=True):
    """Games checked by id at the end of the run.

    acknowledged: stream sequences JetStream acknowledged to a publisher (PubAcks seen);
    lost: acknowledged sequences missing from the games stream; duplicated: game ids stored
    more than once; trained_twice: for each checkpoint, games counted in its replay window beyond
    the distinct ids the stream holds in that window's range (summed over checkpoints).
    """

    acknowledged: int
    stored: int
    lost: list[int]
    duplicated: list[str]
    trained_twice: int
    checkpoints_checked: int


class SoakRecord(msgspec.Struct, frozen=True):
    started_at: float
    ended_at: float
    nodes: list[NodeSpec]
    chaos: bool
    samples: list[Sample]
    terms: list[TermSpan]
    faults: list[Fault]
    memory: list[MemorySample]
    jobs: list[JobCounts]
    games: GameAudit
    generations: int = 0  # promotions during the run
    sample_gaps: int = 0  # seconds the harness could not read the nodes bucket (not counted)
