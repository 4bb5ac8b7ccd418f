"""Log lines on the bus: a service's line arrives through `conclave logs`; rate limit; rendering."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from shared.bus.ports import Bus
from shared.bus.server import NatsServer
from shared.cli.logs import render
from shared.runtime.buslog import RATE_PER_S, BusLogHandler, levels_from
from shared.runtime.log import JsonFormatter
from tests.conftest import Processes, eventually, process_config


def test_levels_from_a_threshold_upwards() -> None:
    assert levels_from("warning") == ["warning", "error", "critical"]
    with pytest.raises(ValueError, match="level"):
        levels_from("loud")


def test_a_line_renders_with_its_node_service_and_extras() -> None:
    line = (
        b'{"t":0,"level":"info","logger":"x","msg":"hello","node":"n1","service":"leader","term":3}'
    )
    text = render(line)
    assert "n1/leader" in text and "INFO" in text and "hello" in text and "term=3" in text
    assert render(b"not json") == "not json"


def test_the_handler_drops_what_the_rate_forbids_and_counts_it() -> None:
    handler = BusLogHandler("n1", "s", JsonFormatter())
    record = logging.LogRecord("conclave.x", logging.INFO, __file__, 1, "m", None, None)
    for _ in range(int(RATE_PER_S) * 3):
        handler.emit(record)
    assert len(handler.queue) <= RATE_PER_S + 2 and handler.dropped >= RATE_PER_S
    assert handler.queue[0][0] == "logs.n1.s.info"


async def test_a_service_log_line_arrives_through_conclave_logs(
    nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path
) -> None:
    out = tmp_path / "logs.out"
    argv = [
        sys.executable, "-m", "shared.cli.main", "logs", "--follow", "--node", "n1",
        "--service", "leader", "--nats", nats_server.url,
    ]  # fmt: skip
    processes.spawn(argv, out)
    await eventually(lambda: "# listening" in out.read_text(), 20, what="conclave logs listening")
    config = {"node_id": "n1", "lease": {"ttl_s": 3, "renew_every_s": 1.0}}
    processes.service("services.leader", process_config(nats_server.url, "n1", "leader"), config)
    await eventually(lambda: "leader elected" in out.read_text(), 30, what="a log line via the bus")
    assert "n1/leader" in out.read_text()
