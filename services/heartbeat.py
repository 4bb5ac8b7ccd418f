"""heartbeat service: writes this node's status into KV `nodes` about once a second, with a TTL.

Beside it, a probe reads the node's standing fleet command from the hub as often (registry
`fleet.node.<node>`): the status says whether the node is draining, and how long that read took
(its round trip to the hub, the fleet's reachability view). The probe runs apart from the
status loop, so a slow or failing read never delays the status."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import sys
from collections.abc import Iterable

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.control import (
    MAX_SERVICES,
    PROTOCOL,
    NodeStatus,
    Resources,
    ServicePulse,
    ServiceState,
)
from shared.bus.errors import BusError
from shared.bus.message import Message
from shared.bus.ports import Bus, Clock, SystemClock
from shared.learn.games import game_names
from shared.runtime.service import VERSION, wait_or_stop
from shared.runtime.service import main as service_main
from shared.work.fleet import Standing

log = logging.getLogger("conclave.heartbeat")


class HeartbeatConfig(msgspec.Struct, frozen=True):
    node_id: str
    roles: list[str]
    services: list[str]
    every_s: float = 1.0
    ttl_s: int = 5
    stale_after_s: float = 3.0
    detect_gpus: bool = True  # ask torch, in a child process, which GPUs the node has
    games: tuple[str, ...] = ()  # the games this node's workers play; () = every one installed


MAX_EXTRA_SERVICES = 16  # services beyond the launcher's list kept (the status: MAX_SERVICES)
MAX_COUNTERS = 16  # work counters kept per service (shared.runtime.counters has a handful)
MAX_DOING_CHARS = 200
FORGET_AFTER_S = 60.0  # an unexpected service silent this long leaves the status
HEADROOM_BYTES = 4096  # of the max payload, for the write's subject and headers
LOG_EVERY_S = 10.0  # at most LOG_BURST lines per interval about rejected or dropped pulses
LOG_BURST = 20
# Service kinds a launcher runs (shared/node/launcher.py ROLE_SERVICES, plus heartbeat): an
# unexpected instance of one of them (`selfplay-9`) outranks a name nobody runs.
KNOWN_KINDS = frozenset(
    {"heartbeat", "leader", "scheduler", "selfplay", "trainer", "evaluator", "syncer"}
)


class Pulses:
    """The latest pulse of each local service, from `pulse.<node>.*`.

    Pulses are untrusted: one that does not decode is skipped, and what is kept is bounded
    (every expected service, at most `max_extra` others, few counters, short strings), so the
    node's status always fits a NATS message however many service names its pulses invent.
    """

    def __init__(
        self,
        expected: Iterable[str] = (),
        max_extra: int = MAX_EXTRA_SERVICES,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.expected = frozenset(expected)
        self.max_extra = max_extra
        self.latest: dict[str, tuple[ServicePulse, float]] = {}
        self.rejected = 0
        self.dropped = 0
        self._window_at, self._logged = -LOG_EVERY_S, 0

    async def on_message(self, msg: Message) -> None:
        pulse = self._parsed(msg)
        if pulse is not None:
            self.take(pulse, self.clock.monotonic())

    def _parsed(self, msg: Message) -> ServicePulse | None:
        try:
            pulse = decode(msg.data, ServicePulse, subject=msg.subject)
            names.check_token(pulse.service, "$.service")
        except Exception as e:  # BadMessage, BadName, RecursionError: all unreadable
            self.rejected += 1
            field = e.field if isinstance(e, BadMessage) else "$.service"
            self._note(f"rejected pulse: {e}", subject=msg.subject, field=field)
            return None
        return bounded(pulse)

    def take(self, pulse: ServicePulse, now: float) -> None:
        """Keep `pulse` unless it would push a better-ranked service out of the status."""
        name = pulse.service
        if name in self.latest or name in self.expected or self._room_for(name, now):
            self.latest[name] = (pulse, now)
            return
        self.dropped += 1
        self._note(f"dropped pulse: {self.max_extra} other services are listed", pulse_service=name)

    def _room_for(self, name: str, now: float) -> bool:
        self._forget(now)
        extras = [n for n in self.latest if n not in self.expected]
        if len(extras) < self.max_extra:
            return True
        worst = max(extras, key=lambda n: (_rank(n), -self.latest[n][1]))
        if _rank(name) >= _rank(worst):
            return False
        del self.latest[worst]
        return True

    def _forget(self, now: float) -> None:
        for name, (_, at) in list(self.latest.items()):
            if name not in self.expected and now - at > FORGET_AFTER_S:
                del self.latest[name]

    def _note(self, text: str, **extra: str) -> None:
        """Log, unless LOG_BURST lines were logged this interval (a flood must not flood)."""
        now = self.clock.monotonic()
        if now - self._window_at >= LOG_EVERY_S:
            self._window_at, self._logged = now, 0
        if self._logged < LOG_BURST:
            self._logged += 1
            counts = f"({self.rejected} rejected, {self.dropped} dropped so far)"
            log.warning("%s %s", text, counts, extra=extra)

    def states(self, expected: list[str], stale_after_s: float) -> list[ServiceState]:
        """Every expected service and the best-ranked others, at most MAX_SERVICES (what a
        reader accepts), by name."""
        now = self.clock.monotonic()
        others = sorted(set(self.latest) - set(expected), key=lambda n: (_rank(n), n))
        chosen = [*sorted(set(expected)), *others][:MAX_SERVICES]
        return [self._state(name, now, stale_after_s) for name in sorted(chosen)]

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
            compute=pulse.compute,
        )


def _rank(name: str) -> int:
    return 0 if names.service_kind(name) in KNOWN_KINDS else 1


def bounded(pulse: ServicePulse) -> ServicePulse:
    """`pulse` cut to what a status carries: MAX_COUNTERS finite counters with token names, a
    short `doing`, finite lags (JSON has no infinity: it would make the status unreadable)."""
    counters = {
        k: v for k, v in sorted(pulse.counters.items()) if _is_token(k) and math.isfinite(v)
    }
    return msgspec.structs.replace(
        pulse,
        counters=dict(list(counters.items())[:MAX_COUNTERS]),
        doing=pulse.doing[:MAX_DOING_CHARS],
        lag_p50_ms=_finite(pulse.lag_p50_ms),
        lag_max_ms=_finite(pulse.lag_max_ms),
    )


def _is_token(text: str) -> bool:
    try:
        names.check_token(text, "counter")
    except names.BadName:
        return False
    return True


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def fitted(status: NodeStatus, expected: Iterable[str], max_bytes: int) -> bytes:
    """The encoded status; if it is over `max_bytes` (never, while pulses are bounded and the
    launcher's list is sane), its expected services alone without counters, so the node still
    shows, and failing that none."""
    data = encode(status)
    if len(data) <= max_bytes:
        return data
    log.error("status of %d bytes is over %d: services left out", len(data), max_bytes)
    keep = set(expected)
    lean = [
        msgspec.structs.replace(s, counters={}, doing="") for s in status.services if s.name in keep
    ]
    data = encode(msgspec.structs.replace(status, services=lean))
    if len(data) <= max_bytes:
        return data
    return encode(msgspec.structs.replace(status, services=[]))


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


async def probe(standing: Standing, every_s: float, stop: asyncio.Event) -> None:
    """Read the node's standing fleet command (and so time a round trip to the hub) every
    `every_s` until `stop`; `standing` keeps what the status reports."""
    while not stop.is_set():
        await standing.read()
        await wait_or_stop(stop, every_s)


def round_trip_ms(standing: Standing) -> float | None:
    seconds = standing.round_trip_s
    return None if seconds is None else round(seconds * 1000, 2)


async def run(bus: Bus, cfg: HeartbeatConfig, stop: asyncio.Event) -> None:
    await bus.provision()
    pulses = Pulses(cfg.services, clock=bus.clock)
    sub = await bus.subscribe(names.pulse_wildcard(cfg.node_id), pulses.on_message)
    resources = Resources(cores=os.cpu_count() or 1, memory_bytes=memory_bytes())
    started = bus.clock.time()
    gpu_task = asyncio.ensure_future(detect_gpus() if cfg.detect_gpus else no_gpus())
    key = names.node_key(cfg.node_id)
    # A node without roles may not read the registry: its reads would only be refused.
    standing = Standing(bus, cfg.node_id if cfg.roles else "", bus.clock)
    probe_task = asyncio.ensure_future(probe(standing, cfg.every_s, stop))
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
                sent_at=bus.clock.time(),
                games=list(cfg.games or game_names()),
                draining=standing.draining,
                rtt_ms=round_trip_ms(standing),
            )
            data = fitted(status, cfg.services, bus.max_payload - HEADROOM_BYTES)
            try:
                await bus.write(names.NODES_BUCKET, key, data, ttl_s=cfg.ttl_s)
            except BusError as e:
                log.warning("status not written: %r", e)
            await wait_or_stop(stop, cfg.every_s)
    finally:
        gpu_task.cancel()
        probe_task.cancel()
        await asyncio.wait([probe_task])  # ended before the bus closes under it
        await sub.unsubscribe()


async def no_gpus() -> list[str]:
    return []


def main(argv: list[str] | None = None) -> int:
    return service_main("heartbeat", HeartbeatConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
