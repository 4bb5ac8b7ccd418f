"""Golden moves of the two-player baselines on fixed seeds, to pin them exactly.

    .venv/bin/python -m tests.baselines_golden   # (re)writes tests/data/baselines_golden.json

`positions()` reaches positions of tic-tac-toe and Connect Four by seeded random play; the file
stores their notation, so the fixture does not depend on how they were found. For every position,
agent (random, onestep, mcts:50, mcts:200) and seed, `choose_move()` records the move chosen and
the generator's next draw afterwards, which pins how many random numbers the agent consumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from shared.learn.baselines import make_agent
from shared.learn.games.base import Game
from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.tictactoe import GAME as TICTACTOE

GOLDEN = Path(__file__).resolve().parent / "data" / "baselines_golden.json"
GAMES: dict[str, Game[Any]] = {"tictactoe": TICTACTOE, "connect4": CONNECT4}
AGENTS = ("random", "onestep", "mcts:50", "mcts:200")
SEEDS = (0, 1, 2)
POSITIONS_PER_GAME = 24


class Record(TypedDict):
    game: str
    position: str
    agent: str
    seed: int
    move: int
    next_draw: int


def positions(game: Game[Any], count: int) -> list[str]:
    """`count` distinct unfinished positions, at depths from 0 up, by seeded random play."""
    found: list[str] = []
    seed = 0
    while len(found) < count:
        rng = np.random.default_rng(1000 + seed)
        state, depth = game.initial(), seed % 9
        for _ in range(depth):
            if game.terminal_value(state) is not None:
                break
            state = game.apply(state, int(rng.choice(np.flatnonzero(game.legal_mask(state)))))
        text = game.notation(state)
        if game.terminal_value(state) is None and text not in found:
            found.append(text)
        seed += 1
    return found


def choose_move(game: Game[Any], position: str, agent: str, seed: int) -> tuple[int, int]:
    """The move `agent` chooses at `position` with a generator seeded `seed`, and its next draw."""
    rng = np.random.default_rng(seed)
    move = make_agent(agent).choose(game, game.parse(position), rng)
    return move, int(rng.integers(1 << 62))


def golden_records() -> list[Record]:
    records: list[Record] = []
    for name, game in GAMES.items():
        for position in positions(game, POSITIONS_PER_GAME):
            for agent in AGENTS:
                for seed in SEEDS:
                    move, draw = choose_move(game, position, agent, seed)
                    records.append(Record(game=name, position=position, agent=agent, seed=seed,
                                          move=move, next_draw=draw))  # fmt: skip
    return records


def main() -> None:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    records = golden_records()
    lines = ",\n".join(json.dumps(record) for record in records)  # one record a line: diffable
    GOLDEN.write_text(f"[\n{lines}\n]\n")
    print(f"wrote {len(records)} records to {GOLDEN}")


if __name__ == "__main__":
    main()
