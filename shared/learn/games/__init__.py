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


def players_of(name: str) -> int:
    """How many players the named game has (raise UnknownGame for a name nobody registered)."""
    return int(getattr(get_game(name), "num_players", 2))


def two_player_games() -> list[str]:
    """The games a person can play against a model today (`conclave play`, the dashboard)."""
    return [name for name in game_names() if players_of(name) == 2]


# The m,n,k configurations played as games of their own (their twins of the built-ins,
# `tictactoe-mnk` and `connect4-mnk`, exist to check the family against them).
MNK_GAMES = ("tictacmo", "connect3-6x7-3p", "connect3-7x8-4p", "gomoku-9x9")


def _builtin() -> dict[str, Game[Any]]:
    # Imported lazily so that `shared.learn.games` has no import-time side effects on its users.
    from shared.learn.games import connect4, mnk, tictactoe

    games: list[Game[Any]] = [connect4.GAME, tictactoe.GAME, *(mnk.FAMILY[n] for n in MNK_GAMES)]
    return {game.name: game for game in games}


__all__ = [
    "BadNotation",
    "Game",
    "IllegalMove",
    "Symmetry",
    "UnknownGame",
    "game_names",
    "get_game",
    "players_of",
    "two_player_games",
]
