"""Games registered by name."""

from __future__ import annotations

from typing import Any

from shared.learn.games.base import BadNotation, Game, IllegalMove, Symmetry

_REGISTRY: dict[str, Game[Any]] = {}


class UnknownGame(KeyError):
    """A game name nobody registered."""


def register(game: Game[Any]) -> None:
    _REGISTRY[game.name] = game


def get_game(name: str) -> Game[Any]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownGame(f"unknown game {name!r}; known: {known}") from None


def game_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    # Imported lazily so that `shared.learn.games` has no import-time side effects on its users.
    from shared.learn.games import connect4, tictactoe

    for module in (connect4, tictactoe):
        register(module.GAME)


__all__ = [
    "BadNotation",
    "Game",
    "IllegalMove",
    "Symmetry",
    "UnknownGame",
    "game_names",
    "get_game",
    "register",
]
