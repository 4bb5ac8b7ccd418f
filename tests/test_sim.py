"""Deterministic simulation of the real lease holders and schedulers (`shared.sim`): a thousand
seeded fault schedules hold every invariant, a failing run replays from its seed, and each of
three planted bugs is caught.

Replay any seed with `python -m shared.sim --seed N`.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import services.scheduler as scheduler
from schemas.codec import encode
from shared.bus.ports import KV
from shared.lease import quorum
from shared.lease.holder import Contender
from shared.sim.schedules import KINDS, schedule
from shared.sim.services import scheduler_service
from shared.sim.world import Fault, Schedule, simulate

pytestmark = pytest.mark.xdist_group("heavy")  # CPU-heavy: one at a time, beside the light tests

SCHEDULES = 1000
WORKERS = 2  # the CI machine's cores: the runs are independent


def _violations(seeds: range) -> list[tuple[int, str]]:
    services = (scheduler_service(),)
    found = []
    for seed in seeds:
        report = simulate(schedule(seed), services)
        if report.violation is not None:
            found.append((seed, report.violation))
    return found


def _chunks(total: int, parts: int) -> Iterator[range]:
    step = math.ceil(total / parts)
    return (range(lo, min(lo + step, total)) for lo in range(0, total, step))


def test_a_thousand_fault_schedules_of_the_lease_and_scheduler_hold_every_invariant() -> None:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        found = [v for part in pool.map(_violations, _chunks(SCHEDULES, WORKERS)) for v in part]
    assert not found, "\n".join(
        f"seed {seed}: {what} (replay: python -m shared.sim --seed {seed})" for seed, what in found
    )


def test_a_run_replays_exactly_from_its_seed() -> None:
    services = (scheduler_service(),)
    seed = next(s for s in range(100) if len(schedule(s).faults) >= 4)
    first, again = simulate(schedule(seed), services), simulate(schedule(seed), services)
    assert first == again
    assert first.terms and first.loop_writes > 0


def test_schedules_cover_every_fault_and_target_the_leader() -> None:
    faults = [f for seed in range(200) for f in schedule(seed).faults]
    assert {f.kind for f in faults} == set(KINDS)
    assert any(f.node == -1 for f in faults) and any(f.node >= 0 for f in faults)


faults = st.builds(
    Fault,
    at=st.floats(0.5, 30.0),
    kind=st.sampled_from(KINDS),
    node=st.integers(-1, 3),
    duration_s=st.floats(0.0, 20.0),
    count=st.integers(1, 4),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    nodes=st.integers(2, 4),
    replicas=st.sampled_from([1, 3]),
    chosen=st.lists(faults, max_size=6),
    latency=st.sampled_from([0.0, 0.05, 0.4]),
)
def test_hypothesis_chosen_schedules_hold_every_invariant(
    seed: int, nodes: int, replicas: int, chosen: list[Fault], latency: float
) -> None:
    run = Schedule(
        seed=seed,
        nodes=nodes,
        replicas=replicas,
        faults=tuple(chosen),
        horizon_s=40.0,
        latency_s=latency,
    )
    report = simulate(run, (scheduler_service(),))
    assert report.violation is None, f"{report.violation}\n{run}"


# -- planted bugs: the simulation must catch each ---------------------------------------------


def _first_violation(limit: int = 300) -> tuple[int, str]:
    services = (scheduler_service(),)
    for seed in range(limit):
        report = simulate(schedule(seed), services)
        if report.violation is not None:
            return seed, report.violation
    pytest.fail(f"the planted bug survived {limit} schedules")


def test_it_catches_a_lease_validity_one_tick_too_long(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    valid_until = quorum.valid_until

    def one_tick_longer(slots: list[quorum.Slot], me: str, params: quorum.LeaseParams) -> float:
        return valid_until(slots, me, params) + params.renew_every_s

    monkeypatch.setattr(quorum, "valid_until", one_tick_longer)
    seed, violation = _first_violation()
    with capsys.disabled():
        print(f"\nplanted validity bug: caught by seed {seed}: {violation}")
    assert "valid" in violation


def test_it_catches_a_scheduler_write_without_the_term_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def blind_put(
        bus: KV, bucket: str, key: str, value: scheduler.LoopRecord, revision: int
    ) -> int:
        del revision  # the bug: no compare-and-set, so no newer term can stop this write
        return await bus.write(bucket, key, encode(value))

    monkeypatch.setattr(scheduler, "cas_put", blind_put)
    seed, violation = _first_violation()
    with capsys.disabled():
        print(f"\nplanted fencing bug: caught by seed {seed}: {violation}")
    assert "loop state write" in violation


def test_it_catches_a_register_that_is_never_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The liveness bug the simulation found in the real holder: slot wake-ups kept pushing
    back the register's re-read, so an expired leader was never replaced."""
    monkeypatch.setattr(Contender, "register_recheck_at", lambda self: math.inf)
    seed, violation = _first_violation()
    assert "no valid leader" in violation, (seed, violation)
