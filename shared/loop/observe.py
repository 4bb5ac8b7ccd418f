"""What the master loop observes before deciding: workers, queues, games, trainings, matches.

Everything here is derived from durable state (KV, stream contents), never from messages the
scheduler had to be running to see, so a new leader observes exactly what the old one would have.
Workers count only from fresh node statuses (by the server's timestamp), each node's claim
bounded by its cores; match games only from the results owed (`shared.loop.ratingjobs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Protocol

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import ClusterProtocol, NodeStatus
from schemas.jobs import DeadLetter, EvalJob, EvalResult, ModelMeta
from shared.bus.compat import accepted_range, refusal
from shared.bus.message import Message
from shared.bus.ports import KV, Streams
from shared.loop.evalplan import CpuReading
from shared.loop.placement import tier_capacity
from shared.loop.policy import (
    GameSnapshot,
    GameState,
    LoopConfig,
    LoopState,
    MatchScore,
    Snapshot,
    Trained,
)
from shared.loop.ratingjobs import SkipLog, issued_jobs, owed_results
from shared.runtime import counters
from shared.work.models import is_stored, unloadable_prefix

log = logging.getLogger("conclave.observe")


class LoopStore(KV, Streams, Protocol):
    """What observing the loop reads: KV keys and stored messages."""


# A status counts while younger than the heartbeat's key TTL (services.heartbeat ttl_s): the
# server expires it then, so an older one is a dead node's, or one written without the TTL.
HEARTBEAT_TTL_S = 5.0
# What one node's status may claim: a self-play process per core, at most this many; one
# process of every other service (the launcher runs one).
MAX_SELFPLAY_PER_NODE = 128


def train_group(training: int) -> str:
    return f"t{training}"


def match_group(training: int) -> str:
    return f"m{training}"


def train_job_id(game: str, training: int) -> str:
    return f"{game}-t{training}"


async def accepted_nodes(bus: LoopStore, now: float | None = None) -> list[NodeStatus]:
    """Every node's fresh status (stored by the server within the heartbeat TTL, under its own
    node's key) whose protocol the cluster accepts and that is not draining; the others are no
    workers."""
    accepted = await accepted_range(bus)
    now = time.time() if now is None else now
    bucket = names.NODES_BUCKET
    latest: dict[str, Message] = {}  # a key rewritten during the read comes twice: keep the last
    for msg in await bus.read_all(names.kv_stream(bucket), names.kv_subject(bucket, ">")):
        latest[msg.subject.removeprefix(names.kv_subject(bucket, ""))] = msg
    nodes = []
    for key, msg in sorted(latest.items()):
        status = _node_status(msg, key, now)
        if status is not None and _works(status, accepted):
            nodes.append(status)
    return nodes


def _works(status: NodeStatus, accepted: ClusterProtocol | None) -> bool:
    # A draining node's workers take no jobs: placement and allocation must not count them.
    return refusal(status.protocol, accepted) is None and not status.draining


def _node_status(msg: Message, key: str, now: float) -> NodeStatus | None:
    headers = msg.headers
    if headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers:
        return None
    age = now - (msg.timestamp.timestamp() if msg.timestamp else 0.0)
    if not fresh(age):
        log.info("status of %s is %.0f s old; not counted", key, age)
        return None
    try:
        status = decode(msg.data, NodeStatus, subject=key)
    except BadMessage as e:
        log.warning("%s", e, extra={"field": e.field})
        return None
    if status.node != key:
        log.warning("status under key %s names node %r; not counted", key, status.node)
        return None
    return status


def fresh(age_s: float) -> bool:
    """Whether a status stored `age_s` seconds ago (server time) still counts."""
    return age_s <= HEARTBEAT_TTL_S


def live_workers(nodes: Iterable[NodeStatus]) -> dict[str, int]:
    """Live processes of each service (by the services their nodes' heartbeats report alive),
    each node counting at most `node_claim` of a kind."""
    counts: dict[str, int] = {}
    for status in nodes:
        mine: dict[str, int] = {}
        for service in status.services:
            if service.alive:
                kind = names.service_kind(service.name)
                mine[kind] = mine.get(kind, 0) + 1
        for kind, n in mine.items():
            counts[kind] = counts.get(kind, 0) + min(n, node_claim(status, kind))
    return counts


def node_claim(status: NodeStatus, kind: str) -> int:
    """The most processes of `kind` one node's status may count for."""
    if kind != "selfplay":
        return 1
    return max(1, min(status.resources.cores, MAX_SELFPLAY_PER_NODE))


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


async def count(bus: LoopStore, stream: str, subject: str) -> int:
    return sum((await bus.subject_counts(stream, subject)).values())


async def observe(
    bus: LoopStore,
    state: LoopState,
    cfg: LoopConfig,
    nodes: list[NodeStatus] | None = None,
    skips: SkipLog | None = None,
) -> Snapshot:
    nodes = await accepted_nodes(bus) if nodes is None else nodes
    workers = live_workers(nodes)
    games = {
        name: await observe_game(bus, name, state.game(name), cfg.for_game(name), skips)
        for name in cfg.games
    }
    return Snapshot(
        workers.get("selfplay", 0),
        workers.get("evaluator", 0),
        games,
        selfplay_tiers=tier_capacity(nodes, "selfplay"),
        train_tiers=tier_capacity(nodes, "trainer"),
    )


async def observe_game(
    bus: LoopStore, game: str, state: GameState, cfg: LoopConfig, skips: SkipLog | None = None
) -> GameSnapshot:
    marker = await trained_marker(bus, game, state)
    by_tier = await queued_by_tier(bus, "selfplay", game)
    return GameSnapshot(
        games_total=await count(bus, names.GAMES_STREAM, names.games_subject(game)),
        queued_selfplay=sum(by_tier.values()),
        queued_by_tier=by_tier,
        trained=trained(marker, state),
        failed_training=await failed_training(bus, game, state, marker),
        match=await match_score(bus, game, state, cfg, skips),
    )


async def queued_by_tier(bus: LoopStore, kind: str, game: str) -> dict[str, int]:
    """The jobs of a tiered kind queued (or in flight) for `game`, per tier."""
    counts = await bus.subject_counts(names.JOBS_STREAM, names.job_game_filter(kind, game))
    by_tier: dict[str, int] = {}
    for subject, n in counts.items():
        tier = subject.split(".")[2]  # jobs.<kind>.<tier>.<game>.<group>
        by_tier[tier] = by_tier.get(tier, 0) + n
    return by_tier


async def trained_marker(
    bus: LoopStore, game: str, state: GameState
) -> ModelMeta | BadMessage | None:
    """The running training's `trained.<job>` marker: None while it is not written, and the
    BadMessage (logged, naming the field) when it does not decode, names another job or game,
    or a model the store does not hold: only a broken or hostile trainer writes one (the
    trainer stores the model first), and the loop must neither fail every tick on it nor
    schedule a match for it."""
    if not state.training_in_progress:
        return None
    job = train_job_id(game, state.trainings)
    key = names.trained_key(job)
    entry = await bus.last(names.REGISTRY_BUCKET, key)
    if entry.value is None:
        return None
    try:
        marker = decode(entry.value, ModelMeta, subject=key)
        await check_marker(bus, marker, game, job, key)
    except BadMessage as e:
        log.warning("%s", e, extra={"field": e.field})
        return e
    return marker


async def check_marker(bus: LoopStore, marker: ModelMeta, game: str, job: str, key: str) -> None:
    """BadMessage naming the field if `marker` is not what training job `job` made."""
    if marker.train_job != job:
        raise BadMessage(key, "$.train_job", f"{marker.train_job!r}, not {job!r}")
    if marker.game != game:
        raise BadMessage(key, "$.game", f"{marker.game!r}, not {game!r}")
    if not await is_stored(bus, marker.sha256):
        raise BadMessage(key, "$.sha256", f"model {marker.sha256} is not in the object store")


def trained(marker: ModelMeta | BadMessage | None, state: GameState) -> Trained | None:
    return Trained(state.trainings, marker.sha256) if isinstance(marker, ModelMeta) else None


async def failed_training(
    bus: LoopStore, game: str, state: GameState, marker: ModelMeta | BadMessage | None
) -> int | None:
    """The running training, if its job was dead-lettered or its marker is unreadable: either
    way it made no candidate the loop can use, so the loop trains again."""
    if not state.training_in_progress:
        return None
    if isinstance(marker, BadMessage):
        return state.trainings
    subject = names.dlq_subject("train", game, train_group(state.trainings))
    return state.trainings if await count(bus, names.DLQ_STREAM, subject) else None


async def match_score(
    bus: LoopStore, game: str, state: GameState, cfg: LoopConfig, skips: SkipLog | None = None
) -> MatchScore | None:
    """The candidate's W/D/L from the results its match is owed (each job once); as lost, the
    games of its dead-lettered jobs and of issued jobs whose only results were skipped (they
    will never count); and an evaluator's reason why the candidate cannot be loaded.

    With more than two players W/D/L count pairs, `pairs_per_game` of them a game."""
    candidate = state.pending_eval
    if candidate is None:
        return None
    group = match_group(state.trainings)
    owed = await owed_results(bus, game, group)
    if skips is not None:
        skips.note(owed.skipped)
    msgs = await bus.read_all(names.DLQ_STREAM, names.dlq_subject("eval", game, group))
    letters = [_dead_letter(msg) for msg in msgs]
    issued = owed.issued or (await issued_jobs(bus, game, group) if msgs else {})
    counted = {r.job_id for r in owed.counted}
    lettered = {letter.job_id for letter in letters if letter is not None}
    spoiled = {s.job_id for s in owed.skipped if s.job_id in issued} - counted - lettered
    wins, draws, losses, pairs_per_game = _tally(owed.counted, candidate)
    lost = (len(msgs) + len(spoiled)) * cfg.eval_games_per_job  # games, as the policy schedules
    unloadable = unloadable_reason([x for x in letters if x is not None], candidate, issued)
    return MatchScore(
        candidate=candidate,
        wins=wins,
        draws=draws,
        losses=losses,
        lost=lost,
        unloadable=unloadable,
        pairs_per_game=pairs_per_game,
    )


def _dead_letter(msg: Message) -> DeadLetter | None:
    try:
        return decode(msg.data, DeadLetter, subject=msg.subject)
    except BadMessage as e:
        log.warning("%s", e, extra={"field": e.field})
        return None


def unloadable_reason(
    letters: Iterable[DeadLetter], candidate: str, issued: dict[str, EvalJob]
) -> str:
    """The first dead letter of an issued job of the candidate's match saying that the candidate
    cannot be loaded, as a rejection reason ("" when there is none)."""
    prefix = unloadable_prefix(candidate)
    for letter in letters:
        job = issued.get(letter.job_id)
        if job is not None and job.a.sha256 == candidate and letter.reason.startswith(prefix):
            return f"no evaluator can load the candidate ({letter.job_id}): {letter.reason}"
    return ""


def _tally(results: Iterable[EvalResult], candidate: str) -> tuple[int, int, int, int]:
    """The candidate's pairwise (wins, draws, losses) and the pairs per game (1 with none).

    Every result of one match is of one game, so all carry the same pairs per game; the
    largest is taken so that a stray result could only make the games counted fewer."""
    wins = draws = losses = 0
    pairs_per_game = 1
    for r in results:
        if r.a.sha256 == candidate:
            wins, draws, losses = wins + r.wins_a, draws + r.draws, losses + r.wins_b
        else:
            wins, draws, losses = wins + r.wins_b, draws + r.draws, losses + r.wins_a
        pairs_per_game = max(pairs_per_game, r.pairs_per_game)
    return wins, draws, losses, pairs_per_game
