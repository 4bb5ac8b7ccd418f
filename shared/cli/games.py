"""`conclave games`: every game this machine can play, and where each comes from.

A game's board is its `rows` x `cols` when it has both (the m,n,k family), else the height and
width of its encoding: the board a person sees, which for every game so far is the encoded one.
"""

from __future__ import annotations

from typing import Any, TextIO

import msgspec

from shared.learn.games import Game, game_names, game_source, get_game


class GameInfo(msgspec.Struct, frozen=True):
    name: str
    players: int
    board: tuple[int, int]  # rows, cols
    source: str  # "built-in", or the installed distribution's name


def board_of(game: Game[Any]) -> tuple[int, int]:
    rows, cols = getattr(game, "rows", None), getattr(game, "cols", None)
    if isinstance(rows, int) and isinstance(cols, int):
        return rows, cols
    _, height, width = game.encoding_shape
    return height, width


def listed() -> list[GameInfo]:
    """Every usable game, by name (refused packages are logged as warnings, not listed)."""
    infos = []
    for name in game_names():
        game = get_game(name)
        infos.append(GameInfo(name, game.num_players, board_of(game), game_source(name)))
    return infos


def table(infos: list[GameInfo]) -> str:
    header = ("name", "players", "board", "source")
    rows = [(i.name, str(i.players), f"{i.board[0]}x{i.board[1]}", i.source) for i in infos]
    widths = [max(len(row[k]) for row in (header, *rows)) for k in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    head = "  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True))
    return "\n".join(line.rstrip() for line in (head, *lines)) + "\n"


def games_main(as_json: bool, out: TextIO) -> int:
    infos = listed()
    if as_json:
        out.write(msgspec.json.encode(infos).decode() + "\n")
    else:
        out.write(table(infos))
    return 0
