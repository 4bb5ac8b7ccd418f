"""`conclave dashboard --port P`: a live web page of the cluster, served from the bus alone.

GET / is one self-contained page (services/dashboard.html: no build step, nothing fetched from
the internet); GET /api/snapshot is the current snapshot as JSON; GET /events streams a snapshot
every `every_s` seconds as server-sent events. A snapshot is `conclave status` plus, per game, the
Elo of every generation and baseline with its interval, every promotion decision with its SPRT
trace, and training losses; and the leader's term history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

import msgspec

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import LeaderEvent
from schemas.jobs import ModelEvent, ModelMeta
from services.status import gather
from shared.bus import Bus, BusConfig, BusError
from shared.ratingjobs import game_ratings

log = logging.getLogger("conclave.dashboard")
PAGE = Path(__file__).with_name("dashboard.html")


class EloPoint(msgspec.Struct, frozen=True):
    name: str
    generation: int | None  # None for a baseline
    elo: float
    lo: float
    hi: float
    games: int


class Decision(msgspec.Struct, frozen=True):
    generation: int
    kind: str
    at: float
    detail: str


class Losses(msgspec.Struct, frozen=True):
    generation: int
    policy: float | None
    value: float | None
    at: float


class GameHistory(msgspec.Struct, frozen=True):
    elo: list[EloPoint]
    decisions: list[Decision]
    losses: list[Losses]


class Snapshot(msgspec.Struct, frozen=True):
    at: float
    status: Any
    leader_history: list[LeaderEvent]
    games: dict[str, GameHistory]


def generation_of(name: str) -> int | None:
    return int(name[3:]) if name.startswith("gen") and name[3:].isdigit() else None


async def elo_points(bus: Bus, game: str) -> list[EloPoint]:
    ratings, _ = await game_ratings(bus, game)
    points = [
        EloPoint(name, generation_of(name), r.elo, r.lo, r.hi, r.games)
        for name, r in ratings.items()
        if r.connected
    ]
    return sorted(points, key=lambda p: (p.generation is None, p.generation or 0, p.name))


async def model_events(bus: Bus) -> list[ModelEvent]:
    msgs = await bus.read_all(names.EVENTS_STREAM, names.model_event_subject("*"))
    return [decode(m.data, ModelEvent) for m in msgs]


async def losses(bus: Bus) -> dict[str, list[Losses]]:
    found: dict[str, list[Losses]] = {}
    for key, entry in (await bus.snapshot(names.REGISTRY_BUCKET)).items():
        if ".model." not in key or entry.value is None:
            continue
        with contextlib.suppress(BadMessage):
            meta = decode(entry.value, ModelMeta)
            found.setdefault(meta.game, []).append(
                Losses(meta.generation, meta.policy_loss, meta.value_loss, meta.created_at)
            )
    return {game: sorted(points, key=lambda p: p.at) for game, points in found.items()}


async def snapshot(bus: Bus) -> Snapshot:
    """Everything the page shows, read from the bus now."""
    report = await gather(bus)
    events = await model_events(bus)
    trained = await losses(bus)
    games: dict[str, GameHistory] = {}
    for game in sorted({g.game for g in report.games} | {e.game for e in events}):
        decisions = [
            Decision(e.generation, e.kind, e.at, e.detail)
            for e in events
            if e.game == game and e.kind in ("promoted", "rejected")
        ]
        games[game] = GameHistory(await elo_points(bus, game), decisions, trained.get(game, []))
    leader = await bus.read_all(names.EVENTS_STREAM, names.leader_event_subject("*"))
    history = [decode(m.data, LeaderEvent) for m in leader][-200:]
    return Snapshot(report.at, msgspec.to_builtins(report), history, games)


class Dashboard:
    """Keeps the latest snapshot and serves it; one refresh loop shared by every viewer."""

    def __init__(self, bus: Bus, every_s: float) -> None:
        self.bus, self.every_s = bus, every_s
        self.latest = b"{}"
        self.changed = asyncio.Condition()

    async def refresh_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                data = msgspec.json.encode(await snapshot(self.bus))
            except (BusError, BadMessage) as e:
                log.warning("snapshot failed: %s", e)
            else:
                async with self.changed:
                    self.latest = data
                    self.changed.notify_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1].decode(errors="replace") if b" " in request else "/"
            if path.startswith("/events"):
                await self.stream(writer)
            elif path.startswith("/api/snapshot"):
                await respond(writer, "200 OK", "application/json", self.latest)
            elif path in ("/", "/index.html"):
                await respond(writer, "200 OK", "text/html; charset=utf-8", self.page())
            else:
                await respond(writer, "404 Not Found", "text/plain", b"not found\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def page(self) -> bytes:
        """The page with the latest snapshot inlined (`</` escaped: it sits in a script)."""
        inline = self.latest.replace(b"</", b"<\\/")
        return PAGE.read_bytes().replace(b"/*SNAPSHOT*/null", inline, 1)

    async def stream(self, writer: asyncio.StreamWriter) -> None:
        head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        writer.write((head + "Connection: keep-alive\r\n\r\n").encode())
        data = self.latest
        while True:
            writer.write(b"data: " + data + b"\n\n")
            await writer.drain()
            async with self.changed:
                await self.changed.wait()
                data = self.latest


async def respond(writer: asyncio.StreamWriter, status: str, kind: str, body: bytes) -> None:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
    writer.write((head + "Connection: close\r\n\r\n").encode() + body)
    await writer.drain()


async def dashboard_main(cfg: BusConfig, port: int, host: str, every_s: float = 2.0) -> int:
    """Serve the page until Ctrl-C or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bus = await Bus.connect(cfg)
    board = Dashboard(bus, every_s)
    server = await asyncio.start_server(board.handle, host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"dashboard on http://{host}:{bound}/", flush=True)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(board.refresh_forever(stop), name="refresh")
            await stop.wait()
            server.close()
    finally:
        await bus.close()
    return 0
