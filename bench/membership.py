"""Membership at scale: many heartbeating nodes on one server; how fast is a dead one noticed?

    python bench/membership.py --nodes 1000 --json

Starts one real nats-server (the production single-server config, `sync_interval: always`) and
provisions it with `Bus.provision()`, so KV `nodes` is the production bucket (per-message TTL,
no expiry markers). Each simulated node writes what services/heartbeat.py writes: an encoded
`NodeStatus` under its key through `Bus.write`, every `every_s` with the `ttl_s` per-key TTL
(the `HeartbeatConfig` defaults, 1 s and 5 s), sleeping `every_s` after each write as the
service does. Start times are jittered over one period.

The nodes are spread over `--processes` client processes so one Python event loop is not the
bottleneck. By default every node has its own NATS connection, as every real node's heartbeat
does, so the server pays the per-connection reads, acks and pings it would pay for real nodes;
`--connections N` shares N connections instead (cheaper for the clients, flattering the server).
Pulses (`pulse.<node>.*`) and the heartbeat's start-up `provision()` are not simulated.

After `--warmup` seconds a steady window of `--duration` seconds measures:

- `server_cpu_cores`, `client_cpu_cores`: CPU-seconds per second (utime + stime from
  /proc/<pid>/stat) of nats-server and of all client processes together, and the same per node
  in ms per second (`*_cpu_per_node_ms_per_s`); `observer_cpu_cores` is the watching process.
- `server_in_msgs_per_s`, `server_out_msgs_per_s`: /varz deltas; `writes_per_s`: status writes
  the observer saw, and `heartbeat_period_s` = nodes / writes_per_s (1 s plus the write time).

`write_p50_ms`, `write_p99_ms`, `write_max_ms` are the time of every `Bus.write` until its ack
(the server's fsync and the worker's loop lag included), over the whole run.

Then `--kill` nodes (default 5%) stop heartbeating abruptly: their tasks are cancelled, nothing
is deleted. The observer notices death by the scheduler's rule (`shared.loop.observe.fresh`): every
`READ_EVERY_S` (its tick) it re-reads the bucket, and a node counts while its key is there and
its last write is within the heartbeat TTL by the server's timestamp (a node the bucket-wide
read lacks is read directly before it counts as gone: `alive_now`). For each killed node it
takes the time from that last stored write to the first read that no longer counts the node:
`detect_death_s` is the p95 (target <= 10), with `detect_death_p50_s` and `detect_death_max_s`.
`false_deaths` counts nodes still heartbeating that a read stopped counting. To see every write,
the observer also watches the bucket (`Bus.watch` on every key): `live_max_gap_s` is the longest
gap between two writes of a node while it lived (the margin left to the TTL). `write_failures`
counts writes that raised `BusError`, `read_failures` reads that did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nats.js.kv import KeyValue  # noqa: E402

from schemas import names  # noqa: E402
from schemas.codec import BadMessage, decode, encode  # noqa: E402
from schemas.control import NodeStatus, Resources, ServiceState  # noqa: E402
from services.heartbeat import HeartbeatConfig, memory_bytes  # noqa: E402
from shared.bus.client import BusConfig, NatsBus, translated  # noqa: E402
from shared.bus.client import _initial as initial_entries  # noqa: E402  (Bus.snapshot's read)
from shared.bus.errors import BusError  # noqa: E402
from shared.bus.message import Entry  # noqa: E402
from shared.bus.ports import Bus  # noqa: E402
from shared.bus.server import NatsServer, ServerSpec  # noqa: E402
from shared.loop.observe import fresh  # noqa: E402
from shared.runtime.service import VERSION  # noqa: E402

ROLES = ["selfplay"]
SERVICES = ["heartbeat", "selfplay"]
GONE = ("DEL", "PURGE")
READ_EVERY_S = 1.0  # how often the observer reads every status (the scheduler's tick)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULTS = HeartbeatConfig(node_id="default", roles=ROLES, services=SERVICES)


class WorkerSpec(msgspec.Struct, frozen=True):
    """What one client process simulates: its nodes, which of them die, its connections."""

    url: str
    nodes: list[str]
    doomed: list[str]
    connections: int
    seed: int


# -- the simulated nodes (worker processes) ----------------------------------------------------


@dataclass
class Fleet:
    """One worker's nodes: what they wrote, how long each write took, and which are dead."""

    writes: int = 0
    failures: int = 0
    latency_ms: Counter[int] = field(default_factory=Counter)
    dead: set[str] = field(default_factory=set)


def node_status(cfg: HeartbeatConfig, resources: Resources, started: float) -> NodeStatus:
    """A status like a healthy node's: every expected service alive with a recent pulse."""
    services = [
        ServiceState(
            name=name,
            alive=True,
            pid=os.getpid(),
            lag_p50_ms=0.4,
            lag_max_ms=2.5,
            last_pulse_age_s=0.3,
        )
        for name in sorted(cfg.services)
    ]
    return NodeStatus(
        node=cfg.node_id,
        roles=cfg.roles,
        services=services,
        version=VERSION,
        resources=resources,
        hostname=socket.gethostname(),
        started_at=started,
        sent_at=time.time(),
    )


async def heartbeat(bus: Bus, cfg: HeartbeatConfig, delay: float, fleet: Fleet) -> None:
    """services/heartbeat.py's loop: write the status with the TTL, then sleep `every_s`."""
    await asyncio.sleep(delay)
    resources = Resources(cores=os.cpu_count() or 1, memory_bytes=memory_bytes())
    started = time.time()
    key = names.node_key(cfg.node_id)
    while cfg.node_id not in fleet.dead:
        status = node_status(cfg, resources, started)
        sent = time.monotonic()
        try:
            await bus.write(names.NODES_BUCKET, key, encode(status), ttl_s=cfg.ttl_s)
            fleet.writes += 1
            fleet.latency_ms[round(1000 * (time.monotonic() - sent))] += 1
        except BusError:
            fleet.failures += 1
        # Python 3.11's wait_for (inside nats-py's request) can swallow a cancel that races
        # the ack, so a killed node also checks `dead` after each write.
        if cfg.node_id not in fleet.dead:
            await asyncio.sleep(cfg.every_s)


async def connect_all(url: str, count: int, prefix: str) -> list[Bus]:
    buses: list[Bus] = []
    for first in range(0, count, 50):  # in batches: a burst of 250 connects is pointless
        batch = range(first, min(count, first + 50))
        buses += await asyncio.gather(
            *(NatsBus.connect(BusConfig(servers=[url], name=f"{prefix}-{i}")) for i in batch)
        )
    return buses


async def stdin_lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def worker(spec: WorkerSpec) -> None:
    """Run the nodes; obey `kill` (cancel the doomed) and `stop` (print counts) from stdin."""
    buses = await connect_all(spec.url, spec.connections, spec.nodes[0])
    commands = await stdin_lines()
    rng = random.Random(spec.seed)
    fleet = Fleet()
    tasks = {
        node: asyncio.create_task(
            heartbeat(
                buses[i % len(buses)],
                HeartbeatConfig(node_id=node, roles=ROLES, services=SERVICES),
                rng.uniform(0, DEFAULTS.every_s),
                fleet,
            )
        )
        for i, node in enumerate(spec.nodes)
    }
    print("ready", flush=True)
    try:
        while (line := (await commands.readline()).decode().strip()) not in ("stop", ""):
            if line == "kill":
                fleet.dead.update(spec.doomed)
                for node in spec.doomed:
                    tasks.pop(node).cancel()
                print("killed", flush=True)
    finally:
        fleet.dead.update(tasks)
        for task in tasks.values():
            task.cancel()
        if tasks:
            await asyncio.wait(tasks.values(), timeout=5)
        done = {"writes": fleet.writes, "failures": fleet.failures, "latency_ms": fleet.latency_ms}
        print(json.dumps(done), flush=True)
        for bus in buses:
            await bus.close()


# -- the observer --------------------------------------------------------------------------------


@dataclass
class Observer:
    """What an observer of KV `nodes` sees: writes and gaps between them (a watch), and which
    nodes count as alive (a read of every status)."""

    killed: set[str] = field(default_factory=set)
    last_put: dict[str, float] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    detected: dict[str, float] = field(default_factory=dict)
    false_deaths: list[str] = field(default_factory=list)
    puts: int = 0
    bad_values: int = 0
    read_failures: int = 0
    max_gap_s: float = 0.0

    def on_entry(self, entry: Entry) -> None:
        if entry.value is not None:  # nobody deletes a status here
            written = entry.written_at
            self.on_put(entry.key, entry.value, written.timestamp() if written else time.time())

    def on_read(self, alive: set[str], now: float) -> None:
        """A read of every status: those counted before and not now are noticed dead."""
        for key in self.alive - alive:
            self.on_gone(key, now)
        self.alive = alive

    def on_put(self, key: str, value: bytes, stored: float) -> None:
        try:
            decode(value, NodeStatus, subject=key)
        except BadMessage:
            self.bad_values += 1
        if key in self.last_put:
            self.max_gap_s = max(self.max_gap_s, stored - self.last_put[key])
        self.last_put[key] = stored
        self.puts += 1

    def on_gone(self, key: str, now: float) -> None:
        if key not in self.killed:
            self.false_deaths.append(key)
        elif key not in self.detected and key in self.last_put:
            self.detected[key] = now - self.last_put[key]


def stored_at(entry: KeyValue.Entry) -> float:
    """The server's timestamp on the message (nats-py annotates it as int; it is a datetime)."""
    created: object = entry.created
    return created.timestamp() if isinstance(created, datetime) else time.time()


async def watch_writes(bus: Bus, observer: Observer, watching: asyncio.Event) -> None:
    async with bus.watch(names.NODES_BUCKET, ">") as watcher:
        watching.set()
        async for entry in watcher:
            if entry is not None:  # None: the end of the initial values
                observer.on_entry(entry)


async def stored_times(bus: Bus) -> dict[str, float]:
    """When each status the bucket holds was stored (server time): a watch's initial values,
    each key's last message (headers only), read as `Bus.snapshot` reads them."""
    kv = await bus.kv(names.NODES_BUCKET)
    stamps: dict[str, float] = {}
    with translated(f"read {names.NODES_BUCKET}"):
        if (await kv.status()).values == 0:
            return stamps
        watcher = await kv.watchall(meta_only=True)
        try:
            async for entry in initial_entries(watcher, bus.cfg.request_timeout_s):
                if entry.operation in GONE:
                    stamps.pop(entry.key, None)
                else:
                    stamps[entry.key] = stored_at(entry)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
    return stamps


async def still_fresh(bus: Bus, key: str, began: float) -> bool:
    """One status read directly: whether it is there and was fresh when the read began."""
    entry = await bus.last(names.NODES_BUCKET, key)
    written = entry.written_at
    return entry.present and written is not None and fresh(began - written.timestamp())


async def alive_now(bus: Bus, counted: set[str]) -> set[str]:
    """The nodes the scheduler would count: present, and fresh when the read began
    (`accepted_nodes` too judges by the time before its read). A read of the whole bucket can
    miss a key rewritten while it runs (measured: 999 of 1000 heartbeating nodes), so each node
    of `counted` it lacks is read directly before it counts as gone."""
    began = time.time()
    alive = {key for key, at in (await stored_times(bus)).items() if fresh(began - at)}
    suspects = sorted(counted - alive)
    found = await asyncio.gather(*(still_fresh(bus, key, began) for key in suspects))
    return alive | {key for key, fresh_now in zip(suspects, found, strict=True) if fresh_now}


async def read_alive(bus: Bus, observer: Observer) -> None:
    """Every `READ_EVERY_S`, which nodes count; a node is noticed dead once a read is done."""
    while True:
        try:
            alive = await alive_now(bus, observer.alive)
            observer.on_read(alive, time.time())
        except BusError:
            observer.read_failures += 1  # as a scheduler tick would, try again at the next
        await asyncio.sleep(READ_EVERY_S)


async def observe(bus: Bus, observer: Observer, watching: asyncio.Event) -> None:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(watch_writes(bus, observer, watching))
        tg.create_task(read_alive(bus, observer))


# -- the harness ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float
    server_cpu_s: float
    client_cpu_s: float
    observer_cpu_s: float
    in_msgs: int
    out_msgs: int
    puts: int


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process; fields after the parenthesised command name."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def varz(monitor_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{monitor_url}/varz", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def sample(server: NatsServer, workers: list[int], observer: Observer) -> Sample:
    stats = varz(server.monitor_url)
    return Sample(
        at=time.monotonic(),
        server_cpu_s=cpu_seconds(server.pid),
        client_cpu_s=sum(cpu_seconds(pid) for pid in workers),
        observer_cpu_s=time.process_time(),
        in_msgs=int(stats["in_msgs"]),
        out_msgs=int(stats["out_msgs"]),
        puts=observer.puts,
    )


def plan(args: argparse.Namespace, url: str) -> list[WorkerSpec]:
    """Nodes, their connections and the doomed, split as evenly as possible over processes."""
    nodes = [f"sim{i:05d}" for i in range(args.nodes)]
    doomed = set(random.Random(args.seed).sample(nodes, args.kill))
    connections = args.connections or args.nodes
    specs = []
    for p in range(args.processes):
        mine = nodes[p :: args.processes]
        conns = max(1, min(len(mine), round(connections * len(mine) / args.nodes)))
        spec = WorkerSpec(url, mine, [n for n in mine if n in doomed], conns, args.seed + p)
        specs.append(spec)
    return [s for s in specs if s.nodes]


async def spawn(spec: WorkerSpec, work: Path, index: int) -> asyncio.subprocess.Process:
    # The spec goes in a file under the work directory, so every process we start names it.
    path = work / f"worker{index}.json"
    path.write_bytes(msgspec.json.encode(spec))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--worker",
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=2**22,  # the last line carries a latency histogram
    )


async def ask(
    procs: list[asyncio.subprocess.Process], command: str | None, timeout: float
) -> list[str]:
    """Send `command` (if any) to every worker and return each one's next line."""
    if command is not None:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{command}\n".encode())
    answers = []
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"worker {proc.pid} exited with {await proc.wait()}")
        answers.append(line.decode().strip())
    return answers


async def wait_detected(observer: Observer, doomed: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not doomed <= set(observer.detected) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def stop_all(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def measure(
    args: argparse.Namespace, server: NatsServer, bus: Bus, work: Path
) -> dict[str, Any]:
    observer = Observer()
    watching = asyncio.Event()
    watch_task = asyncio.create_task(observe(bus, observer, watching))
    specs = plan(args, server.url)
    doomed = {n for s in specs for n in s.doomed}
    procs: list[asyncio.subprocess.Process] = []
    try:
        await asyncio.wait_for(watching.wait(), 10)
        procs = [await spawn(spec, work, i) for i, spec in enumerate(specs)]
        await ask(procs, None, 120)  # "ready"
        await asyncio.sleep(args.warmup)
        pids = [p.pid for p in procs]
        start = await asyncio.to_thread(sample, server, pids, observer)
        await asyncio.sleep(args.duration)
        end = await asyncio.to_thread(sample, server, pids, observer)
        observer.killed |= doomed
        await ask(procs, "kill", 30)
        await wait_detected(observer, doomed, DEFAULTS.ttl_s + 15)
        await cancel(watch_task)  # before the live nodes stop: their silence is no death
        counts = [json.loads(line) for line in await ask(procs, "stop", 60)]
        return report(args, specs, observer, start, end, counts)
    finally:
        await cancel(watch_task)
        await stop_all(procs)


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def pct(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None


def histogram_pct(counts: Counter[int], q: float) -> int | None:
    """The smallest value with at least a fraction `q` of the counts at or below it."""
    total, seen = counts.total(), 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= q * total:
            return value
    return None


def report(
    args: argparse.Namespace,
    specs: list[WorkerSpec],
    observer: Observer,
    start: Sample,
    end: Sample,
    counts: list[dict[str, Any]],
) -> dict[str, Any]:
    span = end.at - start.at
    server_cores = (end.server_cpu_s - start.server_cpu_s) / span
    client_cores = (end.client_cpu_s - start.client_cpu_s) / span
    detections = list(observer.detected.values())
    latency: Counter[int] = Counter()
    for c in counts:
        latency.update({int(ms): n for ms, n in c["latency_ms"].items()})
    writes_per_s = (end.puts - start.puts) / span
    return {
        "nodes": args.nodes,
        "processes": len(specs),
        "connections": sum(s.connections for s in specs),
        "every_s": DEFAULTS.every_s,
        "ttl_s": DEFAULTS.ttl_s,
        "duration_s": round(span, 2),
        "killed": sum(len(s.doomed) for s in specs),
        "detected": len(detections),
        "detect_death_s": pct(detections, 0.95),
        "detect_death_p50_s": pct(detections, 0.5),
        "detect_death_max_s": round(max(detections), 3) if detections else None,
        "false_deaths": len(observer.false_deaths),
        "live_max_gap_s": round(observer.max_gap_s, 3),
        "server_cpu_cores": round(server_cores, 4),
        "client_cpu_cores": round(client_cores, 4),
        "observer_cpu_cores": round((end.observer_cpu_s - start.observer_cpu_s) / span, 4),
        "server_cpu_per_node_ms_per_s": round(1000 * server_cores / args.nodes, 4),
        "client_cpu_per_node_ms_per_s": round(1000 * client_cores / args.nodes, 4),
        "server_in_msgs_per_s": round((end.in_msgs - start.in_msgs) / span, 1),
        "server_out_msgs_per_s": round((end.out_msgs - start.out_msgs) / span, 1),
        "writes_per_s": round(writes_per_s, 1),
        "heartbeat_period_s": round(args.nodes / writes_per_s, 3) if writes_per_s else None,
        "write_p50_ms": histogram_pct(latency, 0.5),
        "write_p99_ms": histogram_pct(latency, 0.99),
        "write_max_ms": max(latency, default=None),
        "writes": sum(c["writes"] for c in counts),
        "write_failures": sum(c["failures"] for c in counts),
        "bad_values": observer.bad_values,
        "read_failures": observer.read_failures,
    }


async def run(args: argparse.Namespace, server: NatsServer, work: Path) -> dict[str, Any]:
    bus = await NatsBus.connect(BusConfig(servers=[server.url], name="membership-observer"))
    try:
        await bus.provision()
        return await measure(args, server, bus, work)
    finally:
        await bus.close()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--connections", type=int, default=0, help="0: one per node")
    parser.add_argument("--kill", type=int, default=None, help="nodes to kill (default 5%%)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--duration", type=float, default=30.0, help="steady window, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.kill is None:
        args.kill = max(1, args.nodes // 20)
    if not 0 < args.kill < args.nodes or args.processes < 1:
        parser.error("need 0 < --kill < --nodes and --processes >= 1")
    return args


def worker_main(spec_path: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the harness stops its workers itself
    asyncio.run(worker(msgspec.json.decode(Path(spec_path).read_bytes(), type=WorkerSpec)))
    return 0


def on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop processes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    args = parse(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    with tempfile.TemporaryDirectory(prefix="conclave-membership-") as tmp:
        work = Path(tmp)
        server = NatsServer(ServerSpec("bench", work / "nats"))
        try:
            server.start()
            result = asyncio.run(run(args, server, work))
        finally:
            server.stop()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
