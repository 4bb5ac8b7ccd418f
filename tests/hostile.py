"""What issue 14's probe sent a `conclave up` cluster with each role's own credentials: forged and
malformed results, poisoned and garbage game records, an invalid candidate event, a deeply
nested node status, a flood of pulses and rollups meant to wipe buckets; and the checks that
the cluster dead-lettered them and lost nothing good (tests/test_loop_tictactoe.py runs them)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from nats.errors import Error as NatsError

from schemas import names
from schemas.game import encode_record
from schemas.jobs import BestPointer
from shared.auth.identities import node_seed_path, seed_path
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.learn.evaltypes import uniform_evaluator
from shared.learn.games import get_game
from shared.learn.selfplay import SelfPlayConfig, self_play

GAME = "tictactoe"
DEEP = b"[" * 100_000 + b"]" * 100_000


async def attack(url: str, auth: Path) -> None:
    """Each role's credentials, each sending what the probe sent."""
    evaluator = await connect(url, seed_path(auth, "evaluator"))
    selfplay = await connect(url, seed_path(auth, "selfplay"))
    trainer = await connect(url, seed_path(auth, "trainer"))
    node = await connect(url, node_seed_path(auth, "local"))
    try:
        await forge_results(evaluator)
        await poison_records(selfplay)
        await bad_candidate(trainer)
        await wipe_attempts({"selfplay": selfplay, "trainer": trainer, "node": node})
        await node.nc.publish(f"$KV.{names.NODES_BUCKET}.{names.node_key('local')}", DEEP[:2000])
        for k in range(10_000):  # pulses naming 10,000 services
            await node.nc.publish(names.pulse_subject("local", f"svc{k}"), b'{"x":1}')
        for bus in (evaluator, selfplay, trainer, node):
            await bus.flush()
    finally:
        for bus in (evaluator, selfplay, trainer, node):
            await bus.close()


async def forge_results(evaluator: Bus) -> None:
    """1,000 forged wins for jobs never issued, equal players, negative counts, deep nesting."""
    spec = {"name": "gen1", "sha256": "ab" * 32, "agent": "", "sims": 8}
    for group in ("m1", "m2", "m3", "m4", "m5"):
        forged = _result(f"{GAME}-{group}-0", group, spec, {**spec, "name": "gen0"}, 1000, 0, 0)
        await _publish(evaluator, names.results_subject(GAME, group), forged)
    same = _result("r-same", "r", spec, spec, 5, 0, 5)
    negative = _result("r-neg", "r", spec, {**spec, "name": "x"}, -5, 0, 10)
    for payload in (same, negative, DEEP[:20_000]):
        await _publish(evaluator, names.results_subject(GAME, "r"), payload)


async def poison_records(selfplay: Bus) -> None:
    """Records with NaN root values (40 of them, as the probe), one nested deeply, garbage."""
    game = get_game(GAME)
    rng = np.random.default_rng(0)
    cfg = SelfPlayConfig(concurrent_games=4, num_simulations=4)
    played = list(self_play(game, uniform_evaluator, rng, cfg, num_games=4))
    for k in range(40):
        record = played[k % len(played)]
        nan = msgspec.structs.replace(
            record, game_id=f"nan-{k}", root_values=[math.nan] * record.plies
        )
        await _publish(selfplay, names.games_subject(GAME), encode_record(nan))
    nested = b"\x91" * 50_000 + b"\x00"  # a msgpack array in an array ... 50,000 deep
    for payload in (nested, b"\xff\x00garbage"):
        await _publish(selfplay, names.games_subject(GAME), payload)


async def bad_candidate(trainer: Bus) -> None:
    event: dict[str, Any] = {
        "type": "conclave.model_event.v1",
        "kind": "candidate",
        "game": "no such game",
    }
    event |= {"generation": 1, "sha256": "cd" * 32, "at": time.time()}
    await _publish(trainer, names.model_event_subject("candidate"), msgspec.json.encode(event))


async def wipe_attempts(buses: dict[str, Bus]) -> None:
    """Rollups that purged whole buckets before: each must be refused or change nothing."""
    rollup = {"Nats-Rollup": "all"}
    targets = {
        "selfplay": f"$KV.{names.NODES_BUCKET}.{names.node_key('local')}",
        "trainer": f"$KV.{names.REGISTRY_BUCKET}.x",
        "node": f"$KV.{names.NODES_BUCKET}.{names.node_key('local')}",  # its own key
    }
    for role, subject in targets.items():
        try:
            await buses[role].js.publish(subject, b"{}", headers=rollup, timeout=2.0)
        except (NatsError, TimeoutError):
            continue  # refused: what we want
        raise AssertionError(f"{role} rolled up {subject}")


async def assert_nothing_good_lost(admin: Bus, best: BestPointer) -> None:
    meta = await admin.last(names.REGISTRY_BUCKET, names.model_key(GAME, best.sha256))
    assert meta.value is not None, "the best model's metadata is gone"
    info = await admin.js.object_store(names.MODELS_STORE)
    assert await info.get_info(best.sha256) is not None, "the best model's blob is gone"


async def assert_attacks_dead_lettered(admin: Bus) -> None:
    """Each attack left a dead letter under its own subject, with the field at fault."""
    letters: dict[str, list[str]] = {}
    for msg in await admin.read_all(names.DLQ_STREAM, "dlq.>"):
        letters.setdefault(msg.subject, []).append(msg.data.decode(errors="replace"))

    def reasons(prefix: str) -> str:
        return "\n".join(
            t for subject, ts in letters.items() if subject.startswith(prefix) for t in ts
        )

    assert "root_values" in reasons("dlq.records."), sorted(letters)
    assert "job_id" in reasons(f"dlq.results.{GAME}."), sorted(letters)
    assert "game" in reasons("dlq.model."), sorted(letters)


def _result(
    job_id: str, group: str, a: dict[str, Any], b: dict[str, Any], w: int, d: int, lo: int
) -> bytes:
    result: dict[str, Any] = {"type": "conclave.eval_result.v1", "job_id": job_id, "game": GAME}
    result |= {"kind": "match"}
    result |= {"a": a, "b": b, "wins_a": w, "draws": d, "wins_b": lo, "term": 1}
    return msgspec.json.encode(result | {"finished_at": time.time(), "group": group})


async def _publish(bus: Bus, subject: str, payload: bytes) -> None:
    try:
        await bus.js.publish(subject, payload, timeout=5.0)
    except NatsError as e:  # a bound the server enforces (size) is a refusal too
        assert "maximum payload" in str(e).lower() or "permission" in str(e).lower(), e


async def connect(url: str, seed: Path) -> Bus:
    """The cluster as the identity whose seed is `seed`, once `up` has written it."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await NatsBus.connect(
                BusConfig(servers=[url], name="attacker", connect_timeout_s=2, nkey_seed=str(seed))
            )
        except BusError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
