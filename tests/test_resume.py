"""`conclave up` on an existing data directory continues its run: same generation, onwards."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from schemas import names
from schemas.codec import encode
from services.scheduler import STATE_KEY, LoopRecord
from shared.bus.client import BusConfig, NatsBus
from shared.bus.ports import Bus
from shared.bus.server import free_port
from shared.lease.fencing import read_termed
from shared.loop.policy import GameState, LoopState
from shared.node.console import run_summary
from tests.conftest import ROOT, Processes, eventually

# A whole `conclave up` twice over: CPU-heavy, so one at a time with the other heavy tests.
pytestmark = pytest.mark.xdist_group("heavy")

PROMOTED = re.compile(r"tictactoe generation (\d+) promoted")
RESUMING = re.compile(r"resuming tictactoe from generation (\d+) \(")
STEP_S = 300.0  # the most any one step of the run may take on a loaded 2-core machine


class Up:
    """A `conclave up --game tictactoe` process, its output read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, data: Path, port: int) -> Up:
        argv = ["-m", "shared.cli.main", "up", "--game", "tictactoe"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            *("--data-dir", str(data), "--nats-port", str(port)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )
        return cls(proc)

    async def line(self, pattern: re.Pattern[str], timeout: float = STEP_S) -> re.Match[str]:
        """Read lines until one matches `pattern`; fail on exit or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            line = await self._next(deadline - time.monotonic(), pattern)
            if found := pattern.search(line):
                return found

    async def stop(self) -> int:
        """SIGTERM, then read the rest of the output; the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), 120)
        self.lines += rest.decode(errors="replace").splitlines()
        return await asyncio.wait_for(self.proc.wait(), 60)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    def promotions(self) -> list[int]:
        return [int(m.group(1)) for line in self.lines if (m := PROMOTED.search(line))]

    async def _next(self, timeout: float, waiting_for: re.Pattern[str]) -> str:
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), max(timeout, 0.0))
        except TimeoutError:
            raise AssertionError(f"no {waiting_for.pattern!r} in:\n{self.output()}") from None
        if not raw:
            raise AssertionError(f"exited before {waiting_for.pattern!r}:\n{self.output()}")
        self.lines.append(raw.decode(errors="replace").rstrip("\n"))
        return self.lines[-1]

    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_up_on_the_same_data_dir_resumes_at_the_generation_it_stopped(
    processes: Processes, tmp_path: Path
) -> None:
    # `processes` is here for its teardown: it kills anything left running from tmp_path.
    data, port = tmp_path / "data", free_port()
    first = await Up.start(data, port)
    try:
        await first.line(re.compile(r"^new run: tictactoe"))
        bus = await NatsBus.connect(admin_config(data, port))
        try:
            reached = await first.line(re.compile(r"tictactoe generation ([1-9]\d*) promoted"))
            await recorded(bus, int(reached.group(1)))
        finally:
            await bus.close()
        assert await first.stop() == 0
    finally:
        await first.kill()
    stopped_at = max(first.promotions())

    second = await Up.start(data, port)
    try:
        resumed = await second.line(RESUMING)
        assert int(resumed.group(1)) == stopped_at, second.output()
        promoted = await second.line(PROMOTED)
        assert int(promoted.group(1)) == stopped_at + 1, second.output()
        assert await second.stop() == 0
    finally:
        await second.kill()


async def test_the_start_line_tells_a_new_run_from_one_that_resumes(
    bus: Bus, tmp_path: Path
) -> None:
    fresh = await run_summary(bus, "tictactoe", tmp_path)
    assert fresh == f"new run: tictactoe, data dir {tmp_path}"
    first = LoopState({"tictactoe": GameState(trainings=1, training_in_progress=True)})
    await bus.write(
        names.LOOP_BUCKET,
        STATE_KEY,
        encode(LoopRecord(term=1, state=first, updated_at=time.time())),
    )
    early = await run_summary(bus, "tictactoe", tmp_path)
    assert early == f"resuming tictactoe from before generation 0 (0 games, data dir {tmp_path})"
    state = LoopState({"tictactoe": GameState(generation=3, trainings=4)})
    await bus.write(
        names.LOOP_BUCKET,
        STATE_KEY,
        encode(LoopRecord(term=1, state=state, updated_at=time.time())),
    )
    for i in range(2):
        await bus.publish_durable(names.games_subject("tictactoe"), b"g", msg_id=f"g{i}")
    summary = await run_summary(bus, "tictactoe", tmp_path)
    assert summary == f"resuming tictactoe from generation 3 (2 games, data dir {tmp_path})"
    other = await run_summary(bus, "connect4", tmp_path)
    assert other == f"new run: connect4, data dir {tmp_path}"


def admin_config(data: Path, port: int) -> BusConfig:
    seed = str(data / "auth" / "admin.nk")
    return BusConfig([f"nats://127.0.0.1:{port}"], "resume-test", nkey_seed=seed)


async def recorded(bus: Bus, generation: int) -> None:
    """Wait until the loop state holds `generation` (the promotion is recorded, not just told)."""

    async def holds() -> bool:
        record, _ = await read_termed(bus, names.LOOP_BUCKET, STATE_KEY, LoopRecord)
        return record is not None and record.state.game("tictactoe").generation >= generation

    await eventually(holds, STEP_S, every=0.1, what=f"generation {generation} in the loop state")
