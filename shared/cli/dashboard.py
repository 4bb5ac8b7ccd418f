"""`conclave dashboard --port P`: a live web page of the cluster, served from the bus alone.

GET / is one self-contained page (shared/cli/dashboard.html: no build step, nothing fetched from
the internet); GET /api/snapshot is the current snapshot as JSON; GET /events streams a snapshot
every `every_s` seconds as server-sent events. A snapshot is `conclave status` plus, per game, the
Elo of every generation and baseline with its interval, every promotion decision with its SPRT
trace, and training losses; and the leader's term history.

POST /api/play plays the cluster's best model: given a game, the human's side and the moves so
far, the model answers if it is to move (searched in a worker thread, like an evaluation match),
and the reply carries the board, the clickable moves and the result once the game is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import numpy as np

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import LeaderEvent
from schemas.jobs import ModelEvent, ModelMeta, TrainProgress
from shared.bus.client import Bus, BusConfig, BusError
from shared.bus.message import Message
from shared.cli import play as play_cli
from shared.cli.play import BadMove, NoBestModel, Side
from shared.cli.status import gather
from shared.learn.evaltypes import Evaluator
from shared.learn.games import Game, game_names, get_game
from shared.loop.progress import train_history
from shared.loop.ratingjobs import game_ratings
from shared.work.modelcache import Evaluators
from shared.work.models import ModelStore

log = logging.getLogger("conclave.dashboard")
PAGE = Path(__file__).with_name("dashboard.html")
MAX_BODY_BYTES = 16 * 1024
M = TypeVar("M", LeaderEvent, ModelEvent)


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


class StepLoss(msgspec.Struct, frozen=True):
    """A training progress report: losses at `step` of generation `generation`'s training,
    `at_step` counting every step of every training before it."""

    generation: int
    step: int
    at_step: int
    policy: float | None
    value: float | None


class GameHistory(msgspec.Struct, frozen=True):
    elo: list[EloPoint]
    decisions: list[Decision]
    losses: list[Losses]
    steps: list[StepLoss] = []


STEP_POINTS = 2000  # the newest progress reports drawn


def step_losses(reports: list[TrainProgress]) -> list[StepLoss]:
    """Loss per step across trainings, each job's steps after the previous jobs' (pure)."""
    points: list[StepLoss] = []
    offset, last_job, last_step = 0, "", 0
    for r in reports:
        if r.job_id != last_job:
            offset, last_job = offset + last_step, r.job_id
        last_step = r.step
        points.append(StepLoss(r.generation, r.step, offset + r.step, r.policy_loss, r.value_loss))
    return points[-STEP_POINTS:]


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


class Unreadable:
    """What the page leaves out because it does not decode: logged once per stream sequence or
    key (a snapshot re-reads everything every few seconds), at most LIMIT remembered."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def skip(self, where: str, error: Exception) -> None:
        if where in self.seen:
            return
        if len(self.seen) >= self.LIMIT:
            self.seen.clear()
        self.seen.add(where)
        log.warning("skipped unreadable %s: %r", where, error)


unreadable = Unreadable()


def decoded_stream(msgs: list[Message], kind: type[M]) -> list[M]:
    """The messages that decode as `kind`; the others are skipped (logged once each)."""
    found = []
    for m in msgs:
        try:
            found.append(decode(m.data, kind, subject=m.subject))
        except Exception as e:  # BadMessage or anything else: unreadable all the same
            unreadable.skip(f"{m.subject} #{m.seq}", e)
    return found


async def model_events(bus: Bus) -> list[ModelEvent]:
    """Model events of known games (a game name also names subjects and page sections)."""
    msgs = await bus.read_all(names.EVENTS_STREAM, names.model_event_subject("*"))
    known = set(game_names())
    return [e for e in decoded_stream(msgs, ModelEvent) if e.game in known]


async def losses(bus: Bus) -> dict[str, list[Losses]]:
    found: dict[str, list[Losses]] = {}
    for key, entry in (await bus.snapshot(names.REGISTRY_BUCKET)).items():
        if ".model." not in key or entry.value is None:
            continue
        try:
            meta = decode(entry.value, ModelMeta, subject=key)
        except Exception as e:
            unreadable.skip(f"registry/{key}", e)
            continue
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
        try:
            games[game] = await game_history(bus, game, events, trained.get(game, []))
        except BusError:
            raise
        except Exception as e:  # one game's unreadable data leaves the others on the page
            unreadable.skip(f"history of {game[:80]!r}", e)
    leader = await bus.read_all(names.EVENTS_STREAM, names.leader_event_subject("*"))
    history = decoded_stream(leader, LeaderEvent)[-200:]
    return Snapshot(report.at, msgspec.to_builtins(report), history, games)


async def game_history(
    bus: Bus, game: str, events: list[ModelEvent], trained: list[Losses]
) -> GameHistory:
    decisions = [
        Decision(e.generation, e.kind, e.at, e.detail)
        for e in events
        if e.game == game and e.kind in ("promoted", "rejected")
    ]
    steps = step_losses(await train_history(bus, game))
    return GameHistory(await elo_points(bus, game), decisions, trained, steps)


class HttpError(Exception):
    """A request answered with an error status and a JSON `{"error": message}` body."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class PlayRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    game: str
    moves: list[int]  # action indices from the initial position
    human: Side = "first"


class PlayView(msgspec.Struct, frozen=True):
    """A position of a game against the model, as the page draws it."""

    game: str
    model: str
    human: Side
    moves: list[int]
    reply: int | None  # the model's move in this answer, if it made one
    reply_name: str | None
    cells: list[list[int | None]]  # 0 first player, 1 second, None empty; row 0 at the top
    targets: list[list[int | None]]  # the move a click on each cell plays; None: not playable
    columns: list[str]  # the column names under the board when moves are columns
    over: bool
    result: play_cli.Outcome | None


def parse_play(body: bytes) -> tuple[Game[Any], PlayRequest]:
    """The request's game and fields; HttpError 400 naming the field at fault."""
    try:
        request = msgspec.json.decode(body, type=PlayRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise HttpError("400 Bad Request", f"bad request: {e}") from None
    if request.game not in game_names():
        known = ", ".join(game_names())
        raise HttpError("400 Bad Request", f"game: unknown game {request.game!r}; known: {known}")
    return get_game(request.game), request


def play_view(
    game: Game[Any], state: Any, request: PlayRequest, model: str, reply: int | None
) -> PlayView:
    human = play_cli.side_index(request.human)
    result = play_cli.outcome(game, state, human)
    legal = game.legal_mask(state)
    playable = result is None and game.to_play(state) == human
    grid = play_cli.action_grid(game)
    return PlayView(
        game=game.name,
        model=model,
        human=request.human,
        moves=[*request.moves, *([] if reply is None else [reply])],
        reply=reply,
        reply_name=None if reply is None else game.action_name(reply),
        cells=play_cli.board_cells(game, state),
        targets=[[a if playable and legal[a] else None for a in row] for row in grid],
        columns=[game.action_name(a) for a in grid[0]] if play_cli.plays_columns(game) else [],
        over=result is not None,
        result=result,
    )


class Opponent:
    """The cluster's best model of each game, loaded from the verified model cache and searched
    in a worker thread, never on the event loop."""

    def __init__(self, bus: Bus, cache_dir: Path) -> None:
        self.bus = bus
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="play")
        self.evaluators = Evaluators(ModelStore(bus, cache_dir), self.pool, threads=1)

    async def answer(self, body: bytes) -> bytes:
        """The JSON view after the model's reply; HttpError for bad input or no model."""
        game, request = parse_play(body)
        try:
            state = play_cli.replay(game, request.moves)
            best = await play_cli.best_pointer(self.bus, game.name)
        except BadMove as e:
            raise HttpError("400 Bad Request", str(e)) from None
        except NoBestModel as e:
            raise HttpError("404 Not Found", str(e)) from None
        human = play_cli.side_index(request.human)
        reply = None
        if play_cli.outcome(game, state, human) is None and game.to_play(state) != human:
            reply = await self.reply(game, state, best.sha256)
            state = game.apply(state, reply)
        model = f"gen{best.generation}"
        return msgspec.json.encode(play_view(game, state, request, model, reply))

    async def reply(self, game: Game[Any], state: Any, sha256: str) -> int:
        evaluator = await self.evaluators.get(game, sha256)
        sims = play_cli.default_sims(game.name)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, search, game, state, evaluator, sims)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def search(game: Game[Any], state: Any, evaluator: Evaluator, sims: int) -> int:
    """The evaluation search's move (deterministic: no Gumbel noise)."""
    from shared.learn.search.agent import SearchAgent  # torch loads here, in the worker thread

    agent = SearchAgent("best", evaluator, sims)
    return agent.choose(game, state, np.random.default_rng(0))


def request_line(head: bytes) -> tuple[str, str]:
    """The method and the path (without a query) of a request's head."""
    parts = head.split(b"\r\n", 1)[0].decode(errors="replace").split(" ")
    if len(parts) < 2:
        return "GET", "/"
    return parts[0].upper(), parts[1].split("?", 1)[0]


def content_length(head: bytes) -> int:
    """The body's announced length; HttpError when missing, unreadable or too large."""
    for line in head.decode(errors="replace").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                raise HttpError("400 Bad Request", f"Content-Length: not a number: {value!r}")
            length = int(value)
            if length > MAX_BODY_BYTES:
                raise HttpError("413 Content Too Large", f"body: over {MAX_BODY_BYTES} bytes")
            return length
    raise HttpError("411 Length Required", "Content-Length: required")


class Dashboard:
    """Keeps the latest snapshot and serves it; one refresh loop shared by every viewer."""

    def __init__(self, bus: Bus, every_s: float, cache_dir: Path) -> None:
        self.bus, self.every_s = bus, every_s
        self.latest = b"{}"
        self.changed = asyncio.Condition()
        self.opponent = Opponent(bus, cache_dir)

    async def refresh_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                data = msgspec.json.encode(await snapshot(self.bus))
            except Exception as e:  # the page keeps the last snapshot; the server goes on
                log.warning("snapshot failed: %r", e)
            else:
                async with self.changed:
                    self.latest = data
                    self.changed.notify_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await self.route(head, reader, writer)
        except HttpError as e:
            await respond(writer, e.status, "application/json", error_body(str(e)))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def route(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        method, path = request_line(head)
        if path == "/api/play":
            if method != "POST":
                raise HttpError("405 Method Not Allowed", "/api/play: use POST")
            body = await reader.readexactly(content_length(head))
            await respond(writer, "200 OK", "application/json", await self.play(body))
        elif path.startswith("/events"):
            await self.stream(writer)
        elif path.startswith("/api/snapshot"):
            await respond(writer, "200 OK", "application/json", self.latest)
        elif path in ("/", "/index.html"):
            await respond(writer, "200 OK", "text/html; charset=utf-8", self.page())
        else:
            await respond(writer, "404 Not Found", "text/plain", b"not found\n")

    async def play(self, body: bytes) -> bytes:
        try:
            return await self.opponent.answer(body)
        except (BusError, BadMessage, ValueError) as e:  # ValueError: an unusable checkpoint
            log.warning("play failed: %s", e)
            raise HttpError("503 Service Unavailable", f"the model cannot play now: {e}") from e

    def page(self) -> bytes:
        """The page with the latest snapshot and the game names inlined (`</` escaped: they sit
        in a script)."""
        inline = self.latest.replace(b"</", b"<\\/")
        games = msgspec.json.encode(game_names())
        page = PAGE.read_bytes().replace(b"/*SNAPSHOT*/null", inline, 1)
        return page.replace(b"/*GAMES*/[]", games, 1)

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


def error_body(message: str) -> bytes:
    return msgspec.json.encode({"error": message})


async def respond(writer: asyncio.StreamWriter, status: str, kind: str, body: bytes) -> None:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
    writer.write((head + "Connection: close\r\n\r\n").encode() + body)
    await writer.drain()


async def dashboard_main(cfg: BusConfig, port: int, host: str, every_s: float = 2.0) -> int:
    """Serve the page until Ctrl-C or SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="conclave-dashboard-") as cache:
        return await serve(cfg, port, host, every_s, Path(cache))


async def serve(cfg: BusConfig, port: int, host: str, every_s: float, cache_dir: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bus = await Bus.connect(cfg)
    board = Dashboard(bus, every_s, cache_dir)
    server = await asyncio.start_server(board.handle, host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"dashboard on http://{host}:{bound}/", flush=True)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(board.refresh_forever(stop), name="refresh")
            await stop.wait()
            server.close()
    finally:
        board.opponent.close()
        await bus.close()
    return 0
