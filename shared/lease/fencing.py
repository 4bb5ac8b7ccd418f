"""Leader-only writes: compare-and-set, and never over a value stamped with a newer term."""

from __future__ import annotations

from typing import Protocol, TypeVar

from schemas.codec import decode, encode
from shared.bus.errors import BusError, CasFailed
from shared.bus.ports import KV


class Termed(Protocol):
    @property
    def term(self) -> int: ...


T = TypeVar("T", bound=Termed)


class StaleTerm(BusError):
    """A newer leader has written (or is writing) this key: this leader must stop."""


async def read_termed(bus: KV, bucket: str, key: str, kind: type[T]) -> tuple[T | None, int]:
    """The decoded value (None if absent) and the revision to CAS on; BadMessage if unreadable.

    An unreadable value is never treated as absent: that would let a write start over from
    nothing and erase what a leader recorded.
    """
    entry = await bus.last(bucket, key)
    if entry.value is None:
        return None, entry.revision
    return decode(entry.value, kind, subject=key), entry.revision


async def fenced_put(bus: KV, bucket: str, key: str, value: T, kind: type[T]) -> int:
    """Write `value` if the key still holds no newer term and nobody wrote since we read it."""
    current, revision = await read_termed(bus, bucket, key, kind)
    if current is not None and current.term > value.term:
        raise StaleTerm(f"{bucket}/{key} holds term {current.term} > ours {value.term}")
    return await cas_put(bus, bucket, key, value, revision)


async def cas_put(bus: KV, bucket: str, key: str, value: T, revision: int) -> int:
    """Write `value` expecting `revision`; a lost race means a newer leader: StaleTerm."""
    try:
        return await bus.write(bucket, key, encode(value), expect_last=revision)  # type: ignore[arg-type]
    except CasFailed as e:
        raise StaleTerm(f"{bucket}/{key} changed under term {value.term}") from e
