"""Playing the best model: the board and move parsing (pure), `conclave play` in the terminal
(scripted stdin, a local checkpoint or the cluster's best), and the dashboard's board through
its JSON endpoint and in headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import io
import json
import os
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas import names
from schemas.codec import encode
from schemas.jobs import BestPointer
from shared.bus.ports import Bus
from shared.bus.server import NatsServer, free_port
from shared.cli.main import build_parser
from shared.cli.play import (
    BadMove,
    board_cells,
    outcome,
    parse_move,
    play,
    play_main,
    render,
    replay,
)
from shared.learn.games import Game, get_game
from shared.work.models import ModelStore
from tests.conftest import Processes, eventually
from tests.test_dashboard import ARTIFACTS, chromium

TTT = get_game("tictactoe")
C4 = get_game("connect4")


# -- the pure parts ---------------------------------------------------------------------------


def test_tictactoe_board_shows_stones_and_the_free_cells_numbers() -> None:
    assert render(TTT, TTT.parse("15")) == "X 2 3\n4 O 6\n7 8 9\n"
    assert render(TTT, TTT.initial()) == "1 2 3\n4 5 6\n7 8 9\n"


def test_connect4_board_drops_stones_and_names_the_columns() -> None:
    text = render(C4, C4.parse("4437"))
    assert text.splitlines()[-3:] == [". . . O . . .", ". . X X . . O", "1 2 3 4 5 6 7"]
    assert len(text.splitlines()) == 7


def test_cells_name_the_player_whoever_is_to_move() -> None:
    after_one, after_two = (
        board_cells(TTT, TTT.parse("1")),
        board_cells(TTT, TTT.parse("12")),
    )
    assert after_one[0] == [0, None, None]
    assert after_two[0] == [0, 1, None]


def test_a_typed_move_is_the_action_it_names() -> None:
    assert parse_move(TTT, TTT.parse("5"), " 9\n") == 8
    assert parse_move(C4, C4.initial(), "4") == 3


@pytest.mark.parametrize(
    ("game", "moves", "text", "message"),
    [
        (TTT, "", "\n", "no move typed: type a cell (1 2 3 4 5 6 7 8 9)"),
        (TTT, "5", "x", "'x' is not a cell of tictactoe: type one of 1 2 3 4 6 7 8 9"),
        (TTT, "", "10", "'10' is not a cell of tictactoe"),
        (TTT, "", "0", "'0' is not a cell of tictactoe"),
        (TTT, "51", "5", "cell 5 is not playable now: type one of 2 3 4 6 7 8 9"),
        (C4, "444444", "4", "column 4 is not playable now: type one of 1 2 3 5 6 7"),
        (C4, "", "four", "'four' is not a column of connect4"),
    ],
)
def test_bad_typed_moves_say_what_is_legal(
    game: Game[Any], moves: str, text: str, message: str
) -> None:
    with pytest.raises(BadMove, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_move(game, game.parse(moves), text)


def test_replay_names_the_first_bad_entry() -> None:
    assert TTT.notation(replay(TTT, [4, 0, 8])) == "519"
    with pytest.raises(BadMove, match=r"^moves\[1\]: cell 5 is occupied"):
        replay(TTT, [4, 4])
    with pytest.raises(BadMove, match=r"^moves\[0\]: 9 is out of range 0..8"):
        replay(TTT, [9])
    with pytest.raises(BadMove, match=r"^moves\[5\]: the game is over"):
        replay(TTT, [0, 3, 1, 4, 2, 5])


def test_outcome_is_from_the_humans_side() -> None:
    first_won = TTT.parse("14253")
    assert outcome(TTT, first_won, human=0) == "you win"
    assert outcome(TTT, first_won, human=1) == "model wins"
    assert outcome(TTT, TTT.parse("159374682"), human=1) == "draw"
    assert outcome(TTT, TTT.parse("1425"), human=0) is None


# -- the terminal game with a scripted model ----------------------------------------------------


@dataclass
class Scripted:
    """A model that plays the given actions in order."""

    moves: list[int]
    name: str = "scripted"
    asked: list[str] = field(default_factory=list)

    def choose(self, game: Game[Any], state: Any, rng: np.random.Generator) -> int:
        self.asked.append(game.notation(state))
        return self.moves.pop(0)


def terminal(agent: Scripted, human: int, typed: str) -> tuple[str | None, str]:
    out = io.StringIO()
    result = play(TTT, agent, human, io.StringIO(typed), out, np.random.default_rng(0))
    return result, out.getvalue()


def test_bad_input_reprompts_and_a_won_game_says_you_win() -> None:
    result, text = terminal(Scripted([0, 1]), 0, "5\n\n5\nnine\n3\n7\n")
    assert result == "you win"
    assert text.count("error: ") == 3
    assert "error: cell 5 is not playable now" in text
    assert "model plays cell 1" in text and "model plays cell 2" in text
    assert text.endswith("O O X\n4 X 6\nX 8 9\nGame over: you win.\n")


def test_the_model_moves_first_when_the_human_plays_second_and_can_win() -> None:
    agent = Scripted([0, 1, 2])
    result, text = terminal(agent, 1, "4\n5\n")
    assert result == "model wins" and agent.asked == ["", "14", "1425"]
    assert text.startswith("You are O (second); X moves first.")
    assert text.rstrip().endswith("Game over: model wins.")


def test_a_full_board_without_a_line_is_a_draw() -> None:
    result, text = terminal(Scripted([4, 2, 3, 7]), 0, "1\n9\n7\n6\n2\n")
    assert result == "draw" and text.rstrip().endswith("Game over: draw.")


def test_the_end_of_input_abandons_the_game() -> None:
    result, text = terminal(Scripted([4]), 0, "1\n")
    assert result is None and "game abandoned" in text


def test_undecodable_input_is_an_error_not_a_crash() -> None:
    out, stdin = io.StringIO(), io.TextIOWrapper(io.BytesIO(b"\xff\n"), encoding="utf-8")
    result = play(TTT, Scripted([]), 0, stdin, out, np.random.default_rng(0))
    assert result is None and "error: unreadable input (not text)" in out.getvalue()


# -- `conclave play` --------------------------------------------------------------------------


def save_net(path: Path, game: Game[Any], generation: int) -> Path:
    from shared.learn.net import NetConfig, PolicyValueNet, save_checkpoint

    config = NetConfig(blocks=1, channels=8, value_hidden=8)
    save_checkpoint(
        path, PolicyValueNet(config, game.encoding_shape, game.num_actions), game.name, generation
    )
    return path


def conclave_play(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "shared.cli.main", "play", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)


def final_board_result(text: str, human: str) -> str:
    """The result the last tic-tac-toe board printed implies for the human's mark."""
    lines = text.splitlines()
    end = max(i for i, line in enumerate(lines) if line.startswith("Game over"))
    rows = [line.split()[-3:] for line in lines[end - 3 : end]]  # after an unechoed prompt
    cells = [cell for row in rows for cell in row]
    lines_of_three = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8)]
    lines_of_three += [(0, 4, 8), (2, 4, 6)]
    for a, b, c in lines_of_three:
        if cells[a] == cells[b] == cells[c] and cells[a] in "XO":
            return "you win" if cells[a] == human else "model wins"
    assert all(cell in "XO" for cell in cells), rows
    return "draw"


def test_conclave_play_with_a_checkpoint_plays_a_whole_game(tmp_path: Path) -> None:
    ckpt = save_net(tmp_path / "ttt.ckpt", TTT, generation=2)
    typed = "\n".join(["oops", "5", "5", *"123456789"]) + "\n"
    done = conclave_play(
        "--game", "tictactoe", "--checkpoint", str(ckpt), "--sims", "8", stdin=typed
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("tictactoe against gen2-")
    assert "error: 'oops' is not a cell of tictactoe" in done.stdout
    assert "error: cell 5 is not playable now" in done.stdout
    last = done.stdout.rstrip().splitlines()[-1]
    assert last == f"Game over: {final_board_result(done.stdout, 'X')}."


def test_unusable_options_are_named(tmp_path: Path) -> None:
    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        args = build_parser().parse_args(["play", *argv])
        return play_main(args, None, io.StringIO(""), out), out.getvalue()

    code, text = run("--game", "tictactoe", "--checkpoint", str(tmp_path / "gone.ckpt"))
    assert code == 2 and text.startswith(f"error: --checkpoint '{tmp_path / 'gone.ckpt'}': ")
    c4 = save_net(tmp_path / "c4.ckpt", C4, generation=1)
    code, text = run("--game", "tictactoe", "--checkpoint", str(c4))
    assert code == 2 and "checkpoint is for game 'connect4'" in text
    code, text = run("--game", "tictactoe", "--checkpoint", str(c4), "--sims", "0")
    assert (code, text) == (2, "error: --sims: must be at least 1, got 0\n")


async def publish_best(bus: Bus, tmp: Path, game: Game[Any], generation: int) -> str:
    """A checkpoint in the object store and the registry's best pointer at it."""
    data = save_net(tmp / f"{game.name}.ckpt", game, generation).read_bytes()
    sha = await ModelStore(bus, tmp / "seed").put(data)
    best = BestPointer(
        game=game.name,
        generation=generation,
        sha256=sha,
        term=1,
        promoted_at=time.time(),
        reason="test",
    )
    await bus.write(names.REGISTRY_BUCKET, names.best_key(game.name), encode(best))
    return sha


async def test_conclave_play_plays_the_clusters_best_model(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    common = ["--nats", nats_server.url, "--cache-dir", str(tmp_path / "cache"), "--sims", "8"]
    none = await asyncio.to_thread(conclave_play, "--game", "tictactoe", *common, stdin="")
    assert none.returncode == 1 and none.stdout == "error: no best model for tictactoe yet\n"

    sha = await publish_best(bus, tmp_path, TTT, generation=3)
    typed = "\n".join("987654321") + "\n"
    args = ["--game", "tictactoe", "--as", "second", *common]
    done = await asyncio.to_thread(conclave_play, *args, stdin=typed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("tictactoe against gen3-")
    assert done.stdout.splitlines()[5].startswith("model plays cell")  # the model opens
    assert done.stdout.rstrip().endswith(f"{final_board_result(done.stdout, 'O')}.")
    assert (tmp_path / "cache" / sha).exists(), "the blob went through the verified cache"


# -- the dashboard's board --------------------------------------------------------------------


@dataclass(frozen=True)
class Board:
    url: str


@pytest.fixture
async def board(nats_server: NatsServer, bus: Bus, processes: Processes, tmp_path: Path) -> Board:
    """A dashboard over a cluster whose best tic-tac-toe model is a fresh network."""
    await publish_best(bus, tmp_path, TTT, generation=2)
    web = free_port()
    cmd = [
        sys.executable, "-m", "shared.cli.main", "dashboard", "--port", str(web),
        "--nats", nats_server.url,
    ]  # fmt: skip
    out = tmp_path / "dashboard.out"
    processes.spawn(cmd, out)
    await eventually(lambda: "dashboard on" in out.read_text(), 30, what="the dashboard")
    return Board(f"http://127.0.0.1:{web}/")


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def play_api(board: Board, request: Any) -> tuple[int, dict[str, Any]]:
    body = request if isinstance(request, bytes) else json.dumps(request).encode()
    return await asyncio.to_thread(post, f"{board.url}api/play", body)


async def test_the_play_endpoint_answers_with_the_models_move(
    board: Board, bus: Bus, tmp_path: Path
) -> None:
    status, view = await play_api(board, {"game": "tictactoe", "moves": [4]})
    assert status == 200, view
    assert view["moves"][0] == 4 and view["reply"] == view["moves"][1] != 4
    assert view["reply_name"] == str(view["reply"] + 1) and view["model"] == "gen2"
    stones = [cell for row in view["cells"] for cell in row if cell is not None]
    assert sorted(stones) == [0, 1] and not view["over"] and view["result"] is None
    playable = {a for row in view["targets"] for a in row if a is not None}
    assert playable == set(range(9)) - {4, view["reply"]}

    status, view = await play_api(board, {"game": "tictactoe", "moves": [], "human": "second"})
    assert status == 200 and len(view["moves"]) == 1 and view["reply"] is not None

    status, view = await play_api(board, {"game": "tictactoe", "moves": []})
    assert status == 200 and view["moves"] == [] and view["reply"] is None  # the human is to move

    won = [0, 3, 1, 4, 2]
    status, view = await play_api(board, {"game": "tictactoe", "moves": won})
    assert status == 200 and view["over"] and view["result"] == "you win" and view["reply"] is None
    assert all(a is None for row in view["targets"] for a in row)

    await publish_best(bus, tmp_path, C4, generation=5)
    status, view = await play_api(board, {"game": "connect4", "moves": [3]})
    assert status == 200 and view["model"] == "gen5" and view["columns"] == list("1234567")
    reply, cells = view["reply"], view["cells"]
    stones = {(r, c): p for r, row in enumerate(cells) for c, p in enumerate(row) if p is not None}
    assert stones == {(5, 3): 0, (4 if reply == 3 else 5, reply): 1}  # the reply drops on top
    assert all(row == list(range(7)) for row in view["targets"])  # a click anywhere in a column


REFUSED: list[tuple[Any, int, str]] = [
    ({"game": "tictactoe", "moves": [4, 4]}, 400, "moves[1]: cell 5 is occupied"),
    ({"game": "tictactoe", "moves": [9]}, 400, "moves[0]: 9 is out of range 0..8"),
    ({"game": "tictactoe", "moves": ["5"]}, 400, "$.moves[0]"),
    ({"game": "tictactoe", "moves": [True]}, 400, "$.moves[0]"),
    ({"game": "tictactoe"}, 400, "`moves`"),
    ({"game": "tictactoe", "moves": [], "human": "third"}, 400, "$.human"),
    ({"game": "tictactoe", "moves": [], "extra": 1}, 400, "`extra`"),
    ({"game": "chess", "moves": []}, 400, "game: unknown game 'chess'"),
    (b"{not json", 400, "bad request: JSON is malformed"),
    ({"game": "connect4", "moves": []}, 404, "no best model for connect4 yet"),
]


async def test_the_play_endpoint_refuses_bad_input_naming_the_field(board: Board) -> None:
    for request_body, status, named in REFUSED:
        got, body = await play_api(board, request_body)
        assert (got, named in body["error"]) == (status, True), (request_body, body)
    with pytest.raises(urllib.error.HTTPError, match="405"):
        await asyncio.to_thread(urllib.request.urlopen, f"{board.url}api/play")


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        text: str = response.read().decode()
        return text


async def test_the_page_has_the_board_and_every_game_to_choose(board: Board) -> None:
    page = await asyncio.to_thread(fetch, board.url)
    assert "<h2>Play the best model</h2>" in page
    assert 'const GAMES = ["connect4","gomoku-9x9","tictactoe"];' in page  # two-player ones


# -- headless Chromium, driven over the DevTools protocol on a pipe ----------------------------


class Chromium:
    """Headless Chromium with `--remote-debugging-pipe`: DevTools commands as NUL-ended JSON on
    fd 3 (to the browser) and fd 4 (from it), so no websocket library is needed."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser, self.commands = os.pipe()
        self.events, from_browser = os.pipe()
        inherited = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1600", "--remote-debugging-pipe", f"--user-data-dir={profile}",
        ]  # fmt: skip
        shell = f'exec "$0" "$@" 3<&{inherited[0]} 4>&{inherited[1]}'
        self.proc = subprocess.Popen(
            ["bash", "-c", shell, binary, *flags, "about:blank"],
            pass_fds=inherited,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in inherited:
            os.close(fd)
        self.buffer, self.next_id, self.session = b"", 0, ""

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive()
            if reply.get("id") == self.next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                result: dict[str, Any] = reply["result"]
                return result

    def receive(self, timeout_s: float = 60.0) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.events], [], [], timeout_s)
            chunk = os.read(self.events, 1 << 16) if ready else b""
            assert chunk, "chromium stopped answering"
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        decoded: dict[str, Any] = json.loads(message)
        return decoded

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        reply = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot")["data"]))

    def close(self) -> None:
        os.close(self.commands)
        os.close(self.events)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chrome = Chromium(chromium(), tmp_path / "profile")
    try:
        yield chrome
    finally:
        chrome.close()


# What the page shows: the board's moves and whether it is over, the result line and the status.
SEEN = """(() => {
  const table = document.querySelector("#play-board table");
  if (!document.getElementById("play-result")) return null;  // still loading
  return {
    moves: table ? table.dataset.moves : null,
    over: table ? table.dataset.over === "true" : false,
    result: document.getElementById("play-result").textContent,
    status: document.getElementById("play-status").textContent,
    marks: [...document.querySelectorAll("#play-board td")].map(td => td.textContent).join(""),
    playable: [...document.querySelectorAll("#play-board td[data-action]")]
      .map(td => Number(td.dataset.action)),
  };
})()"""


def choose(select: str, value: str) -> str:
    return f"""(() => {{ const s = document.getElementById("{select}");
      s.value = "{value}"; s.dispatchEvent(new Event("change")); return s.value; }})()"""


def click(action: int) -> str:
    return f"document.querySelector('#play-board td[data-action=\"{action}\"]').click()"


class Page:
    def __init__(self, chrome: Chromium) -> None:
        self.chrome = chrome

    async def run(self, expression: str) -> Any:
        return await asyncio.to_thread(self.chrome.evaluate, expression)

    async def seen(self) -> dict[str, Any] | None:
        seen: dict[str, Any] | None = await self.run(SEEN)
        return seen

    async def until(
        self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        async def satisfied() -> dict[str, Any] | None:
            seen = await self.seen()
            return seen if seen is not None and check(seen) else None

        found: dict[str, Any] = await eventually(satisfied, timeout, every=0.1, what=what)
        return found


def moves_of(seen: dict[str, Any]) -> list[int]:
    return [int(a) for a in seen["moves"].split(",") if a] if seen["moves"] is not None else []


@pytest.mark.timeout(300)
async def test_the_dashboard_board_plays_the_best_model_to_a_result(
    board: Board, browser: Chromium
) -> None:
    page = Page(browser)
    await asyncio.to_thread(browser.open, board.url)
    # connect4 comes first and has no best model yet: the page says so.
    await page.until(
        "the missing model named", lambda s: "no best model for connect4" in s["status"]
    )

    await page.run(choose("play-game", "tictactoe"))
    seen = await page.until("an empty board to click", lambda s: len(s["playable"]) == 9)
    assert seen["moves"] == "" and seen["marks"] == ""

    await page.run(click(4))
    seen = await page.until("the model's reply", lambda s: len(moves_of(s)) == 2)
    reply = moves_of(seen)[1]
    assert moves_of(seen)[0] == 4 and reply != 4 and sorted(seen["marks"]) == ["O", "X"]
    assert f"played {reply + 1}" in seen["status"] and set(seen["playable"]) == set(range(9)) - {
        4,
        reply,
    }

    while not seen["over"]:
        count = len(moves_of(seen))
        await page.run(click(min(seen["playable"])))
        seen = await page.until("the next position", lambda s, n=count: len(moves_of(s)) > n)
    expected = outcome(TTT, replay(TTT, moves_of(seen)), human=0)
    assert expected is not None and seen["result"] == f"Game over: {expected}"
    assert seen["playable"] == []
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(browser.screenshot, ARTIFACTS / "play.png")

    # Playing second: the new game opens with the model's move.
    await page.run(choose("play-side", "second"))
    seen = await page.until("the model's opening", lambda s: len(moves_of(s)) == 1)
    assert seen["marks"] == "X" and seen["result"] == "" and len(seen["playable"]) == 8
    await page.run("document.getElementById('play-new').click()")
    seen = await page.until("a fresh opening", lambda s: len(moves_of(s)) == 1 and not s["over"])
    assert seen["marks"] == "X"
