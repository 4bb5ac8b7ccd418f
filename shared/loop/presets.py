"""Per-game settings for the whole loop, sized for a small machine: the files in
`preset_files/`, one per preset, in the format of `conclave up --config`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from shared.learn.games import UnknownGame, game_names, players_of
from shared.learn.netconfig import NetConfig, TrainSettings
from shared.learn.selfplay import SelfPlayConfig
from shared.loop.effects import EffectSettings
from shared.loop.evalplan import EvalBudget
from shared.loop.policy import LoopConfig


class Preset(msgspec.Struct, frozen=True):
    loop: LoopConfig
    effects: EffectSettings
    net: NetConfig
    train: TrainSettings
    window_games: int
    max_reuse: int
    selfplay_concurrency: int
    selfplay: SelfPlayConfig = SelfPlayConfig()
    budget: EvalBudget = EvalBudget()


PRESET_DIR = Path(__file__).parent / "preset_files"


class BadPreset(ValueError):
    """A preset file that does not give a whole preset, naming the file and the key."""


def read_preset(path: Path) -> Preset:
    """A preset file: one table, named by its game, with every setting section (the format of
    `conclave up --config`, shared/loop/configfile.py)."""
    tables = tomllib.loads(path.read_text())
    if len(tables) != 1:
        raise BadPreset(f"{path}: expected one table, named by its game; got {list(tables)}")
    ((game, table),) = tables.items()
    tree = {**table, "loop": {**table.get("loop", {}), "games": [game]}}
    try:
        found = msgspec.convert(tree, Preset)
    except (msgspec.ValidationError, ValueError) as e:
        raise BadPreset(f"{path}: {e}") from None
    unknown = unknown_keys(tree, msgspec.to_builtins(found))
    if unknown:
        raise BadPreset(f"{path}: [{game}] {unknown[0]}: no such setting")
    return found


def unknown_keys(given: dict[str, Any], known: dict[str, Any], at: str = "") -> list[str]:
    """The dotted keys of `given` that `known` (a settings tree) does not have."""
    found = []
    for key, value in given.items():
        if key not in known:
            found.append(at + key)
        elif isinstance(value, dict) and isinstance(known[key], dict):
            found += unknown_keys(value, known[key], f"{at}{key}.")
    return found


PRESETS = {path.stem: read_preset(path) for path in sorted(PRESET_DIR.glob("*.toml"))}
TICTACTOE = PRESETS["tictactoe"]
CONNECT4 = PRESETS["connect4"]
SOAK = PRESETS["soak"]
TICTACMO = PRESETS["tictacmo"]


class BadTuning(ValueError):
    """A `--tune KEY=VALUE` that names no setting or gives it a value it cannot take."""


def tuned(base: Preset, settings: list[str]) -> Preset:
    """`base` with each `section.name=value` applied (e.g. `selfplay.full_search_fraction=0.25`,
    `train.lr_schedule=cosine`, `effects.resign=true`); values are read as JSON, else as text."""
    tree = msgspec.to_builtins(base)
    for setting in settings:
        key, sep, text = setting.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise BadTuning(f"--tune {setting!r}: expected section.name=value")
        node = tree
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or path[-1] not in node:
            raise BadTuning(f"--tune {key}: no such setting")
        node[path[-1]] = _value(text.strip())
    try:
        return msgspec.convert(tree, Preset)
    except (msgspec.ValidationError, ValueError) as e:
        raise BadTuning(f"--tune: {e}") from e


def _value(text: str) -> object:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def preset(name: str) -> Preset:
    """The named preset; for a registered game without one (e.g. an installed package's), a
    small generic preset sized by its player count."""
    if name in PRESETS:
        return PRESETS[name]
    try:
        players = players_of(name)
    except UnknownGame:
        known = ", ".join([*PRESETS, *(g for g in game_names() if g not in PRESETS)])
        raise ValueError(f"no preset {name!r}; known: {known}") from None
    return generic(name, players)


def generic(game: str, players: int) -> Preset:
    """Tic-tac-toe's settings for a two-player game, Tic-Tac-Mo's otherwise, with match jobs of
    a multiple of the player count (each seat played equally by the candidate)."""
    if players == 2:
        return msgspec.structs.replace(
            TICTACTOE, loop=msgspec.structs.replace(TICTACTOE.loop, games=(game,))
        )
    base, per_job = TICTACMO, 6 * players
    sprt = msgspec.structs.replace(base.loop.sprt, max_games=10 * per_job)
    loop = msgspec.structs.replace(base.loop, games=(game,), eval_games_per_job=per_job, sprt=sprt)
    return msgspec.structs.replace(base, loop=loop)
