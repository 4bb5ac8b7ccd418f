"""What the master loop observes before deciding: workers, queues, games, trainings, matches.

Everything here is derived from durable state (KV, stream contents), never from messages the
scheduler had to be running to see, so a new leader observes exactly what the old one would have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import NodeStatus
from schemas.jobs import EvalResult, ModelMeta
from shared import counters
from shared.bus import Bus
from shared.compat import accepted_range, refusal
from shared.evalplan import CpuReading
from shared.policy import (
    GameSnapshot,
    GameState,
    LoopConfig,
    LoopState,
    MatchScore,
    Snapshot,
    Trained,
)

log = logging.getLogger("conclave.observe")


def train_group(training: int) -> str:
    return f"t{training}"


def match_group(training: int) -> str:
    return f"m{training}"


def train_job_id(game: str, training: int) -> str:
    return f"{game}-t{training}"


async def accepted_nodes(bus: Bus) -> list[NodeStatus]:
    """Every node's last status whose protocol the cluster accepts (others are no workers)."""
    accepted = await accepted_range(bus)
    nodes = []
    for key, entry in (await bus.snapshot(names.NODES_BUCKET)).items():
        try:
            status = decode(entry.value or b"", NodeStatus, subject=key)
        except BadMessage as e:
            log.warning("%s", e)
            continue
        if refusal(status.protocol, accepted) is None:
            nodes.append(status)
    return nodes


def live_workers(nodes: Iterable[NodeStatus]) -> dict[str, int]:
    """Live processes of each service (by the services their nodes' heartbeats report alive)."""
    counts: dict[str, int] = {}
    for status in nodes:
        for service in status.services:
            if service.alive:
                kind = names.service_kind(service.name)
                counts[kind] = counts.get(kind, 0) + 1
    return counts


def cpu_readings(nodes: Iterable[NodeStatus]) -> list[CpuReading]:
    """The CPU seconds each live service process last reported."""
    return [
        CpuReading(
            f"{status.node}/{s.name}/{s.pid}", names.service_kind(s.name), s.counters[counters.CPU]
        )
        for status in nodes
        for s in status.services
        if s.alive and counters.CPU in s.counters
    ]


async def count(bus: Bus, stream: str, subject: str) -> int:
    return sum((await bus.subject_counts(stream, subject)).values())


async def observe(
    bus: Bus, state: LoopState, cfg: LoopConfig, nodes: list[NodeStatus] | None = None
) -> Snapshot:
    workers = live_workers(await accepted_nodes(bus) if nodes is None else nodes)
    games = {name: await observe_game(bus, name, state.game(name), cfg) for name in cfg.games}
    return Snapshot(workers.get("selfplay", 0), workers.get("evaluator", 0), games)


async def observe_game(bus: Bus, game: str, state: GameState, cfg: LoopConfig) -> GameSnapshot:
    return GameSnapshot(
        games_total=await count(bus, names.GAMES_STREAM, names.games_subject(game)),
        queued_selfplay=await count(
            bus, names.JOBS_STREAM, names.job_subject("selfplay", game, "sp")
        ),
        trained=await trained(bus, game, state),
        failed_training=await failed_training(bus, game, state),
        match=await match_score(bus, game, state, cfg),
    )


async def trained(bus: Bus, game: str, state: GameState) -> Trained | None:
    if not state.training_in_progress:
        return None
    key = names.trained_key(train_job_id(game, state.trainings))
    entry = await bus.last(names.REGISTRY_BUCKET, key)
    if entry.value is None:
        return None
    meta = decode(entry.value, ModelMeta, subject=key)
    return Trained(state.trainings, meta.sha256)


async def failed_training(bus: Bus, game: str, state: GameState) -> int | None:
    if not state.training_in_progress:
        return None
    subject = names.dlq_subject("train", game, train_group(state.trainings))
    return state.trainings if await count(bus, names.DLQ_STREAM, subject) else None


async def match_score(bus: Bus, game: str, state: GameState, cfg: LoopConfig) -> MatchScore | None:
    """The candidate's W/D/L so far, each job's result counted once however often delivered."""
    if state.pending_eval is None:
        return None
    group = match_group(state.trainings)
    results: dict[str, EvalResult] = {}
    for msg in await bus.read_all(names.RESULTS_STREAM, names.results_subject(game, group)):
        try:
            result = decode(msg.data, EvalResult, subject=msg.subject)
        except BadMessage as e:
            log.warning("%s", e)
            continue
        results[result.job_id] = result
    lost_jobs = await count(bus, names.DLQ_STREAM, names.dlq_subject("eval", game, group))
    wins, draws, losses = _tally(results.values(), state.pending_eval)
    lost = lost_jobs * cfg.eval_games_per_job
    return MatchScore(state.pending_eval, wins, draws, losses, lost)


def _tally(results: Iterable[EvalResult], candidate: str) -> tuple[int, int, int]:
    wins = draws = losses = 0
    for r in results:
        if r.a.sha256 == candidate:
            wins, draws, losses = wins + r.wins_a, draws + r.draws, losses + r.wins_b
        else:
            wins, draws, losses = wins + r.wins_b, draws + r.draws, losses + r.wins_a
    return wins, draws, losses
