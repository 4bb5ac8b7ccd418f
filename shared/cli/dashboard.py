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
from aiohttp import web
from aiohttp.typedefs import Handler

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import LeaderEvent
from schemas.jobs import ModelEvent, ModelMeta, TrainProgress
from shared.bus.client import BusConfig, NatsBus
from shared.bus.errors import BusError
from shared.bus.message import Message
from shared.bus.ports import Bus
from shared.cli import play as play_cli
from shared.cli.play import BadMove, NoBestModel, Side
from shared.cli.status import gather
from shared.learn.evaltypes import Evaluator
from shared.learn.games import Game, game_names, get_game, two_player_games
from shared.loop.progress import train_history
from shared.loop.ratingjobs import game_ratings
from shared.runtime.once import Warn, WarnOnce
from shared.work.modelcache import Evaluators
from shared.work.models import ModelStore

log = logging.getLogger("conclave.dashboard")
PAGE = Path(__file__).with_name("dashboard.html")
MAX_BODY_BYTES = 16 * 1024
SHUTDOWN_S = 5.0  # open requests (a search in progress) get this long once the server stops
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


async def elo_points(bus: Bus, game: str, warn: Warn | None = None) -> list[EloPoint]:
    ratings, _ = await game_ratings(bus, game, warn)
    points = [
        EloPoint(name, generation_of(name), r.elo, r.lo, r.hi, r.games)
        for name, r in ratings.items()
        if r.connected
    ]
    return sorted(points, key=lambda p: (p.generation is None, p.generation or 0, p.name))


class Unreadable:
    """What the page leaves out because it does not decode (or a rating fit drops): logged once
    each, as a snapshot re-reads everything every few seconds."""

    def __init__(self) -> None:
        self.warn = WarnOnce(log)

    def skip(self, where: str, error: Exception) -> None:
        self.warn(f"skipped unreadable {where}: {error!r}")


def decoded_stream(msgs: list[Message], kind: type[M], skipped: Unreadable) -> list[M]:
    """The messages that decode as `kind`; the others are skipped (logged once each)."""
    found = []
    for m in msgs:
        try:
            found.append(decode(m.data, kind, subject=m.subject))
        except Exception as e:  # BadMessage or anything else: unreadable all the same
            skipped.skip(f"{m.subject} #{m.seq}", e)
    return found


async def model_events(bus: Bus, skipped: Unreadable) -> list[ModelEvent]:
    """Model events of known games (a game name also names subjects and page sections)."""
    msgs = await bus.read_all(names.EVENTS_STREAM, names.model_event_subject("*"))
    known = set(game_names())
    return [e for e in decoded_stream(msgs, ModelEvent, skipped) if e.game in known]


async def losses(bus: Bus, skipped: Unreadable) -> dict[str, list[Losses]]:
    found: dict[str, list[Losses]] = {}
    for key, entry in (await bus.snapshot(names.REGISTRY_BUCKET)).items():
        if not names.is_model_key(key) or entry.value is None:
            continue
        try:
            meta = decode(entry.value, ModelMeta, subject=key)
        except Exception as e:
            skipped.skip(f"registry/{key}", e)
            continue
        found.setdefault(meta.game, []).append(
            Losses(meta.generation, meta.policy_loss, meta.value_loss, meta.created_at)
        )
    return {game: sorted(points, key=lambda p: p.at) for game, points in found.items()}


async def snapshot(bus: Bus, skipped: Unreadable | None = None) -> Snapshot:
    """Everything the page shows, read from the bus now; what does not decode is left out and
    logged once by `skipped` (a caller reading again and again keeps one)."""
    skipped = Unreadable() if skipped is None else skipped
    report = await gather(bus)
    events = await model_events(bus, skipped)
    trained = await losses(bus, skipped)
    games: dict[str, GameHistory] = {}
    for game in sorted({g.game for g in report.games} | {e.game for e in events}):
        try:
            played = trained.get(game, [])
            games[game] = await game_history(bus, game, events, played, skipped.warn)
        except BusError:
            raise
        except Exception as e:  # one game's unreadable data leaves the others on the page
            skipped.skip(f"history of {game[:80]!r}", e)
    leader = await bus.read_all(names.EVENTS_STREAM, names.leader_event_subject("*"))
    history = decoded_stream(leader, LeaderEvent, skipped)[-200:]
    return Snapshot(report.at, msgspec.to_builtins(report), history, games)


async def game_history(
    bus: Bus, game: str, events: list[ModelEvent], trained: list[Losses], warn: Warn
) -> GameHistory:
    decisions = [
        Decision(e.generation, e.kind, e.at, e.detail)
        for e in events
        if e.game == game and e.kind in ("promoted", "rejected")
    ]
    steps = step_losses(await train_history(bus, game))
    return GameHistory(await elo_points(bus, game, warn), decisions, trained, steps)


class HttpError(Exception):
    """A request answered with an error status and a JSON `{"error": message}` body."""

    def __init__(self, status: int, message: str) -> None:
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
        raise HttpError(400, f"bad request: {e}") from None
    if request.game not in two_player_games():
        known = ", ".join(two_player_games())
        raise HttpError(400, f"game: unknown game {request.game!r}; known: {known}")
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
            raise HttpError(400, str(e)) from None
        except NoBestModel as e:
            raise HttpError(404, str(e)) from None
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


def check_length(request: web.Request) -> None:
    """HttpError unless the request announces a body length within MAX_BODY_BYTES."""
    length = request.content_length
    if length is None:
        raise HttpError(411, "Content-Length: required")
    if length > MAX_BODY_BYTES:
        raise HttpError(413, f"body: over {MAX_BODY_BYTES} bytes")


class Dashboard:
    """Keeps the latest snapshot and serves it; one refresh loop shared by every viewer."""

    def __init__(self, bus: Bus, every_s: float, cache_dir: Path) -> None:
        self.bus, self.every_s = bus, every_s
        self.latest = b"{}"
        self.changed = asyncio.Condition()
        self.stopping = asyncio.Event()
        self.skipped = Unreadable()
        self.opponent = Opponent(bus, cache_dir)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
        app.router.add_get("/", self.page_route)
        app.router.add_get("/index.html", self.page_route)
        app.router.add_get("/api/snapshot", self.snapshot_route)
        app.router.add_get("/events", self.stream)
        app.router.add_route("*", "/api/play", self.play_route)
        return app

    async def refresh_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                data = msgspec.json.encode(await snapshot(self.bus, self.skipped))
            except Exception as e:  # the page keeps the last snapshot; the server goes on
                log.warning("snapshot failed: %r", e)
            else:
                async with self.changed:
                    self.latest = data
                    self.changed.notify_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
        self.stopping.set()
        async with self.changed:
            self.changed.notify_all()  # open event streams end

    async def page_route(self, _: web.Request) -> web.Response:
        return web.Response(body=self.page(), content_type="text/html", charset="utf-8")

    async def snapshot_route(self, _: web.Request) -> web.Response:
        return json_response(self.latest)

    async def play_route(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            raise HttpError(405, "/api/play: use POST")
        check_length(request)
        return json_response(await self.play(await request.read()))

    async def play(self, body: bytes) -> bytes:
        try:
            return await self.opponent.answer(body)
        except (BusError, BadMessage, ValueError) as e:  # ValueError: an unusable checkpoint
            log.warning("play failed: %s", e)
            raise HttpError(503, f"the model cannot play now: {e}") from e

    def page(self) -> bytes:
        """The page with the latest snapshot and the game names inlined (`</` escaped: they sit
        in a script)."""
        inline = self.latest.replace(b"</", b"<\\/")
        games = msgspec.json.encode(two_player_games())
        page = PAGE.read_bytes().replace(b"/*SNAPSHOT*/null", inline, 1)
        return page.replace(b"/*GAMES*/[]", games, 1)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the latest snapshot, then each new one, until the viewer leaves
        or the server stops."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        data = self.latest
        with contextlib.suppress(ConnectionError):  # the viewer left
            while True:
                await response.write(b"data: " + data + b"\n\n")
                async with self.changed:
                    if self.stopping.is_set():
                        break
                    await self.changed.wait()
                    data = self.latest
        return response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An HttpError as its status with a JSON `{"error": message}` body."""
    try:
        return await handler(request)
    except HttpError as e:
        return json_response(error_body(str(e)), e.status)


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def error_body(message: str) -> bytes:
    return msgspec.json.encode({"error": message})


async def dashboard_main(cfg: BusConfig, port: int, host: str, every_s: float = 2.0) -> int:
    """Serve the page until Ctrl-C or SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="conclave-dashboard-") as cache:
        return await serve(cfg, port, host, every_s, Path(cache))


async def serve(cfg: BusConfig, port: int, host: str, every_s: float, cache_dir: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bus = await NatsBus.connect(cfg)
    board = Dashboard(bus, every_s, cache_dir)
    runner = web.AppRunner(board.app(), access_log=None, shutdown_timeout=SHUTDOWN_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"dashboard on http://{host}:{bound_port(runner)}/", flush=True)
        await board.refresh_forever(stop)
    finally:
        await runner.cleanup()
        board.opponent.close()
        await bus.close()
    return 0


def bound_port(runner: web.AppRunner) -> int:
    """The port the server listens on (the one asked for, or the system's pick for 0)."""
    port: int = runner.addresses[0][1]
    return port
