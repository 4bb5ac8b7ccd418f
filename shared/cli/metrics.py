"""`conclave metrics --port P`: one Prometheus endpoint for the whole cluster, read from the bus.

Nodes behind NAT need no inbound port: everything here comes from what they publish (heartbeats,
the lease, the loop state, job streams, the registry). Each scrape takes one `conclave status`
snapshot (`shared.cli.status.gather`) and turns it into metric families, so the endpoint and
`conclave status --json` agree for the same moment.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector, CollectorRegistry

from shared.bus.client import BusConfig, NatsBus
from shared.bus.ports import Bus
from shared.cli.status import StatusReport, gather
from shared.work.compute import PASSED

log = logging.getLogger("conclave.metrics")
SCRAPE_TIMEOUT_S = 10.0


def families(report: StatusReport) -> list[Metric]:
    """Every metric of one status snapshot (pure)."""
    return [
        *_node_families(report),
        *_compute_families(report),
        *_leader_families(report),
        *_game_families(report),
        *_phase_families(report),
        *_allocation_families(report),
        *_archive_families(report),
    ]


def _node_families(report: StatusReport) -> Iterator[Metric]:
    alive = GaugeMetricFamily("conclave_nodes_alive", "Nodes with a fresh heartbeat")
    alive.add_metric([], report.nodes_alive)
    yield alive
    by_role = GaugeMetricFamily(
        "conclave_nodes_alive_by_role", "Alive nodes per role", labels=["role"]
    )
    for role, count in sorted(report.alive_by_role.items()):
        by_role.add_metric([role], count)
    yield by_role
    node_up = GaugeMetricFamily("conclave_node_up", "1 if the node heartbeats", labels=["node"])
    lag = GaugeMetricFamily(
        "conclave_loop_lag_ms",
        "Worst event-loop lag of a service over its last pulse interval",
        labels=["node", "service"],
    )
    skew = GaugeMetricFamily(
        "conclave_node_unsupported", "1 if the node's protocol gets no work", labels=["node"]
    )
    work = CounterMetricFamily(
        "conclave_work",
        "Work a service did since it started (games, simulations, train_steps, eval_games): "
        "rate() gives games/h and simulations/s per node",
        labels=["node", "service", "kind"],
    )
    for node in report.nodes:
        node_up.add_metric([node.id], 1 if node.alive else 0)
        skew.add_metric([node.id], 1 if node.unsupported else 0)
        for service in node.services:
            lag.add_metric([node.id, service.name], service.loop_lag_ms)
            for kind, total in sorted(service.counters.items()):
                work.add_metric([node.id, service.name, kind], total)
    yield from (node_up, lag, skew, work)


def _compute_families(report: StatusReport) -> Iterator[Metric]:
    """Per worker: memory, device memory, positions/s and its self-test verdict, labelled with
    its device and tier (sum() by node gives a node's totals)."""
    labels = ["node", "service", "device", "tier"]
    rss = GaugeMetricFamily("conclave_rss_bytes", "A worker's resident memory", labels=labels)
    used = GaugeMetricFamily(
        "conclave_device_memory_bytes", "Device memory (VRAM) a worker allocated", labels=labels
    )
    total = GaugeMetricFamily(
        "conclave_device_memory_total_bytes", "Memory of a worker's device", labels=labels
    )
    speed = GaugeMetricFamily(
        "conclave_positions_per_second",
        "Positions a worker's device evaluates per second, per network size",
        labels=[*labels, "net"],
    )
    self_test = GaugeMetricFamily(
        "conclave_self_test_ok",
        "1 if a worker's device passed its self-test, 0 if it failed (it takes no jobs); "
        "absent while testing",
        labels=labels,
    )
    for node in report.nodes:
        for service in node.services:
            c = service.compute
            if c is None or not service.alive:  # a dead worker's last report is stale
                continue
            values = [node.id, service.name, c.device, c.tier]
            rss.add_metric(values, c.rss_bytes)
            used.add_metric(values, c.device_memory_bytes)
            total.add_metric(values, c.device_memory_total)
            for net, rate in sorted(c.positions_per_s.items()):
                speed.add_metric([*values, net], rate)
            if c.self_test:  # "" while testing: no verdict yet, not a failure to alert on
                self_test.add_metric(values, 1 if c.self_test == PASSED else 0)
    yield from (rss, used, total, speed, self_test)


def _leader_families(report: StatusReport) -> Iterator[Metric]:
    present = GaugeMetricFamily("conclave_leader_present", "1 if a node holds the leader lease")
    present.add_metric([], 1 if report.leader else 0)
    yield present
    if report.leader is not None:
        term = CounterMetricFamily(
            "conclave_leader_term", "The current leader term (+1 per change)", labels=["node"]
        )
        term.add_metric([report.leader.node], report.leader.term)
        yield term


def _game_families(report: StatusReport) -> Iterator[Metric]:
    generation = GaugeMetricFamily(
        "conclave_best_generation", "Generation of the best model", labels=["game"]
    )
    elo = GaugeMetricFamily("conclave_best_elo", "Elo of the best model", labels=["game"])
    games = CounterMetricFamily("conclave_games", "Self-play games stored", labels=["game"])
    per_hour = GaugeMetricFamily(
        "conclave_games_per_hour", "Self-play games per hour", labels=["game"]
    )
    queued = GaugeMetricFamily(
        "conclave_jobs_queued", "Jobs stored (queued or in flight)", labels=["game", "kind"]
    )
    dead = GaugeMetricFamily("conclave_dead_letters", "Dead-lettered jobs", labels=["game"])
    for g in report.games:
        generation.add_metric([g.game], g.generation)
        if g.best_elo is not None:
            elo.add_metric([g.game], g.best_elo)
        games.add_metric([g.game], g.games_total)
        per_hour.add_metric([g.game], g.games_per_hour)
        dead.add_metric([g.game], g.dead_letters)
        for kind, count in g.queues.items():
            queued.add_metric([g.game, kind], count)
    yield from (generation, elo, games, per_hour, queued, dead)


def _phase_families(report: StatusReport) -> Iterator[Metric]:
    """What the loop is doing: phase, training step and losses, the match's SPRT, evaluation's
    share of the workers' CPU and how long each queue's oldest job has waited."""
    labels = ["game"]
    phase = GaugeMetricFamily(
        "conclave_phase", "1 for the loop's current phase", labels=["game", "phase"]
    )
    collected = GaugeMetricFamily(
        "conclave_games_collected", "New games since training", labels=labels
    )
    step = GaugeMetricFamily("conclave_train_step", "Step of the running training", labels=labels)
    loss = GaugeMetricFamily(
        "conclave_train_loss", "Loss of the running training", labels=["game", "head"]
    )
    llr = GaugeMetricFamily("conclave_match_llr", "The promotion match's SPRT LLR", labels=labels)
    match_games = GaugeMetricFamily("conclave_match_games", "Match games played", labels=labels)
    share = GaugeMetricFamily(
        "conclave_evaluation_share",
        "Evaluation CPU over all workers' CPU (recent window)",
        labels=labels,
    )
    age = GaugeMetricFamily(
        "conclave_queue_age_seconds", "Age of a queue's oldest job", labels=["game", "queue"]
    )
    for g in report.games:
        if g.evaluation_share is not None:
            share.add_metric([g.game], g.evaluation_share)
        for queue, seconds in g.queue_age_s.items():
            age.add_metric([g.game, queue], seconds or 0.0)
        if g.phase is None:
            continue
        phase.add_metric([g.game, g.phase.now], 1)
        collected.add_metric([g.game], g.phase.games)
        if g.phase.training is not None:
            step.add_metric([g.game], g.phase.training.step)
            for head, value in (
                ("policy", g.phase.training.policy_loss),
                ("value", g.phase.training.value_loss),
            ):
                if value is not None:
                    loss.add_metric([g.game, head], value)
        if g.phase.match is not None:
            llr.add_metric([g.game], g.phase.match.llr)
            match_games.add_metric([g.game], g.phase.match.games)
    yield from (phase, collected, step, loss, llr, match_games, share, age)


def _allocation_families(report: StatusReport) -> Iterator[Metric]:
    """Self-play's share per game: the target the scheduler allocates and the actual share of
    the recent games, and the factors of the target's priority (shared.loop.allocation)."""
    share = GaugeMetricFamily(
        "conclave_selfplay_share",
        "Self-play's share per game: target (allocated) or actual (recent games)",
        labels=["game", "kind"],
    )
    factor = GaugeMetricFamily(
        "conclave_selfplay_factor",
        "A factor of self-play's priority per game: weight, learning or staleness",
        labels=["game", "factor"],
    )
    for g in report.games:
        a = g.selfplay
        if a is None:
            continue
        share.add_metric([g.game, "target"], a.target)
        if a.actual is not None:
            share.add_metric([g.game, "actual"], a.actual)
        for name, value in (
            ("weight", a.weight),
            ("learning", a.learning),
            ("staleness", a.staleness),
        ):
            factor.add_metric([g.game, name], value)
    yield from (share, factor)


def _archive_families(report: StatusReport) -> Iterator[Metric]:
    if report.archive is None:
        return
    lag = GaugeMetricFamily("conclave_archive_lag_games", "Games not yet archived")
    lag.add_metric([], report.archive.games_not_archived)
    yield lag


class BusCollector(Collector):
    """Collects by asking the service's event loop for a status snapshot (scrapes run in the
    HTTP server's thread)."""

    def __init__(self, bus: Bus, loop: asyncio.AbstractEventLoop) -> None:
        self.bus, self.loop = bus, loop

    def collect(self) -> Iterator[Metric]:
        future = asyncio.run_coroutine_threadsafe(gather(self.bus), self.loop)
        try:
            report = future.result(SCRAPE_TIMEOUT_S)
        except FutureTimeout:
            future.cancel()
            return
        except Exception as e:  # the bus away, or data gather could not read: an empty scrape
            log.warning("scrape failed: %r", e)
            return
        yield from families(report)


async def metrics_main(cfg: BusConfig, port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics on host:port until Ctrl-C or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bus = await NatsBus.connect(cfg)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BusCollector(bus, loop))
    server, thread = start_http_server(port, addr=host, registry=registry)
    print(f"metrics on http://{host}:{server.server_port}/metrics", flush=True)
    try:
        await stop.wait()
    finally:
        server.shutdown()
        server.server_close()  # shutdown() only stops serving; this closes the socket
        thread.join(5)
        await bus.close()
    return 0
