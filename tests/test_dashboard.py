"""The dashboard in a real browser: a local cluster trains, headless Chromium loads the page, the
nodes table lists the live node and the Elo chart has points; the screenshot is kept. Then
`conclave report` draws the same run's charts as PNG files. A quick one: seeded node statuses,
the nodes table shows each node's device, tier, memory, self-test and speed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from schemas import names
from schemas.codec import encode
from shared.bus.ports import Bus
from shared.bus.server import free_port
from shared.cli.dashboard import Dashboard, bound_port, snapshot
from tests.conftest import Processes, eventually
from tests.test_status import BROKEN, H100, broken_node, gpu_node, seed_allocation

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CONCLAVE_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test` installs Debian's chromium package")
        pytest.skip("chromium is not installed (Debian's chromium package; `make test` adds it)")
    return found


def browse(browser: str, url: str, *args: str) -> str:
    argv = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1280,1600", "--timeout=15000", *args, url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    return done.stdout


def first_event(url: str) -> dict[str, Any]:
    """The first server-sent event of a stream, decoded."""
    with urllib.request.urlopen(url, timeout=30) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data: {") and len(line) > 10:
                event: dict[str, Any] = json.loads(line[len("data: ") :])
                return event
    raise AssertionError("the event stream ended without an event")


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_dashboard_shows_live_nodes_and_an_elo_chart(
    processes: Processes, tmp_path: Path
) -> None:
    browser = chromium()
    port, web = free_port(), free_port()
    data = tmp_path / "data"
    up = [
        sys.executable, "-m", "shared.cli.main", "up", "--game", "tictactoe",
        "--data-dir", str(data), "--nats-port", str(port),
    ]  # fmt: skip
    out = tmp_path / "up.out"
    processes.spawn(up, out)
    promoted = re.compile(r"generation [1-9]\d* promoted")
    await eventually(lambda: promoted.search(out.read_text()), 300, what="two promotions")
    board = [
        sys.executable, "-m", "shared.cli.main", "dashboard", "--port", str(web),
        "--nats", f"nats://127.0.0.1:{port}", "--creds", str(data / "auth" / "admin.nk"),
    ]  # fmt: skip
    board_out = tmp_path / "dashboard.out"
    processes.spawn(board, board_out)
    await eventually(lambda: "dashboard on" in board_out.read_text(), 30, what="the dashboard")

    url = f"http://127.0.0.1:{web}/"

    async def rendered() -> str | None:
        dom = await asyncio.to_thread(browse, browser, url, "--dump-dom")
        return dom if 'data-node="local"' in dom else None

    dom = await eventually(rendered, 90, every=1.0, what="the nodes table with node local")
    assert re.search(r'<tr data-node="local">.*?alive', dom, re.S)
    assert len(re.findall(r'<circle class="point"', dom)) >= 2, "Elo chart points"
    assert '<polyline class="step-policy"' in dom, "loss per training step"
    assert re.search(r'<div class="phase">now: (collecting|training|match)', dom), "the phase"
    # Live updates: the page's event stream delivers whole snapshots.
    event = await asyncio.to_thread(first_event, f"{url}events")
    assert [n["id"] for n in event["status"]["nodes"]] == ["local"]

    shot = ARTIFACTS / "dashboard.png"
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(browse, browser, url, f"--screenshot={shot}")
    assert (await asyncio.to_thread(shot.stat)).st_size > 10_000

    # `conclave report` on the same short run: non-empty PNG charts and a summary.
    report = tmp_path / "report"
    made = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "shared.cli.main", "report", "--game", "tictactoe",
            "--out", str(report), "--nats", f"nats://127.0.0.1:{port}",
            "--creds", str(data / "auth" / "admin.nk"),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    for chart in ("elo.png", "losses.png"):
        png = (report / chart).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000, chart
    assert "promoted" in (report / "report.md").read_text()


async def seed_nodes(bus: Bus) -> None:
    """A GPU node whose workers passed their self-test and one whose workers failed it."""
    now = time.time()
    for node in (gpu_node(now), broken_node(now)):
        await bus.write(names.NODES_BUCKET, node.node, encode(node), ttl_s=30)


async def test_the_snapshot_carries_each_nodes_compute_summary(bus: Bus) -> None:
    await seed_nodes(bus)
    data = msgspec.json.decode(msgspec.json.encode(await snapshot(bus)))
    g, x = data["status"]["nodes"]
    assert (g["compute"]["self_test"], g["compute"]["tiers"]) == ("passed", ["gpu", "cpu"])
    assert x["compute"]["failures"] == {"selfplay-0": BROKEN, "evaluator": BROKEN}


async def rendered_nodes(bus: Bus, browser: str, cache: Path) -> str:
    """The page's DOM as headless Chromium renders it from a dashboard served in this process."""
    board, stop = Dashboard(bus, 60.0, cache), asyncio.Event()
    refresh = asyncio.create_task(board.refresh_forever(stop))
    runner = web.AppRunner(board.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        await eventually(lambda: board.latest != b"{}", 30, what="the first snapshot")
        url = f"http://127.0.0.1:{bound_port(runner)}/"
        return await asyncio.to_thread(browse, browser, url, "--dump-dom")
    finally:
        stop.set()  # ends the page's event stream, so the server can stop
        await refresh
        await runner.cleanup()
        board.opponent.close()


@pytest.mark.timeout(120)
async def test_the_nodes_table_shows_device_tier_memory_self_test_and_speed(
    bus: Bus, tmp_path: Path
) -> None:
    browser = chromium()
    await seed_nodes(bus)
    dom = await rendered_nodes(bus, browser, tmp_path / "cache")
    rows = dict(re.findall(r'<tr data-node="(\w+)">(.*?)</tr>', dom, re.S))
    assert f"<td>cpu Xeon, cuda:0 {H100}</td><td>gpu/cpu</td>" in rows["g"]
    assert '<td class="num">2.5 GB / 3.0 GB of 80.0 GB</td>' in rows["g"]
    assert '<td class="self-test ok">ok</td>' in rows["g"]
    assert '<td class="num">4x64 20000, 6x128 17000</td>' in rows["g"]
    assert '<td class="num">600 MB</td>' in rows["x"]  # no VRAM figures: none reported
    failed = f'<td class="self-test bad">failed, no jobs<br>selfplay-0: {BROKEN}<br>evaluator: '
    assert failed in rows["x"]


@pytest.mark.timeout(120)
async def test_each_game_shows_its_self_play_share_target_and_actual(
    bus: Bus, tmp_path: Path
) -> None:
    browser = chromium()
    await seed_allocation(bus)
    dom = await rendered_nodes(bus, browser, tmp_path / "cache")
    shares = dict(
        re.findall(r'data-game="(\w+)">.*?<div class="muted share">(.*?)</div>', dom, re.S)
    )
    assert shares["tictacmo"] == (
        "self-play share: target 67% (weight 2 x learning 1.00 x staleness 1.00), actual 60%"
    )
    assert shares["tictactoe"].startswith("self-play share: target 33%")
    assert "tictacmo self-play share<b>67% target, 60% actual</b>" in dom
