"""Self-play for 2 to 4 players: records by seat, checked by the rules check, and two-player
records byte for byte as before the change (tests/data/selfplay_golden.bin).

Regenerate the golden file only for an intended change of two-player records:
`.venv/bin/python -m tests.test_selfplay_nplayer`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import pytest

from schemas.game import GameRecord, decode_record, encode_record, seat_outcomes
from shared.learn.evaltypes import Evaluator, uniform_evaluator
from shared.learn.games.base import BoolArray, FloatArray, Game
from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.mnk import FAMILY
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.recordcheck import RejectedRecord, check_record
from shared.learn.search.gumbel import gumbel_search
from shared.learn.selfplay import SelfPlayConfig, self_play

GOLDEN = Path(__file__).parent / "data" / "selfplay_golden.bin"
TICTACMO = FAMILY["tictacmo"]  # 3 players
CONNECT3_4P = FAMILY["connect3-7x8-4p"]  # 4 players


def hashed_outputs(encodings: FloatArray, masks: BoolArray, values: int) -> FloatArray:
    """Fixed pseudo-random weights on the encoding: (n, A + values) deterministic outputs.
    Elementwise products and sums only, so no BLAS-dependent rounding."""
    n, size = len(masks), int(np.prod(encodings.shape[1:]))
    shape = (size, masks.shape[1] + values)
    weights = np.random.default_rng(7).normal(size=shape).astype(np.float32)
    flat = encodings.reshape(n, size)
    out: FloatArray = (flat[:, :, None] * weights[None]).sum(axis=1)
    return out


def hashed_priors(out: FloatArray, masks: BoolArray) -> FloatArray:
    logits = np.where(masks, out[:, : masks.shape[1]], -np.inf)
    priors = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: FloatArray = (priors / priors.sum(axis=1, keepdims=True)).astype(np.float32)
    return result


def hashed_evaluator(encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
    """Position-dependent priors and (n,) values from the mover's view."""
    out = hashed_outputs(encodings, masks, 1)
    return hashed_priors(out, masks), np.tanh(out[:, -1] / 4).astype(np.float32)


def turn_order_evaluator(players: int) -> Evaluator:
    """Position-dependent priors and (n, players) values in turn order from the mover."""

    def evaluate(encodings: FloatArray, masks: BoolArray) -> tuple[FloatArray, FloatArray]:
        out = hashed_outputs(encodings, masks, players)
        values = np.tanh(out[:, -players:] / 4).astype(np.float32)
        return hashed_priors(out, masks), values

    return evaluate


# Two-player configurations covering resigning (on and measured), random openings, sampled
# plies, playout cap randomisation, forced playouts and the pipeline.
GOLDEN_CONFIGS: tuple[tuple[Game[Any], SelfPlayConfig], ...] = (
    (
        TICTACTOE,
        SelfPlayConfig(
            concurrent_games=3,
            num_simulations=8,
            sample_plies=2,
            resign_value=-0.2,
            resign_disabled_fraction=0.5,
            random_opening_fraction=0.5,
            random_opening_plies=2,
            full_search_fraction=0.6,
            cheap_simulations=4,
        ),
    ),
    (
        TICTACTOE,
        SelfPlayConfig(
            concurrent_games=4,
            num_simulations=8,
            search="puct",
            forced_playouts=2.0,
            pipeline=True,
            sample_plies=3,
        ),
    ),
    (CONNECT4, SelfPlayConfig(concurrent_games=2, num_simulations=6, sample_plies=4)),
)


def golden_records() -> list[bytes]:
    """Encoded two-player records from fixed seeds, a fixed clock and the hashed evaluator."""
    out: list[bytes] = []
    for seed, (game, config) in enumerate(GOLDEN_CONFIGS):
        records = self_play(
            game,
            hashed_evaluator,
            np.random.default_rng(seed),
            config,
            num_games=5,
            model_sha256="cd" * 32,
            generation=2,
            job_id="golden",
            clock=itertools.count(1_700_000_000.0, 0.5).__next__,
        )
        out += [encode_record(r) for r in records]
    return out


def write_golden(path: Path = GOLDEN) -> None:
    path.write_bytes(msgspec.msgpack.encode(golden_records()))


def test_two_player_records_are_byte_identical_to_the_golden_file() -> None:
    expected = msgspec.msgpack.decode(GOLDEN.read_bytes(), type=list[bytes])
    assert golden_records() == expected
    kinds = [decode_record(b) for b in expected]  # the file exercises what it claims to
    assert any(r.resigned for r in kinds) and any(r.would_resign is not None for r in kinds)
    assert any(r.full_search for r in kinds) and {r.game for r in kinds} == {
        "tictactoe",
        "connect4",
    }


def play(
    game: Game[Any], evaluator: Evaluator, search: Literal["gumbel", "puct"], **config: Any
) -> list[GameRecord]:
    settings = SelfPlayConfig(concurrent_games=3, num_simulations=8, search=search, **config)
    return list(self_play(game, evaluator, np.random.default_rng(1), settings, num_games=4))


def check_seats(game: Game[Any], record: GameRecord) -> None:
    """Round trip, rules check, one move per ply, and the seat fields the moves imply."""
    players = game.num_players
    assert decode_record(encode_record(record)) == record
    replayed = check_record(game, record)
    assert len(record.moves) == record.plies == len(replayed.movers)
    assert record.players == players and not record.resigned
    assert seat_outcomes(record) == game.outcome(replayed.final)
    assert record.outcome == record.outcomes[0]
    vectors = np.array(record.root_vectors).reshape(record.plies, players)
    assert np.all(np.abs(vectors) <= 1)
    # The scalar root value is the mover's entry of the root's vector.
    movers_view = vectors[np.arange(record.plies), replayed.movers]
    assert movers_view.tolist() == record.root_values


@pytest.mark.parametrize("game", [TICTACMO, CONNECT3_4P], ids=lambda g: g.name)
@pytest.mark.parametrize("evaluator", ["uniform", "turn_order"])
@pytest.mark.parametrize("search", ["gumbel", "puct"])
def test_selfplay_of_more_players_gives_checked_records(
    game: Game[Any], evaluator: str, search: Literal["gumbel", "puct"]
) -> None:
    chosen = uniform_evaluator if evaluator == "uniform" else turn_order_evaluator(game.num_players)
    records = play(
        game,
        chosen,
        search,
        sample_plies=3,
        random_opening_fraction=0.5,
        random_opening_plies=2,
        full_search_fraction=0.7,
        cheap_simulations=4,
        pipeline=search == "gumbel",
    )
    assert len(records) == 4
    for record in records:
        check_seats(game, record)


def test_three_players_end_in_wins_and_draws_by_seat() -> None:
    records = play(TICTACMO, turn_order_evaluator(3), "gumbel", sample_plies=15)
    records += play(TICTACMO, uniform_evaluator, "puct", sample_plies=15)
    for record in records:
        check_seats(TICTACMO, record)
    assert {tuple(sorted(r.outcomes)) for r in records} <= {(0.0, 0.0, 0.0), (-1.0, -1.0, 1.0)}


def test_resigning_with_more_players_is_refused_naming_the_setting() -> None:
    config = SelfPlayConfig(resign_value=-0.9)
    with pytest.raises(ValueError, match="resign_value"):
        next(self_play(TICTACMO, uniform_evaluator, np.random.default_rng(0), config))


def forged(base: GameRecord, **fields: Any) -> GameRecord:
    """`base` with `fields` set past the schema's own checks: the rules check relies on none."""
    record = msgspec.structs.replace(base)
    for name, value in fields.items():
        msgspec.structs.force_setattr(record, name, value)
    return record


@pytest.fixture(scope="module")
def tictacmo_record() -> GameRecord:
    return play(TICTACMO, uniform_evaluator, "gumbel")[0]


def test_a_tampered_outcomes_vector_is_rejected_naming_the_field(
    tictacmo_record: GameRecord,
) -> None:
    record = tictacmo_record
    rotated = record.outcomes[1:] + record.outcomes[:1]
    wrong = rotated if rotated != record.outcomes else [1.0, -1.0, -1.0]
    with pytest.raises(RejectedRecord) as caught:
        check_record(TICTACMO, forged(record, outcomes=wrong, outcome=wrong[0]))
    assert caught.value.field == "outcomes"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"players": 2}, "players"),
        ({"outcomes": [0.0, 0.0]}, "outcomes"),
        ({"root_vectors": []}, "root_vectors"),
        ({"resigned": True, "resign_enabled": True}, "resigned"),
        ({"would_resign": 1}, "would_resign"),
    ],
)
def test_other_tampered_seat_fields_are_rejected_naming_the_field(
    tictacmo_record: GameRecord, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(RejectedRecord) as caught:
        check_record(TICTACMO, forged(tictacmo_record, **change), resign_threshold=-0.9)
    assert caught.value.field == field


def test_a_root_vector_out_of_range_is_rejected(tictacmo_record: GameRecord) -> None:
    vectors = [*tictacmo_record.root_vectors]
    vectors[4] = float("nan")
    with pytest.raises(RejectedRecord, match=r"root_vectors\[4\]"):
        check_record(TICTACMO, forged(tictacmo_record, root_vectors=vectors))


def test_a_two_player_record_claiming_more_players_is_rejected() -> None:
    record = decode_record(msgspec.msgpack.decode(GOLDEN.read_bytes(), type=list[bytes])[-1])
    with pytest.raises(RejectedRecord, match="players"):
        check_record(CONNECT4, forged(record, players=3))


def test_the_search_exposes_the_roots_value_by_seat() -> None:
    roots = [TICTACMO.initial(), TICTACMO.parse("1,6,11,2,7,13")]
    rng = np.random.default_rng(0)
    out = gumbel_search(TICTACMO, roots, turn_order_evaluator(3), rng, num_simulations=16)
    assert out.root_vector.shape == (2, 3)
    movers = [TICTACMO.to_play(root) for root in roots]
    assert out.root_vector[np.arange(2), movers].tolist() == out.root_value.tolist()
    two = gumbel_search(TICTACTOE, [TICTACTOE.parse("5")], hashed_evaluator, rng, num_simulations=8)
    assert two.root_vector.tolist() == [[-two.root_value[0], two.root_value[0]]]


if __name__ == "__main__":
    write_golden()
