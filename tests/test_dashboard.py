"""The dashboard in a real browser: a local cluster trains, headless Chromium loads the page, the
nodes table lists the live node and the Elo chart has points; the screenshot is kept. Then
`conclave report` draws the same run's charts as PNG files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from shared.bus.server import free_port
from tests.conftest import Processes, eventually

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
