"""Games from installed packages: the `conclave.games` entry points, loaded and checked, and
how they join the built-in games (pure: `merge` returns its warnings rather than logging them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeGuard

from schemas.names import BadName, check_token
from shared.learn.games.base import Game

ENTRY_POINT_GROUP = "conclave.games"
BUILT_IN = "built-in"

# What `Game` requires of an object beyond its data attributes (checked in `problems`).
_METHODS = (
    "initial",
    "legal_mask",
    "apply",
    "terminal_value",
    "outcome",
    "to_play",
    "ply",
    "key",
    "encode",
    "symmetries",
    "notation",
    "parse",
    "action_name",
)


@dataclass(frozen=True)
class Found:
    """What one entry point gave: a game, or why it gave none (`problem`)."""

    name: str  # the entry point's name
    target: str  # its value, `module:attribute`
    distribution: str
    game: Game[Any] | None = None
    problem: str = ""

    def describe(self) -> str:
        return f"entry point {self.name!r} ({self.target}) of package {self.distribution!r}"


@dataclass(frozen=True)
class Registry:
    """The usable games with where each comes from, and the refused names with the reason."""

    games: dict[str, Game[Any]]
    sources: dict[str, str]
    refused: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def merge(builtin: Mapping[str, Game[Any]], found: Iterable[Found]) -> Registry:
    """The registry of `builtin` and the entry points `found` (pure: the warnings are returned).

    A built-in name beats a package's; of two packages, the first by distribution name wins.
    """
    games = dict(builtin)
    sources = dict.fromkeys(builtin, BUILT_IN)
    refused: dict[str, str] = {}
    warnings: list[str] = []
    for entry in sorted(found, key=lambda f: (f.distribution, f.name, f.target)):
        if entry.game is None:
            warnings.append(f"{entry.describe()} skipped: {entry.problem}")
            if entry.name not in games:
                refused.setdefault(entry.name, f"{entry.describe()}: {entry.problem}")
        elif entry.name in games:
            owner = sources[entry.name]
            owner = "the built-in game" if owner == BUILT_IN else f"package {owner!r}"
            warnings.append(
                f"{entry.describe()}: game {entry.name!r} clashes with {owner}, which is used"
            )
        else:
            games[entry.name] = entry.game
            sources[entry.name] = entry.distribution
            refused.pop(entry.name, None)
    return Registry(games, sources, refused, tuple(warnings))


def problems(candidate: object, name: str) -> list[str]:
    """What keeps `candidate` from being the `Game` registered as `name` (empty: nothing)."""
    found: list[str] = []
    try:
        check_token(name, "game name")
    except BadName as e:
        found.append(str(e))
    game_name = getattr(candidate, "name", None)
    if game_name != name:
        found.append(f"its name is {game_name!r}, not the entry point's {name!r}")
    players = getattr(candidate, "num_players", None)
    if not _is_int(players) or not 2 <= players <= 4:
        found.append(f"num_players is {players!r}, not 2, 3 or 4")
    actions = getattr(candidate, "num_actions", None)
    if not _is_int(actions) or actions < 1:
        found.append(f"num_actions is {actions!r}, not a positive int")
    shape = getattr(candidate, "encoding_shape", None)
    if not (isinstance(shape, tuple) and len(shape) == 3 and all(_is_int(n) for n in shape)):
        found.append(f"encoding_shape is {shape!r}, not (planes, height, width)")
    elif min(shape) < 1:
        found.append(f"encoding_shape {shape!r} has an empty dimension")
    missing = [m for m in _METHODS if not callable(getattr(candidate, m, None))]
    if missing:
        found.append(f"missing methods: {', '.join(missing)}")
    return found


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def load(entry: EntryPoint) -> Found:
    """The game `entry` loads to (calling it when it is a class or factory), or the problem."""
    distribution = entry.dist.name if entry.dist is not None else "(unknown package)"
    found = Found(entry.name, entry.value, distribution)
    try:
        loaded = entry.load()
    except Exception as e:  # a package's import may fail any way; it must not stop ours
        return _refused(found, f"cannot import it: {type(e).__name__}: {e}")
    if isinstance(loaded, type) or (callable(loaded) and problems(loaded, entry.name)):
        try:
            loaded = loaded()
        except Exception as e:
            return _refused(found, f"calling it raised {type(e).__name__}: {e}")
    if faults := problems(loaded, entry.name):
        return _refused(found, "not a conclave Game: " + "; ".join(faults))
    game: Game[Any] = loaded
    return Found(found.name, found.target, distribution, game=game)


def _refused(found: Found, problem: str) -> Found:
    return Found(found.name, found.target, found.distribution, problem=problem)


def discover(read: Callable[[], Iterable[EntryPoint]] | None = None) -> list[Found]:
    """Every entry point of the `conclave.games` group, loaded (or refused)."""
    entries = read() if read is not None else entry_points(group=ENTRY_POINT_GROUP)
    return [load(entry) for entry in entries]
