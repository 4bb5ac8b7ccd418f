from __future__ import annotations

from typing import Any, Literal

import msgspec
import numpy as np
import pytest
import torch

from schemas.game import (
    GameRecord,
    decode_record,
    encode_record,
    pack_policy,
    policy_targets,
    simulations,
    trained_plies,
)
from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.inference import NetEvaluator, uniform_evaluator
from shared.learn.net import NetConfig, PolicyValueNet
from shared.learn.replay import positions_of
from shared.learn.selfplay import SelfPlayConfig, self_play


def check_record(game: Any, record: GameRecord) -> None:
    """Moves legal, targets distributions over legal moves, outcome matches the final position."""
    policy = policy_targets(record)
    assert policy.shape == (record.plies, game.num_actions)
    state = game.initial()
    for ply, move in enumerate(record.moves):
        legal = game.legal_mask(state)
        assert legal[move], (record.moves, ply)
        assert np.isclose(policy[ply].sum(), 1.0, atol=1e-5)
        assert np.all(policy[ply][~legal] == 0.0)
        assert -1.0 <= record.root_values[ply] <= 1.0
        state = game.apply(state, move)
    if not record.resigned:
        value = game.terminal_value(state)
        assert value is not None
        assert record.outcome == (value if game.to_play(state) == 0 else -value)
    assert decode_record(encode_record(record)) == record


@pytest.mark.parametrize("pipeline", [True, False])
@pytest.mark.parametrize("search", ["gumbel", "puct"])
def test_selfplay_records_are_valid(search: Literal["gumbel", "puct"], pipeline: bool) -> None:
    torch.manual_seed(0)
    net = PolicyValueNet(NetConfig(blocks=1, channels=8), TICTACTOE.encoding_shape, 9)
    config = SelfPlayConfig(
        concurrent_games=4, num_simulations=8, search=search, pipeline=pipeline, sample_plies=2
    )
    stats: list[Any] = []
    records = list(
        self_play(
            TICTACTOE,
            NetEvaluator(net, threads=1),
            np.random.default_rng(0),
            config,
            num_games=6,
            model_sha256="ab" * 32,
            generation=3,
            on_search=stats.append,
        )
    )
    assert len(records) == 6 and len({r.game_id for r in records}) == 6
    for record in records:
        check_record(TICTACTOE, record)
        assert (record.generation, record.search, record.sims_per_move) == (3, search, 8)
    total_plies = sum(r.plies for r in records)
    assert sum(s.simulations for s in stats) == 8 * total_plies
    # Every simulation either needed the network, hit the cache or ended in a terminal state;
    # root evaluations add network rows or cache hits on top.
    for record in records:
        settled = record.nn_evals + record.cache_hits + record.terminal_visits
        assert 8 * record.plies <= settled <= 9 * record.plies
        assert 1 <= record.max_depth <= 9


def test_connect4_selfplay() -> None:
    config = SelfPlayConfig(concurrent_games=3, num_simulations=4)
    records = list(
        self_play(CONNECT4, uniform_evaluator, np.random.default_rng(1), config, num_games=3)
    )
    assert len(records) == 3
    for record in records:
        check_record(CONNECT4, record)


def test_playout_cap_randomisation_trains_only_on_full_searches() -> None:
    config = SelfPlayConfig(
        concurrent_games=4, num_simulations=16, full_search_fraction=0.25, cheap_simulations=4
    )
    stats: list[Any] = []
    records = list(
        self_play(
            TICTACTOE,
            uniform_evaluator,
            np.random.default_rng(3),
            config,
            num_games=12,
            on_search=stats.append,
        )
    )
    flags = [f for r in records for f in (r.full_search or [True] * r.plies)]
    assert 0 < sum(flags) < len(flags), "some plies full, some cheap"
    assert 0.1 < sum(flags) / len(flags) < 0.45
    for record in records:
        check_record(TICTACTOE, record)
        positions = positions_of(TICTACTOE, record)
        assert len(positions.values) == len(trained_plies(record))
    assert sum(s.simulations for s in stats) == sum(simulations(r) for r in records)
    assert all(r.cheap_sims == 4 for r in records if r.full_search)


def test_puct_selfplay_with_forced_playouts_keeps_valid_targets() -> None:
    config = SelfPlayConfig(
        concurrent_games=3, num_simulations=16, search="puct", forced_playouts=2.0
    )
    rng = np.random.default_rng(2)
    records = list(self_play(TICTACTOE, uniform_evaluator, rng, config, num_games=3))
    assert len(records) == 3
    for record in records:
        check_record(TICTACTOE, record)


def _openings(config: SelfPlayConfig, games: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(5)
    records = list(self_play(CONNECT4, uniform_evaluator, rng, config, num_games=games))
    for record in records:
        assert len(positions_of(CONNECT4, record).values) == record.plies  # all trained on
    return [tuple(r.moves[:2]) for r in records]


def test_random_openings_vary_the_first_moves_of_their_share_of_games() -> None:
    quiet = SelfPlayConfig(concurrent_games=8, num_simulations=8, sample_plies=0, gumbel_scale=0)
    assert len(set(_openings(quiet, 8))) == 1, "without them every game opens alike"
    varied = msgspec.structs.replace(quiet, random_opening_fraction=1.0, random_opening_plies=2)
    assert len(set(_openings(varied, 24))) >= 12  # 49 two-move openings, drawn uniformly
    half = msgspec.structs.replace(varied, random_opening_fraction=0.5)
    [usual] = set(_openings(quiet, 1))
    share = sum(o == usual for o in _openings(half, 40)) / 40
    assert 0.3 <= share <= 0.75  # half the games, plus the few that draw the usual moves


def test_full_searches_only_is_the_default() -> None:
    config = SelfPlayConfig(concurrent_games=2, num_simulations=4)
    rng = np.random.default_rng(0)
    records = list(self_play(TICTACTOE, uniform_evaluator, rng, config, num_games=2))
    assert all(r.full_search == [] and r.cheap_sims == 0 for r in records)
    assert all(trained_plies(r) == list(range(r.plies)) for r in records)


def test_resign_and_resign_disabled_games() -> None:
    always = SelfPlayConfig(concurrent_games=2, num_simulations=4, resign_value=1.0)
    rng = np.random.default_rng(0)
    on = SelfPlayConfig(**{**msgspec.structs.asdict(always), "resign_disabled_fraction": 0.0})
    records = list(self_play(TICTACTOE, uniform_evaluator, rng, on, num_games=2))
    assert all(r.resigned and r.plies == 0 and r.outcome == -1.0 for r in records)
    off = SelfPlayConfig(**{**msgspec.structs.asdict(always), "resign_disabled_fraction": 1.0})
    records = list(self_play(TICTACTOE, uniform_evaluator, rng, off, num_games=2))
    for record in records:
        assert not record.resigned and not record.resign_enabled and record.would_resign == 0
        check_record(TICTACTOE, record)


def test_stop_ends_selfplay() -> None:
    config = SelfPlayConfig(concurrent_games=2, num_simulations=4)
    records = self_play(
        TICTACTOE, uniform_evaluator, np.random.default_rng(), config, stop=lambda: True
    )
    assert list(records) == []


def test_record_validation_names_the_field() -> None:
    good = dict(
        game="tictactoe",
        game_id="x",
        model_sha256="",
        generation=0,
        moves=[4],
        policy=pack_policy(np.full((1, 9), 1 / 9, np.float32)),
        root_values=[0.0],
        outcome=0.0,
        plies=1,
        num_actions=9,
        search="gumbel",
        sims_per_move=8,
    )
    GameRecord(**good)  # type: ignore[arg-type]
    for field, bad in (
        ("moves", [4, 5]),
        ("outcome", 0.5),
        ("policy", b""),
        ("full_search", [True, False]),
    ):
        with pytest.raises(ValueError, match=f"GameRecord.{field}"):
            GameRecord(**{**good, field: bad})  # type: ignore[arg-type]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="concurrent_games"):
        SelfPlayConfig(concurrent_games=0)
    with pytest.raises(ValueError, match="random_opening_fraction"):
        SelfPlayConfig(random_opening_fraction=1.5)
    with pytest.raises(ValueError, match="random_opening_plies"):
        SelfPlayConfig(random_opening_plies=-1)
