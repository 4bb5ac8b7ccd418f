"""Version skew: which wire protocols the cluster accepts, and who is outside them.

The coordinator writes the accepted range (registry `cluster.protocol`) when it starts a term; a
node whose build speaks another protocol is shown in `conclave status` with the reason, is not
counted as a worker, and its pullers take no jobs (like lc0's minimum client version). The range
may also announce the next minimum: a node below it still works and is only warned about (in
status and its own log), so an upgrade is announced one release before it is enforced.
"""

from __future__ import annotations

import logging

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import PROTOCOL, ClusterProtocol
from shared.bus.errors import BusError
from shared.bus.ports import KV, Bus

log = logging.getLogger("conclave.compat")
MIN_PROTOCOL = 2  # the oldest protocol this build's coordinator still serves
# The minimum the next release will enforce, announced now (None: no change is planned); a
# release raising MIN_PROTOCOL sets this to the new value one release before.
NEXT_MIN_PROTOCOL: int | None = None
RECHECK_S = 5.0


def refusal(protocol: int, accepted: ClusterProtocol | None) -> str | None:
    """Why a node speaking `protocol` gets no work, or None if it may work."""
    if accepted is None or accepted.min_protocol <= protocol <= accepted.max_protocol:
        return None
    return (
        f"protocol {protocol} unsupported: the coordinator ({accepted.set_by}) accepts "
        f"{accepted.min_protocol}..{accepted.max_protocol}"
    )


def upgrade_warning(protocol: int, accepted: ClusterProtocol | None) -> str | None:
    """Why a node speaking `protocol` should upgrade soon: it works now but is below the
    announced next minimum. None if it is refused already (`refusal` says why) or current."""
    if accepted is None or refusal(protocol, accepted) is not None:
        return None
    soft = accepted.next_min_protocol
    if soft is None or protocol >= soft:
        return None
    return (
        f"protocol {protocol} is below the next minimum {soft} announced by the coordinator "
        f"({accepted.set_by}): upgrade before it is enforced"
    )


def announced(
    node_id: str,
    at: float,
    next_min: int | None = NEXT_MIN_PROTOCOL,
    low: int = MIN_PROTOCOL,
    high: int = PROTOCOL,
) -> ClusterProtocol:
    """The range `low..high` (this build's: back to MIN_PROTOCOL), with a next minimum only
    when it would raise the minimum to a protocol the range holds (otherwise none is
    announced: nodes can only be asked to upgrade to a protocol the coordinator speaks)."""
    if next_min is not None and not low < next_min <= high:
        log.warning("next minimum %d ignored: not in %d..%d", next_min, low + 1, high)
        next_min = None
    return ClusterProtocol(low, high, node_id, at, next_min)


async def accepted_range(bus: KV) -> ClusterProtocol | None:
    entry = await bus.last(names.REGISTRY_BUCKET, names.PROTOCOL_KEY)
    if entry.value is None:
        return None
    try:
        return decode(entry.value, ClusterProtocol, subject=names.PROTOCOL_KEY)
    except BadMessage as e:
        log.warning("%s", e)
    except Exception as e:  # unreadable however it fails: no range, as if unset
        log.warning("unreadable %s: %r", names.PROTOCOL_KEY, e)
    return None


async def announce(bus: Bus, node_id: str, next_min: int | None = NEXT_MIN_PROTOCOL) -> None:
    """The coordinator's range: this build's protocol back to MIN_PROTOCOL (`announced`)."""
    accepted = announced(node_id, bus.clock.time(), next_min)
    await bus.write(names.REGISTRY_BUCKET, names.PROTOCOL_KEY, encode(accepted))


class Gate:
    """A worker's check before it pulls: re-read at most every RECHECK_S seconds. Below the
    announced next minimum it still pulls, and says so in its log once."""

    def __init__(self, bus: Bus, protocol: int = PROTOCOL) -> None:
        self.bus, self.protocol = bus, protocol
        self.reason: str | None = None
        self.warning: str | None = None
        self.checked_at = -RECHECK_S

    async def refusal(self) -> str | None:
        clock = self.bus.clock
        if clock.monotonic() - self.checked_at >= RECHECK_S:
            try:
                accepted = await accepted_range(self.bus)
            except BusError:
                return self.reason  # keep the last answer while the bus is away
            reason = refusal(self.protocol, accepted)
            if reason != self.reason and reason:
                log.error("taking no work: %s", reason)
            warning = upgrade_warning(self.protocol, accepted)
            if warning != self.warning and warning:
                log.warning("%s", warning)
            self.reason, self.warning, self.checked_at = reason, warning, clock.monotonic()
        return self.reason
