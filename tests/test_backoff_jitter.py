"""Restart and reconnect waits are jittered (issue 18), so a fleet cut off at once (a hub restart)
neither restarts its services nor reconnects in lockstep.

Both are pure given a random generator: the supervisor's restart backoff waits between half and
all of its doubling ceiling (equal jitter: never near zero, a crash loop cannot spin); a
client's first reconnect attempt of an outage waits anything up to the base (full jitter), each
later one between half and all of the base doubled per round through the server pool, up to a
cap. nats-py takes the server and the wait from `Reconnects`, round robin over its pool: a client
whose server dies reconnects to another, and one whose only server restarts comes back.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from urllib.parse import urlparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Server

from shared.bus.client import (
    RECONNECT_WAIT_CAP_S,
    RECONNECT_WAIT_S,
    BusConfig,
    NatsBus,
    Reconnects,
    reconnect_delay,
)
from shared.bus.server import NatsCluster, NatsServer
from shared.runtime.supervisor import Limits, backoff
from tests.conftest import eventually

seeds = st.integers(min_value=0, max_value=2**32)
limits = st.builds(
    Limits,
    backoff_base_s=st.floats(min_value=0.001, max_value=10.0),
    backoff_cap_s=st.floats(min_value=0.001, max_value=600.0),
)


def ceiling(failures: int, lim: Limits) -> float:
    return min(lim.backoff_cap_s, lim.backoff_base_s * 2.0 ** min(failures - 1, 64))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-3, max_value=10**12), limits, seeds)
def test_restart_backoff_is_between_half_and_all_of_its_ceiling(
    failures: int, lim: Limits, seed: int
) -> None:
    plain = backoff(failures, lim)
    delay = backoff(failures, lim, random.Random(seed))
    if failures <= 0:
        assert plain == delay == 0.0
        return
    top = ceiling(failures, lim)
    assert plain == pytest.approx(top)  # no generator: the ceiling (a simulation replays it)
    assert top / 2 <= delay <= top
    assert delay > 0  # a child failing at once still waits: no spinning restarts
    assert delay == backoff(failures, lim, random.Random(seed))  # the generator decides it all


def test_restart_backoff_spreads_a_fleet_around_three_quarters_of_the_ceiling() -> None:
    lim = Limits()  # 0.5 s doubling to 30 s
    for failures, top in ((1, 0.5), (3, 2.0), (20, 30.0)):
        fleet = [backoff(failures, lim, random.Random(i)) for i in range(4000)]
        assert statistics.fmean(fleet) == pytest.approx(0.75 * top, rel=0.03)
        assert statistics.pstdev(fleet) == pytest.approx(top / 2 / 12**0.5, rel=0.05)
        assert min(fleet) >= top / 2 and max(fleet) <= top


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=1, max_value=7),
    st.floats(min_value=0.001, max_value=5.0),
    st.floats(min_value=0.001, max_value=60.0),
    seeds,
)
def test_reconnect_delay_bounds(
    attempt: int, pool: int, base: float, cap: float, seed: int
) -> None:
    delay = reconnect_delay(attempt, pool, random.Random(seed), base, cap)
    top = min(cap, base * 2.0 ** min(attempt // pool, 32))
    assert delay <= top <= cap
    if attempt == 0:
        assert 0 <= delay <= min(cap, base)  # an outage's first attempt: anywhere up to the base
    else:
        assert top / 2 <= delay and delay > 0  # after a failure: never a spin
    assert delay == reconnect_delay(attempt, pool, random.Random(seed), base, cap)


def test_reconnect_delays_spread_a_fleet() -> None:
    first = [reconnect_delay(0, 1, random.Random(i)) for i in range(4000)]
    assert statistics.fmean(first) == pytest.approx(RECONNECT_WAIT_S / 2, rel=0.03)
    # Cut off at once, the fleet's first attempts fill the base: no tenth of it gets a fifth.
    tenths = [int(d / RECONNECT_WAIT_S * 10) for d in first]
    assert max(tenths.count(k) for k in range(10)) < len(first) / 5
    later = [reconnect_delay(9, 1, random.Random(i)) for i in range(4000)]
    assert statistics.fmean(later) == pytest.approx(0.75 * RECONNECT_WAIT_CAP_S, rel=0.03)


def pool(size: int) -> list[Server]:
    return [Server(uri=urlparse(f"nats://hub{i}:4222")) for i in range(size)]


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=5), st.integers(min_value=1, max_value=30), seeds)
def test_reconnects_go_round_the_pool_and_start_over_on_a_new_outage(
    size: int, attempts: int, seed: int
) -> None:
    servers = pool(size)
    handler, expected = Reconnects(random.Random(seed)), random.Random(seed)
    for outage in range(2):
        chosen = [handler(servers, {}) for _ in range(attempts)]
        assert [s for s, _ in chosen] == [servers[i % size] for i in range(attempts)]
        assert [d for _, d in chosen] == [
            reconnect_delay(i, size, expected) for i in range(attempts)
        ]
        assert chosen[0][1] <= RECONNECT_WAIT_S, f"outage {outage}: its first attempt waits long"
        handler.reset()


async def test_a_client_comes_back_after_its_only_server_restarts(nats_server: NatsServer) -> None:
    bus = await NatsBus.connect(BusConfig(servers=[nats_server.url], name="t"))
    try:
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(nats_server.start)  # same port
        await eventually(lambda: bus.nc.is_connected, timeout=15, what="reconnected")
        await bus.flush(timeout_s=5)
        assert bus.nc.stats["reconnects"] >= 1
    finally:
        await bus.close()


async def test_a_client_whose_server_dies_reconnects_to_another(nats_cluster: NatsCluster) -> None:
    bus = await NatsBus.connect(BusConfig(servers=nats_cluster.urls, name="t"))
    try:
        first = bus.connection().server_name
        nats_cluster.by_name(first).kill()

        def elsewhere() -> bool:
            return bus.nc.is_connected and bus.connection().server_name not in ("", first)

        await eventually(elsewhere, timeout=15, what="reconnected to another server")
        await bus.flush(timeout_s=5)
    finally:
        await bus.close()
