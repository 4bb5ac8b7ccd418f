"""Acceptance: the whole loop as separate processes learns tic-tac-toe to perfect play, with
rating jobs flooding the evaluation queue (matches must jump it, so the loop keeps promoting)
and, from the first promotion on, nodes holding the cluster's own role credentials attacking it
(tests/hostile.py): it dead-letters every attack naming the field and loses nothing good.

`conclave up --game tictactoe` runs NATS and every service (leader, scheduler, selfplay, trainer,
evaluator) as supervised processes. Perfect play: at every position reachable with the best model
to move (as either side, against every reply), its move keeps the game-theoretic value.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from schemas import names
from schemas.codec import decode
from schemas.jobs import BestPointer, EvalJob, EvalResult, PlayerSpec
from shared.bus.ports import Bus
from shared.bus.server import free_port
from shared.learn.games import get_game
from shared.learn.search.agent import checkpoint_agent
from shared.learn.solver.small import PerfectPlayReport, check_perfect_play_batched
from shared.loop.effects import issue
from shared.loop.presets import TICTACTOE
from shared.loop.ratingjobs import game_results
from shared.work.models import ModelStore
from tests import hostile
from tests.conftest import Processes

pytestmark = [pytest.mark.xdist_group("heavy"), pytest.mark.slow, pytest.mark.timeout(900)]

LIMIT_S = 600.0
FLOOD_JOBS = 20  # rating jobs of 20 games against mcts:100 dropped into the queue at once


async def best_pointer(bus: Bus) -> BestPointer | None:
    entry = await bus.last(names.REGISTRY_BUCKET, names.best_key("tictactoe"))
    return decode(entry.value, BestPointer) if entry.value else None


def perfect_play(path: Path) -> PerfectPlayReport:
    game = get_game("tictactoe")
    agent = checkpoint_agent(game, path, TICTACTOE.effects.eval_sims)
    rng = np.random.default_rng(0)
    return check_perfect_play_batched(game, lambda states: agent.choose_all(game, states, rng))


async def test_tictactoe_reaches_perfect_play_within_ten_minutes(
    processes: Processes, tmp_path: Path
) -> None:
    port = free_port()
    up = processes.spawn(
        [
            sys.executable,
            "-m",
            "shared.cli.main",
            "up",
            "--game",
            "tictactoe",
            "--data-dir",
            str(tmp_path / "data"),
            "--nats-port",
            str(port),
        ],
        tmp_path / "up.out",
    )
    started = time.monotonic()
    # `up` runs with auth on: this test reads the cluster as the admin identity it generated.
    url = f"nats://127.0.0.1:{port}"
    bus = await hostile.connect(url, tmp_path / "data" / "auth" / "admin.nk")
    store = ModelStore(bus, tmp_path / "check-cache")
    checked: dict[str, PerfectPlayReport] = {}
    flooded = False
    try:
        while time.monotonic() - started < LIMIT_S:
            pointer = await best_pointer(bus)
            if pointer is not None and not flooded:
                await flood_with_rating_jobs(bus, FLOOD_JOBS)
                await hostile.attack(url, tmp_path / "data" / "auth")
                flooded = True
            if pointer is not None and pointer.sha256 not in checked:
                report = perfect_play(await store.path(pointer.sha256))
                checked[pointer.sha256] = report
                print(
                    f"{time.monotonic() - started:.0f}s gen {pointer.generation}: "
                    f"{len(report.mistakes)} mistakes in {report.positions} positions"
                )
                if report.perfect:
                    break
            await asyncio.sleep(5)  # a poll: each check may load a model and solve the game
        elapsed = time.monotonic() - started
        assert any(r.perfect for r in checked.values()), (
            f"no perfect model in {elapsed:.0f}s: {[len(r.mistakes) for r in checked.values()]}"
        )
        assert elapsed < LIMIT_S
        assert_matches_jumped_the_flood(await game_results(bus, "tictactoe"))
        assert up.poll() is None, "conclave up exited under attack"
        best = await best_pointer(bus)
        assert best is not None
        await hostile.assert_nothing_good_lost(bus, best)
        await hostile.assert_attacks_dead_lettered(bus)
    finally:
        await bus.close()
        up.send_signal(signal.SIGTERM)
        up.wait(60)


async def flood_with_rating_jobs(bus: Bus, count: int) -> None:
    """Rating jobs far beyond what the scheduler would queue, ahead of the first match."""
    slow = PlayerSpec("mcts:100", agent="mcts:100")
    onestep = PlayerSpec("onestep", agent="onestep")
    for k in range(count):
        job = EvalJob(
            job_id=f"flood-{k}",
            game="tictactoe",
            kind="rating",
            a=onestep,
            b=slow,
            games=20,
            term=0,
            group="r",
        )
        await issue(bus, job)  # as the leader would: only an issued job's result counts


def assert_matches_jumped_the_flood(results: list[EvalResult]) -> None:
    """Every match job started before any rating job queued after it, and waited behind at most
    one rating or gauntlet job (the one the evaluator was playing)."""
    matches = [r for r in results if r.kind == "match"]
    background = [r for r in results if r.kind != "match"]
    assert matches, "no match was played"
    assert any(r.job_id.startswith("flood-") for r in background)
    for m in matches:
        started = m.finished_at - m.elapsed_s
        submitted = started - m.waited_s
        ahead = [
            r.job_id
            for r in background
            if r.finished_at > submitted and r.finished_at - r.elapsed_s < started
        ]
        assert len(ahead) <= 1, f"match job {m.job_id} waited behind {ahead}"
