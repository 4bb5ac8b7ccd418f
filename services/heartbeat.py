"""heartbeat service: writes this node's status into KV `nodes` about once a second, with a TTL."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time

import msgspec
from nats.aio.msg import Msg

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import PROTOCOL, NodeStatus, Resources, ServicePulse, ServiceState
from shared.bus import Bus, BusError
from shared.service import VERSION, wait_or_stop
from shared.service import main as service_main

log = logging.getLogger("conclave.heartbeat")


class HeartbeatConfig(msgspec.Struct, frozen=True):
    node_id: str
    roles: list[str]
    services: list[str]
    every_s: float = 1.0
    ttl_s: int = 5
    stale_after_s: float = 3.0


class Pulses:
    """The latest pulse of each local service, from `pulse.<node>.*`."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[ServicePulse, float]] = {}
        self.rejected = 0

    async def on_message(self, msg: Msg) -> None:
        try:
            pulse = decode(msg.data, ServicePulse, subject=msg.subject)
        except BadMessage as e:
            self.rejected += 1
            log.warning("rejected pulse: %s", e, extra={"subject": e.subject, "field": e.field})
            return
        self.latest[pulse.service] = (pulse, time.monotonic())

    def states(self, expected: list[str], stale_after_s: float) -> list[ServiceState]:
        now = time.monotonic()
        names_ = sorted(set(expected) | set(self.latest))
        return [self._state(name, now, stale_after_s) for name in names_]

    def _state(self, name: str, now: float, stale_after_s: float) -> ServiceState:
        seen = self.latest.get(name)
        if seen is None:
            return ServiceState(name=name, alive=False)
        pulse, at = seen
        age = now - at
        return ServiceState(
            name=name,
            alive=age <= stale_after_s,
            pid=pulse.pid,
            lag_p50_ms=pulse.lag_p50_ms,
            lag_max_ms=pulse.lag_max_ms,
            last_pulse_age_s=round(age, 3),
            counters=pulse.counters,
            doing=pulse.doing,
        )


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


async def detect_gpus(timeout_s: float = 60.0) -> list[str]:
    """GPUs torch can see, asked in a child process so torch never loads into this one."""
    code = (
        "import torch\n"
        "names=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]\n"
        "mps=getattr(torch.backends,'mps',None)\n"
        "names+=['mps'] if mps is not None and mps.is_available() else []\n"
        "print('\\n'.join(names))"
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (TimeoutError, OSError) as e:
        log.warning("gpu detection failed: %r", e)
        return []
    return [line for line in out.decode().splitlines() if line]


async def run(bus: Bus, cfg: HeartbeatConfig, stop: asyncio.Event) -> None:
    await bus.provision()
    pulses = Pulses()
    sub = await bus.subscribe(names.pulse_wildcard(cfg.node_id), pulses.on_message)
    resources = Resources(cores=os.cpu_count() or 1, memory_bytes=memory_bytes())
    started = time.time()
    gpu_task = asyncio.ensure_future(detect_gpus())
    key = names.node_key(cfg.node_id)
    try:
        while not stop.is_set():
            if gpu_task.done() and not resources.gpus:
                resources = msgspec.structs.replace(resources, gpus=gpu_task.result())
            status = NodeStatus(
                node=cfg.node_id,
                roles=cfg.roles,
                services=pulses.states(cfg.services, cfg.stale_after_s),
                version=VERSION,
                protocol=PROTOCOL,
                resources=resources,
                hostname=socket.gethostname(),
                started_at=started,
                sent_at=time.time(),
            )
            try:
                await bus.write(names.NODES_BUCKET, key, encode(status), ttl_s=cfg.ttl_s)
            except BusError as e:
                log.warning("status not written: %s", e)
            await wait_or_stop(stop, cfg.every_s)
    finally:
        gpu_task.cancel()
        await sub.unsubscribe()


def main(argv: list[str] | None = None) -> int:
    return service_main("heartbeat", HeartbeatConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
