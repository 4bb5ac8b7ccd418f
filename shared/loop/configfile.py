"""The configurations one cluster trains, read from a TOML file (`conclave up --config FILE`).

Each top-level table is a configuration, named by a registered game (`conclave games`): the
name identifies game, board and players everywhere (subjects, buckets, checkpoints, ratings).

    [tictactoe]
    weight = 1                  # its base weight in the self-play allocation (docs/allocation.md)
    [tictactoe.effects]         # any preset setting, by section (shared/loop/presets.py)
    selfplay_sims = 32

    [tictacmo]
    preset = "tictacmo"         # the settings it starts from; default: the game's own
    weight = 2
    window_games = 3000

A configuration starts from its preset and takes every setting the file gives; a key that names
no setting, or a value a setting cannot take, fails the whole file with the key named.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from shared.learn.games import game_names
from shared.loop.presets import Preset, preset, tuned

OWN_KEYS = ("preset", "weight")  # a configuration's keys that are not preset settings


class BadConfigFile(ValueError):
    """A configurations file that cannot be read, naming the file and the key."""


class Configs(msgspec.Struct, frozen=True):
    """The configurations to train, in file order, with their settings and base weights."""

    presets: dict[str, Preset]
    weights: dict[str, float]


def load(path: Path, tune: list[str] | None = None) -> Configs:
    """Read `path`; `tune` (`--tune` settings) then applies to every configuration."""
    try:
        text = path.read_text()
    except OSError as e:
        raise BadConfigFile(f"{path}: {e.strerror or e}") from None
    return parse(text, str(path), tune or [])


def parse(text: str, source: str, tune: list[str] | None = None) -> Configs:
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadConfigFile(f"{source}: not TOML: {e}") from None
    if not tables:
        raise BadConfigFile(f"{source}: no configuration: add a [game] table")
    presets, weights = {}, {}
    for name, table in tables.items():
        where = f"{source}: [{name}]"
        if name not in game_names():
            known = ", ".join(game_names())
            raise BadConfigFile(f"{where}: no game {name!r} is installed; known: {known}")
        if not isinstance(table, dict):
            raise BadConfigFile(f"{where}: expected a table of settings, got {table!r}")
        presets[name] = tuned_for(name, configured(name, table, where), tune or [], where)
        weights[name] = weight_of(table.get("weight", 1.0), where)
    return Configs(presets, weights)


def configured(name: str, table: dict[str, Any], where: str) -> Preset:
    """The configuration's preset with the table's settings applied."""
    base_name = table.get("preset", name)
    if not isinstance(base_name, str):
        raise BadConfigFile(f"{where} preset: expected a preset or game name, got {base_name!r}")
    try:
        base = preset(base_name)
    except ValueError as e:
        raise BadConfigFile(f"{where} preset: {e}") from None
    tree = msgspec.to_builtins(base)
    settings = {k: v for k, v in table.items() if k not in OWN_KEYS}
    if "games" in settings.get("loop", {}):
        raise BadConfigFile(f"{where} loop.games: a configuration trains its own game only")
    _merge(tree, settings, where, ())
    tree["loop"]["games"] = [name]
    try:
        return msgspec.convert(tree, Preset)
    except msgspec.ValidationError as e:
        raise BadConfigFile(f"{where} {_key_of(e)}: {_reason(e)}") from None
    except ValueError as e:  # a setting's own check (e.g. LoopConfig's)
        raise BadConfigFile(f"{where}: {e}") from None


def tuned_for(name: str, base: Preset, tune: list[str], where: str) -> Preset:
    try:
        return tuned(base, tune)
    except ValueError as e:
        raise BadConfigFile(f"{where}: {e}") from None


def weight_of(value: object, where: str) -> float:
    match value:
        case bool():
            pass
        case int() | float() if math.isfinite(value) and value >= 0:
            return float(value)
    raise BadConfigFile(f"{where} weight: expected a finite number >= 0, got {value!r}")


def _merge(
    tree: dict[str, Any], settings: dict[str, Any], where: str, path: tuple[str, ...]
) -> None:
    for key, value in settings.items():
        here = (*path, key)
        if key not in tree:
            raise BadConfigFile(f"{where} {'.'.join(here)}: no such setting")
        if isinstance(tree[key], dict) and isinstance(value, dict):
            _merge(tree[key], value, where, here)
        else:
            tree[key] = value


def _key_of(error: msgspec.ValidationError) -> str:
    """The dotted key of msgspec's "... - at `$.effects.selfplay_sims`"."""
    _, _, at = str(error).rpartition(" - at `$.")
    return at.rstrip("`") or "(settings)"


def _reason(error: msgspec.ValidationError) -> str:
    return str(error).partition(" - at `")[0]
