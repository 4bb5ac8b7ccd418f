"""The whole training loop in memory: one node's real services (heartbeat, leader, scheduler,
self-play, trainer, evaluator) as tasks on the in-memory bus and virtual clock, learning
tic-tac-toe to perfect play with every invariant checked throughout; and the planted bug of a
worker that acknowledges its job before the games are stored, caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas import names
from schemas.codec import decode
from schemas.jobs import BestPointer, SelfplayJob
from services import selfplay
from shared.bus.memory import MemoryBus
from shared.bus.ports import Delivery
from shared.learn.games import get_game
from shared.learn.search.agent import checkpoint_agent
from shared.learn.solver.small import check_perfect_play_batched
from shared.loop.presets import TICTACTOE
from shared.sim.services import SIM_TICTACTOE, loop_services
from shared.sim.world import Schedule, simulate
from shared.work.models import ModelStore

pytestmark = pytest.mark.xdist_group("heavy")  # CPU-heavy: one at a time, beside the light tests

HORIZON_S = 600.0  # virtual seconds: CPU work takes none, so this is timers and jobs alone


class PerfectPlay:
    """The run's goal: the best model plays tic-tac-toe perfectly (the solver's verdict, at the
    evaluation's simulations, as `test_loop_tictactoe` judges it)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.checked: dict[str, int] = {}  # model sha256: its mistakes

    async def __call__(self, bus: MemoryBus) -> bool:
        entry = await bus.last(names.REGISTRY_BUCKET, names.best_key("tictactoe"))
        if entry.value is None:
            return False
        best = decode(entry.value, BestPointer)
        if best.sha256 not in self.checked:
            path = await ModelStore(bus, self.cache).path(best.sha256)
            game = get_game("tictactoe")
            agent = checkpoint_agent(game, path, TICTACTOE.effects.eval_sims)
            rng = np.random.default_rng(0)
            report = check_perfect_play_batched(
                game, lambda states: agent.choose_all(game, states, rng)
            )
            self.checked[best.sha256] = len(report.mistakes)
        return self.checked[best.sha256] == 0


# The goal is in virtual time (HORIZON_S); this is only a hang guard. About 75 s of one core
# alone, its CI runs beside the light tests' processes took 128 s, 150 s and over 300 s.
@pytest.mark.timeout(600)
def test_the_loop_in_memory_learns_tictactoe_to_perfect_play(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    goal = PerfectPlay(tmp_path / "check")
    run = Schedule(seed=0, nodes=1, replicas=1, horizon_s=HORIZON_S, latency_s=0.01)
    report = simulate(run, loop_services(SIM_TICTACTOE, tmp_path / "cache"), until=goal)
    with capsys.disabled():  # the run's path, to compare runs: it replays on the same machine
        print(f"\nin-memory loop: mistakes of each best {list(goal.checked.values())}")
    assert report.violation is None, report.violation
    assert report.reached, f"no perfect model in {HORIZON_S:.0f} s: mistakes {goal.checked}"
    assert report.restarts == 0, report.last_failure


def test_it_catches_an_ack_before_the_games_are_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def acks_first(self: selfplay.Worker, delivery: Delivery[SelfplayJob]) -> None:
        await delivery.done()  # the bug: acknowledged while its games are still to be stored
        await self.play(delivery.job, delivery.delivered)

    monkeypatch.setattr(selfplay.Worker, "work", acks_first)
    for seed in range(5):
        run = Schedule(seed=seed, nodes=1, replicas=1, horizon_s=60.0, latency_s=0.01)
        report = simulate(run, loop_services(TICTACTOE, tmp_path / f"cache{seed}"))
        if report.violation is not None:
            break
    with capsys.disabled():
        print(f"\nplanted ack bug: caught by seed {seed}: {report.violation}")
    assert report.violation is not None and "acknowledged with" in report.violation
