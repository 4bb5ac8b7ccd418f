"""Per-game settings for the whole loop, sized for a small machine."""

from __future__ import annotations

import msgspec

from shared.learn.games import UnknownGame, game_names, players_of
from shared.learn.netconfig import NetConfig, TrainSettings
from shared.learn.selfplay import SelfPlayConfig
from shared.loop.effects import EffectSettings
from shared.loop.evalplan import EvalBudget
from shared.loop.policy import LoopConfig
from shared.loop.sprt import SprtConfig


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


TICTACTOE = Preset(
    loop=LoopConfig(
        games=("tictactoe",),
        games_per_generation=400,
        selfplay_games_per_job=100,
        eval_games_per_job=20,
        eval_jobs_per_worker=2,  # a match job always waits: the evaluator never idles between
        sprt=SprtConfig(max_games=200),
    ),
    effects=EffectSettings(selfplay_sims=32, eval_sims=64, train_steps=300, gauntlet_games=20),
    net=NetConfig(blocks=2, channels=32, value_hidden=32),
    train=TrainSettings(batch_size=128),
    window_games=4000,
    max_reuse=8,
    selfplay_concurrency=64,
    # Measured on 14 offline generations: c_scale 1.0 (the paper's) made the improved-policy
    # targets so sharp that training oscillated between all-draw and all-decisive self-play;
    # mctx's 0.1 with a few sampled plies reached perfect play by the 4th generation.
    selfplay=SelfPlayConfig(sample_plies=4, c_scale=0.1),
)

CONNECT4 = Preset(
    loop=LoopConfig(
        games=("connect4",),
        games_per_generation=600,
        selfplay_games_per_job=32,
        eval_games_per_job=20,
        eval_jobs_per_worker=2,  # a match job always waits: the evaluator never idles between
        # A gate that only stops a clearly worse candidate: with (-20, 0) capped at 200 games
        # nearly every match ran to the cap, a quarter as many games as self-play (docs/
        # training-runs.md); (-50, 0) capped at 100 plays about half as many, and still rejects a
        # candidate 100 Elo worse 90% of the time (bench/sprt_cost.py, 20-game jobs, 10% draws).
        sprt=SprtConfig(elo0=-50.0, elo1=0.0, max_games=100),
    ),
    effects=EffectSettings(selfplay_sims=64, eval_sims=64, train_steps=600, gauntlet_games=100),
    net=NetConfig(),
    train=TrainSettings(batch_size=256),
    window_games=6000,
    max_reuse=8,
    selfplay_concurrency=32,
    selfplay=SelfPlayConfig(sample_plies=8, c_scale=0.1),
)
# Gauntlets of 100 games: 40 left a ±14% interval on the mcts:200 score (gen 12 of the first
# hour-long run scored 72.5% over 40 games and 78% over 100).


def _nplayer(game: str, players: int, net: NetConfig, per_generation: int) -> Preset:
    """A game of 3-4 players: match jobs of a multiple of the player count (each seat played
    equally by the candidate), and no gauntlet yet (the baselines are two-player)."""
    per_job = 6 * players
    return Preset(
        loop=LoopConfig(
            games=(game,),
            games_per_generation=per_generation,
            selfplay_games_per_job=50,
            eval_games_per_job=per_job,
            eval_jobs_per_worker=2,
            sprt=SprtConfig(elo0=-50.0, elo1=0.0, max_games=10 * per_job),
        ),
        effects=EffectSettings(selfplay_sims=32, eval_sims=32, train_steps=300, gauntlet=()),
        net=net,
        train=TrainSettings(batch_size=128),
        window_games=5 * per_generation,
        max_reuse=8,
        selfplay_concurrency=32,
        selfplay=SelfPlayConfig(sample_plies=4, c_scale=0.1),
    )


SMALL_NET = NetConfig(blocks=2, channels=32, value_hidden=32)
TICTACMO = _nplayer("tictacmo", 3, SMALL_NET, 400)
CONNECT3_3P = _nplayer("connect3-6x7-3p", 3, NetConfig(blocks=3, channels=48), 500)
CONNECT3_4P = _nplayer("connect3-7x8-4p", 4, NetConfig(blocks=3, channels=48), 500)
GOMOKU_9X9 = msgspec.structs.replace(
    CONNECT4,
    loop=msgspec.structs.replace(CONNECT4.loop, games=("gomoku-9x9",)),
    effects=msgspec.structs.replace(CONNECT4.effects, gauntlet=("random", "onestep")),
)

# The soak's fleet: many nodes sharing a small machine. Tic-tac-toe with small jobs and at most
# two self-play jobs stored at once, so 24 nodes' workers fit on 2 cores with room for heartbeats.
SOAK = Preset(
    loop=LoopConfig(
        games=("tictactoe",),
        games_per_generation=200,
        selfplay_games_per_job=25,
        selfplay_job_cap=2,
        eval_games_per_job=10,
        sprt=SprtConfig(max_games=40),
    ),
    effects=EffectSettings(selfplay_sims=16, eval_sims=16, train_steps=50, gauntlet_games=10),
    net=NetConfig(blocks=1, channels=16, value_hidden=16),
    train=TrainSettings(batch_size=64),
    window_games=2000,
    max_reuse=8,
    selfplay_concurrency=25,
    selfplay=SelfPlayConfig(sample_plies=4, c_scale=0.1),
)

PRESETS = {
    "tictactoe": TICTACTOE,
    "connect4": CONNECT4,
    "tictacmo": TICTACMO,
    "connect3-6x7-3p": CONNECT3_3P,
    "connect3-7x8-4p": CONNECT3_4P,
    "gomoku-9x9": GOMOKU_9X9,
    "soak": SOAK,
}


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
    """Tic-tac-toe's settings for a two-player game, the small N-player ones otherwise."""
    if players > 2:
        return _nplayer(game, players, SMALL_NET, 400)
    return msgspec.structs.replace(
        TICTACTOE, loop=msgspec.structs.replace(TICTACTOE.loop, games=(game,))
    )
