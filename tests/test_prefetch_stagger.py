"""Staggered model adoption: 24 self-play workers on one in-memory server (virtual time) fetch a
new best spread over the adoption window, each copy verified by its digest; the delay is a pure
function of who fetches what, spread evenly."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import names
from schemas.codec import encode
from schemas.jobs import ModelEvent
from shared.bus.memory import MemoryServer
from shared.sim.clock import EPOCH, VirtualClock, run_virtual
from shared.work.models import ModelStore
from shared.work.prefetch import prefetch_promoted, stagger_delay

WORKERS = 24
WINDOW_S = 30.0


class TimedStore(ModelStore):
    """A worker's store that notes when each model reached its cache."""

    fetched_at: dict[str, float]

    async def path(self, digest: str) -> Path:
        found = await super().path(digest)
        self.fetched_at[digest] = self.bus.clock.monotonic()
        return found


async def adoption(cache: Path) -> tuple[str, list[TimedStore]]:
    server = MemoryServer(clock=VirtualClock())
    admin = server.connect("admin")
    await admin.provision()
    digest = await ModelStore(admin, cache / "trainer").put(bytes(range(256)) * 1200)
    stores, stop, tasks = [], asyncio.Event(), []
    for i in range(WORKERS):
        store = TimedStore(server.connect(f"n{i}"), cache / f"n{i}")
        store.fetched_at = {}
        stores.append(store)
        fetching = prefetch_promoted(store.bus, store, stop, f"n{i}/selfplay", WINDOW_S)
        tasks.append(asyncio.create_task(fetching))
    await asyncio.sleep(0.1)  # every worker subscribed
    event = ModelEvent(kind="promoted", game="connect4", generation=7, sha256=digest, at=EPOCH)
    await admin.publish(names.model_event_subject("promoted"), encode(event))
    await asyncio.sleep(WINDOW_S + 5.0)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return digest, stores


def test_a_fleet_fetches_a_new_best_spread_over_the_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest, stores = run_virtual(adoption(tmp_path))
    times = sorted(store.fetched_at[digest] - 0.1 for store in stores)
    assert len(times) == WORKERS and times[0] >= 0.0 and times[-1] < WINDOW_S + 1.0
    for store in stores:  # the cached copy is the model, byte for byte
        blob = (store.cache_dir / digest).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == digest
    buckets = [sum(1 for t in times if 5 * k <= t < 5 * (k + 1)) for k in range(7)]
    with capsys.disabled():
        print(f"\nfetches per 5 s of the {WINDOW_S:.0f} s window: {buckets}")
    assert max(buckets) <= 10  # all at once would be 24 in one bucket
    assert times[-1] - times[0] > WINDOW_S / 2


@given(st.text(min_size=1, max_size=20), st.floats(0.0, 3600.0))
def test_the_delay_stays_in_the_window(who: str, window: float) -> None:
    delay = stagger_delay(who, "ab" * 32, window)
    assert 0.0 <= delay <= window and (window > 0 or delay == 0.0)


def test_the_delays_of_a_large_fleet_are_even() -> None:
    delays = [stagger_delay(f"node-{i}/selfplay", "cd" * 32, 1.0) for i in range(2000)]
    deciles = [sum(1 for d in delays if k / 10 <= d < (k + 1) / 10) for k in range(10)]
    assert min(deciles) > 150 and max(deciles) < 250  # 200 each, within a few sigma
