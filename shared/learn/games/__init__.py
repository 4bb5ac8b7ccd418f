"""The games, by name: the built-in ones and those installed packages expose.

A package exposes a game through an entry point in the group `conclave.games`, named after the
game (`hexapawn = conclave_hexapawn:GAME`); it loads to a `Game` or to a zero-argument callable
(a class, a factory) returning one. Entry points are read once per process, on first use. A
built-in name always wins over a package's, and of two packages the first by distribution name
wins, so every node picks the same game; a clash, or an entry point that fails to load or is no
`Game`, is logged as a warning and never stops the process (`get_game` of a refused name says
why).
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from shared.learn.games.base import BadNotation, Game, IllegalMove, Symmetry, num_players
from shared.learn.games.entrypoints import BUILT_IN, ENTRY_POINT_GROUP, Registry, discover, merge

log = logging.getLogger(__name__)


class UnknownGame(KeyError, ValueError):
    """A game name nobody registered, or whose package could not be used.

    A `ValueError` too, so a worker handed a job for a game it lacks refuses it with the reason.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would quote it


def get_game(name: str) -> Game[Any]:
    registry = _registry()
    if name in registry.games:
        return registry.games[name]
    if name in registry.refused:
        raise UnknownGame(f"game {name!r} cannot be used: {registry.refused[name]}")
    known = ", ".join(sorted(registry.games))
    raise UnknownGame(f"unknown game {name!r}; known: {known}")


def game_names() -> list[str]:
    return sorted(_registry().games)


def game_source(name: str) -> str:
    """Where a game comes from: `BUILT_IN`, or the name of the distribution that installed it."""
    registry = _registry()
    if name not in registry.sources:
        get_game(name)  # raises UnknownGame with the reason
    return registry.sources[name]


def players_of(name: str) -> int:
    """How many players the named game has (raise UnknownGame for a name nobody registered)."""
    return num_players(get_game(name))


def seats_of(name: str) -> int:
    """How many players the named game has; 2 for a name not installed here (its jobs and
    results are two-player, as every job was before games of more players)."""
    try:
        return players_of(name)
    except UnknownGame:
        return 2


def two_player_games() -> list[str]:
    """The games a person can play against a model today (`conclave play`, the dashboard)."""
    return [name for name in game_names() if players_of(name) == 2]


def rescan() -> None:
    """Forget the discovered games, so the next use reads the entry points again (after a
    package is installed into a running process, and in tests)."""
    _registry.cache_clear()


# The m,n,k configurations played as games of their own (their twins of the built-ins,
# `tictactoe-mnk` and `connect4-mnk`, exist to check the family against them).
MNK_GAMES = ("tictacmo", "connect3-6x7-3p", "connect3-7x8-4p", "gomoku-9x9")


@cache
def _registry() -> Registry:
    registry = merge(_builtin(), discover())
    for warning in registry.warnings:
        log.warning("%s", warning)
    return registry


def _builtin() -> dict[str, Game[Any]]:
    # Imported lazily so that `shared.learn.games` has no import-time side effects on its users.
    from shared.learn.games import connect4, mnk, tictactoe

    games: list[Game[Any]] = [connect4.GAME, tictactoe.GAME, *(mnk.FAMILY[n] for n in MNK_GAMES)]
    return {game.name: game for game in games}


__all__ = [
    "BUILT_IN",
    "ENTRY_POINT_GROUP",
    "BadNotation",
    "Game",
    "IllegalMove",
    "Symmetry",
    "UnknownGame",
    "game_names",
    "game_source",
    "get_game",
    "players_of",
    "rescan",
    "seats_of",
    "two_player_games",
]
