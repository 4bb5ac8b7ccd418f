"""The built-in games, by name."""

from __future__ import annotations

from typing import Any

from shared.learn.games.base import BadNotation, Game, IllegalMove, Symmetry


class UnknownGame(KeyError):
    """A game name nobody registered."""


def get_game(name: str) -> Game[Any]:
    games = _builtin()
    try:
        return games[name]
    except KeyError:
        known = ", ".join(sorted(games))
        raise UnknownGame(f"unknown game {name!r}; known: {known}") from None


def game_names() -> list[str]:
    return sorted(_builtin())


def _builtin() -> dict[str, Game[Any]]:
    # Imported lazily so that `shared.learn.games` has no import-time side effects on its users.
    from shared.learn.games import connect4, tictactoe

    return {game.name: game for game in (connect4.GAME, tictactoe.GAME)}


__all__ = [
    "BadNotation",
    "Game",
    "IllegalMove",
    "Symmetry",
    "UnknownGame",
    "game_names",
    "get_game",
]
