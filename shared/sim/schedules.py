"""Fault schedules drawn from a seed: `schedule(seed)` is the whole run, so any failing run is
replayed from its seed alone (`python -m shared.sim --seed N`)."""

from __future__ import annotations

import random

from shared.sim.world import Fault, FaultKind, Schedule

KINDS: tuple[FaultKind, ...] = (
    "crash",
    "partition",
    "pause",
    "outage",
    "lose_acks",
    "lose_watches",
    "restart",
)
HORIZON_S = 40.0
LATENCIES_S = (0.0, 0.01, 0.2, 0.6)


def schedule(seed: int, horizon_s: float = HORIZON_S) -> Schedule:
    """A run of 2 to 4 nodes on 1 or 3 lease slots with up to six faults, from `seed`."""
    rng = random.Random(seed)
    nodes = rng.randint(2, 4)
    faults = tuple(
        sorted(
            (_fault(rng, nodes, horizon_s) for _ in range(rng.randint(0, 6))),
            key=lambda f: f.at,
        )
    )
    return Schedule(
        seed=seed,
        nodes=nodes,
        replicas=rng.choice((1, 3)),
        faults=faults,
        horizon_s=horizon_s,
        latency_s=rng.choice(LATENCIES_S),
    )


def _fault(rng: random.Random, nodes: int, horizon_s: float) -> Fault:
    kind = rng.choice(KINDS)
    return Fault(
        at=round(rng.uniform(1.0, horizon_s - 10.0), 3),
        kind=kind,
        node=-1 if rng.random() < 0.5 else rng.randrange(nodes),
        duration_s=round(rng.uniform(0.2, 20.0), 3) if kind != "crash" or rng.random() < 0.7 else 0,
        count=rng.randint(1, 4),
    )
