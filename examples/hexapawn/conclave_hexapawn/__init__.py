"""Hexapawn as a Conclave game: `GAME` is what the `conclave.games` entry point names."""

from conclave_hexapawn.game import GAME, Hexapawn, HexapawnState

__all__ = ["GAME", "Hexapawn", "HexapawnState"]
