"""Leader-only writes: a value stamped with an older term never overwrites a newer one."""

from __future__ import annotations

import pytest

from schemas import names
from schemas.jobs import BestPointer
from shared.bus.ports import Bus
from shared.lease.fencing import StaleTerm, cas_put, fenced_put, read_termed

KEY = names.best_key("tictactoe")


def pointer(generation: int, term: int) -> BestPointer:
    return BestPointer(
        game="tictactoe",
        generation=generation,
        sha256=f"{generation:064x}",
        term=term,
        promoted_at=0.0,
    )


async def test_a_write_stamped_with_an_old_term_is_rejected(bus: Bus) -> None:
    await fenced_put(bus, names.REGISTRY_BUCKET, KEY, pointer(1, term=5), BestPointer)
    await fenced_put(bus, names.REGISTRY_BUCKET, KEY, pointer(2, term=9), BestPointer)
    with pytest.raises(StaleTerm, match="term 9"):
        await fenced_put(bus, names.REGISTRY_BUCKET, KEY, pointer(3, term=5), BestPointer)
    current, _ = await read_termed(bus, names.REGISTRY_BUCKET, KEY, BestPointer)
    assert current == pointer(2, term=9)


async def test_a_write_that_lost_the_race_is_rejected(bus: Bus) -> None:
    _, revision = await read_termed(bus, names.REGISTRY_BUCKET, KEY, BestPointer)
    await cas_put(bus, names.REGISTRY_BUCKET, KEY, pointer(1, term=7), revision)
    with pytest.raises(StaleTerm):
        await cas_put(bus, names.REGISTRY_BUCKET, KEY, pointer(1, term=6), revision)
