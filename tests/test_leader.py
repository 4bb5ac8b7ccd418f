"""The leader service as real processes on a real nats-server: election, failover, no overlap."""

from __future__ import annotations

import signal
import subprocess
import time

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import Lease
from shared.bus.errors import BusError
from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.lease.audit import LeaseAudit, Term
from tests.conftest import Processes, eventually, process_config


async def current_lease(bus: Bus) -> Lease | None:
    """The lease now; None when absent, unreadable, or not readable while a server is down."""
    try:
        entry = await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)
        return decode(entry.value, Lease) if entry.value else None
    except (BadMessage, BusError):
        return None


def start_contenders(
    processes: Processes, urls: list[str], nodes: list[str], replicas: int = 1
) -> dict[str, subprocess.Popen[bytes]]:
    procs = {}
    for node in nodes:
        proc = process_config(urls, node, "leader")
        proc["bus"]["replicas"] = replicas
        procs[node] = processes.service("services.leader", proc, {"node_id": node})
    return procs


async def test_sigkilled_holder_is_replaced_and_terms_never_overlap(
    nats_server: NatsServer, bus: Bus, processes: Processes
) -> None:
    audit = await LeaseAudit().start(bus)
    procs = start_contenders(processes, [nats_server.url], ["a", "b", "c"])
    holders = []
    for _ in range(3):
        lease = await eventually(lambda: current_lease(bus), 15, what="a leader")
        holders.append(lease.instance)
        procs[lease.node].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        new = await eventually(
            lambda old=lease.instance: _other_holder(bus, old), 10, what="a new leader"
        )
        assert time.monotonic() - killed_at < 3.0 + 1.5, "failover took longer than TTL + 1.5 s"
        procs[lease.node] = start_contenders(processes, [nats_server.url], [lease.node])[lease.node]
        assert new.instance not in holders
    await bus.flush()
    final = await eventually(lambda: current_lease(bus), 5, what="a final leader")
    assert len(audit.terms) >= 3 and final.instance in {t.instance for t in audit.terms.values()}
    assert audit.overlaps() == []
    terms = [t.term for t in audit.ordered()]
    assert terms == sorted(terms)


async def _other_holder(bus: Bus, old_instance: str) -> Lease | None:
    lease = await current_lease(bus)
    return lease if lease and lease.instance != old_instance else None


async def test_sigterm_releases_the_lease_for_an_immediate_takeover(
    nats_server: NatsServer, bus: Bus, processes: Processes
) -> None:
    audit = await LeaseAudit().start(bus)
    procs = start_contenders(processes, [nats_server.url], ["a", "b"])
    lease = await eventually(lambda: current_lease(bus), 15, what="a leader")
    procs[lease.node].send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    new = await eventually(lambda: _other_holder(bus, lease.instance), 5, what="takeover")
    assert time.monotonic() - stopped_at < 1.5
    assert procs[lease.node].wait(5) == 0

    # The released term ended on the audit trail before the next began: no overlap, although
    # its last promise (up to a TTL ahead) had not run out when the contender took over.
    def term_of(instance: str) -> Term | None:
        return next((t for t in audit.terms.values() if t.instance == instance), None)

    began = await eventually(lambda: term_of(new.instance), 5, what="the new term's promise")
    ended = term_of(lease.instance)
    assert ended is not None and ended.ended and ended.valid_until <= began.valid_from
    assert audit.overlaps() == []


async def test_garbage_in_the_lease_key_is_logged_with_the_field_and_survived(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: object
) -> None:
    entry = await bus.last(names.ELECTION_BUCKET, names.LEADER_KEY)
    await bus.write(
        names.ELECTION_BUCKET,
        names.LEADER_KEY,
        b'{"type":"conclave.lease.v1","node":5}',
        ttl_s=2,
        expect_last=entry.revision,
    )
    procs = start_contenders(processes, [nats_server.url], ["a"])
    lease = await eventually(lambda: current_lease(bus), 10, what="a leader after the junk expired")
    assert lease.node == "a" and procs["a"].poll() is None
    log = next(processes.log_dir.glob("a-leader-*.log")).read_text()
    assert "unreadable lease" in log and '"field":"$.node"' in log
