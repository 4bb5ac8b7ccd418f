"""leader service: holds the fenced leader lease (a majority of lease slots and the register in
KV `election`) for its node when it can."""

from __future__ import annotations

import asyncio
import logging

import msgspec

from shared.bus.ports import Bus
from shared.lease.holder import Contender, hold
from shared.lease.quorum import LeaseParams
from shared.runtime.service import main as service_main

log = logging.getLogger("conclave.leader")


class LeaderConfig(msgspec.Struct, frozen=True):
    node_id: str
    lease: LeaseParams = LeaseParams()


async def run(bus: Bus, cfg: LeaderConfig, stop: asyncio.Event) -> None:
    await bus.provision()
    await hold(Contender(bus, cfg.node_id, cfg.lease), stop)


def main(argv: list[str] | None = None) -> int:
    return service_main("leader", LeaderConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
