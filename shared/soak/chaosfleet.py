"""The soak's fleet faults: what an operator does to a running cluster, through the code of the
`conclave fleet` command itself (the soak's hub has no auth, so the harness's own connection
may issue what only admin may elsewhere).

- kill-leader-node: SIGKILL the node holding the leader lease, restart it after a delay;
  recovered when a later term holds the lease and the node is healthy again.
- drain: `fleet drain` a self-play node, wait until it is drained (or `drain_bound_s`),
  `fleet resume` it; recovered when it is healthy and on a job again.
- rolling-restart / rolling-upgrade: `fleet restart|upgrade --rolling` of every node (the
  leader's last); recovered when the command succeeds and every node is healthy. Each node's
  timeline (ordered, taken, done, healthy) is recorded with the fault.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

from schemas.control import FleetAction, FleetOrderAction
from shared.bus.ports import Bus
from shared.cli.fleet import FleetRequest, command_node
from shared.cli.fleetorders import OrderRequest, order_main
from shared.runtime.service import NO_JOBS
from shared.soak.orders import OrderWatch
from shared.soak.record import Fault, FaultKind

if TYPE_CHECKING:
    from shared.soak.harness import Harness

ISSUER = f"soak@{socket.gethostname()}"
FLEET_WAIT_S = 10.0  # for a drained or resumed node to show it, as `conclave fleet` waits


class FleetFaults:
    def __init__(self, harness: Harness) -> None:
        self.h = harness

    @property
    def bus(self) -> Bus:
        assert self.h.bus is not None
        return self.h.bus

    # -- kill-leader-node -------------------------------------------------------------------

    async def kill_leader_node(self) -> Fault | None:
        h = self.h
        term = h.audit.holder_at(time.time())
        if term is None:
            return None
        node_id, at = term.node, time.time()
        await h.kill_and_restart(node_id)
        started = time.time()
        recovered = await h.until(
            lambda: h.restarted(node_id, started) and self.new_leader(term.term)
        )
        detail = f"term {term.term}"
        return Fault("kill-leader-node", node_id, at, recovered, node=node_id, detail=detail)

    def new_leader(self, after_term: int) -> bool:
        holder = self.h.audit.holder_at(time.time())
        return holder is not None and holder.term > after_term

    # -- drain ------------------------------------------------------------------------------

    async def drain(self) -> Fault | None:
        h = self.h
        nodes = sorted(s.node_id for s in h.specs if "selfplay" in s.roles)
        node_id, at = h.rng.choice(nodes), time.time()
        await self.command(node_id, "drain")
        drained = await h.until(lambda: self.drained(node_id), h.opts.drain_bound_s)
        await self.command(node_id, "resume")
        recovered = await h.until(lambda: self.working(node_id))
        detail = (
            f"drained in {drained - at:.1f} s"
            if drained is not None
            else f"not drained within {h.opts.drain_bound_s:.0f} s"
        )
        return Fault("drain", node_id, at, recovered, detail=detail)

    async def command(self, node_id: str, action: FleetAction) -> None:
        request = FleetRequest(verb=action, node=node_id, issued_by=ISSUER, wait_s=FLEET_WAIT_S)
        await command_node(self.bus, request, action)

    def drained(self, node_id: str) -> bool:
        status = self.h.statuses.get(node_id)
        return status is not None and status.draining and not self.jobs(node_id)

    def working(self, node_id: str) -> bool:
        status = self.h.statuses.get(node_id)
        return (
            status is not None
            and not status.draining
            and self.h.healthy(node_id)
            and self.jobs(node_id) > 0
        )

    def jobs(self, node_id: str) -> int:
        status = self.h.statuses.get(node_id)
        services = status.services if status else []
        return sum(s.alive and bool(s.doing) and not s.doing.startswith(NO_JOBS) for s in services)

    # -- rolling restart and upgrade --------------------------------------------------------

    async def rolling_restart(self) -> Fault | None:
        return await self.rolling("rolling-restart", "restart")

    async def rolling_upgrade(self) -> Fault | None:
        return await self.rolling("rolling-upgrade", "upgrade")

    async def rolling(self, kind: FaultKind, action: FleetOrderAction) -> Fault:
        h = self.h
        nodes = sorted(h.fleet.nodes)
        pids = {
            n: sorted(s.pid for s in h.statuses[n].services) if n in h.statuses else []
            for n in nodes
        }
        wheel = str(h.wheel) if action == "upgrade" and h.wheel is not None else ""
        request = OrderRequest(
            action=action,
            nodes=nodes,
            rolling=True,
            wheel=wheel,
            reason=f"soak {kind}",
            issued_by=ISSUER,
            timeout_s=h.opts.recovery_timeout_s,
        )
        at = time.time()
        watch = OrderWatch(self.bus, action, at, pids)
        async with watch.running():
            code, detail = await self.order(request)
        recovered = None
        if code == 0:
            recovered = await h.until(lambda: all(h.healthy(n) for n in nodes))
        timelines = watch.timelines()
        return Fault(kind, "every node", at, recovered, detail=detail, orders=timelines)

    async def order(self, request: OrderRequest) -> tuple[int, str]:
        """`conclave fleet restart|upgrade`'s exit code, and a line saying how it ended."""
        try:
            code = await order_main(self.bus, request)
        except Exception as e:  # no target, not issued, a bad wheel: the fault failed
            return 1, f"{type(e).__name__}: {e}"
        return code, f"exit {code}" + (
            f", wheel {request.wheel.rsplit('/', 1)[-1]}" if request.wheel else ""
        )
