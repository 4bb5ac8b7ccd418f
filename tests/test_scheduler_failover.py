"""Fault: the scheduler's whole node is SIGKILLed; another node's scheduler carries on.

Two coordinator nodes and one worker node (selfplay, trainer, evaluator) run tic-tac-toe as
separate process trees. When the leader's node dies, the other coordinator takes the lease and
continues from the loop state in KV: generations keep rising, none is skipped or promoted twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import names
from schemas.codec import decode
from schemas.jobs import ModelEvent
from services.scheduler import STATE_KEY, LoopRecord
from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.lease.fencing import read_termed
from shared.lease.watch import current_holder
from tests.conftest import Processes, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def start_node(
    processes: Processes, url: str, node: str, roles: str, tmp: Path
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "shared.cli.main",
        "node",
        "--roles",
        roles,
        "--node-id",
        node,
        "--nats",
        url,
        "--game",
        "tictactoe",
        "--log-dir",
        str(tmp / "logs"),
        "--cache-dir",
        str(tmp / "cache"),
    ]
    return processes.spawn(argv, tmp / f"{node}.out", start_new_session=True)


async def loop_record(bus: Bus) -> LoopRecord | None:
    record, _ = await read_termed(bus, names.LOOP_BUCKET, STATE_KEY, LoopRecord)
    return record


async def generation_at_least(bus: Bus, n: int, term: int | None = None) -> LoopRecord | None:
    record = await loop_record(bus)
    if record is None or record.state.game("tictactoe").generation < n:
        return None
    return record if term is None or record.term == term else None


async def promotions(bus: Bus) -> list[int]:
    msgs = await bus.read_all(names.EVENTS_STREAM, names.model_event_subject("promoted"))
    return [decode(m.data, ModelEvent).generation for m in msgs]


async def test_killing_the_leaders_node_hands_the_loop_to_the_other(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    url = nats_server.url
    nodes = {n: start_node(processes, url, n, "coordinator", tmp_path) for n in ("c1", "c2")}
    start_node(processes, url, "w1", "selfplay,trainer,evaluator", tmp_path)
    first = await eventually(lambda: generation_at_least(bus, 1), 240, every=1, what="gen 1")
    holder = await current_holder(bus)
    assert holder is not None and holder.term == first.term
    os.killpg(nodes[holder.node].pid, signal.SIGKILL)
    nodes[holder.node].wait()
    survivor = next(n for n in nodes if n != holder.node)

    async def new_leader_progress() -> LoopRecord | None:
        h = await current_holder(bus)
        if h is None or h.node != survivor:
            return None
        gen = first.state.game("tictactoe").generation + 1
        return await generation_at_least(bus, gen, term=h.term)

    later = await eventually(new_leader_progress, 300, every=1, what="progress under new leader")
    assert later.term > first.term
    reached = later.state.game("tictactoe").generation

    async def announced() -> list[int] | None:
        found = await promotions(bus)
        return found if found and max(found) >= reached else None

    promoted: list[int] = await eventually(announced, 10, what=f"generation {reached} announced")
    assert promoted == list(range(len(promoted))), f"skipped or repeated: {promoted}"
