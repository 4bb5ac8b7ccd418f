"""Training cannot be poisoned: hostile game records are refused by field and dead-lettered,
non-finite steps are skipped, and a net with a non-finite weight is never written or loaded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import names
from schemas.codec import BadMessage, decode, encode
from schemas.game import GameRecord, decode_record, encode_record, pack_policy, policy_targets
from schemas.jobs import DeadLetter, ModelMeta, TrainJob
from services.trainer import Trainer, TrainerConfig
from shared.bus.ports import Bus
from shared.learn.games import get_game
from shared.learn.games.base import Game
from shared.learn.inference import uniform_evaluator
from shared.learn.net import (
    NonFiniteWeights,
    PolicyValueNet,
    checkpoint_bytes,
    load_checkpoint,
    weights_sha256,
)
from shared.learn.netconfig import NetConfig, TrainSettings
from shared.learn.recordcheck import RejectedRecord, check_record
from shared.learn.replay import GamePositions, ReplayWindow, positions_of
from shared.learn.selfplay import SelfPlayConfig, self_play
from shared.learn.training import NonFiniteTraining, StepsDone, new_net, train
from tests.conftest import eventually

TTT = get_game("tictactoe")
C4 = get_game("connect4")
TINY = NetConfig(blocks=1, channels=8, value_hidden=8)
THRESHOLD = -0.8
MODEL = "a" * 64  # a model whose training calibrated THRESHOLD


@functools.cache
def played(game_name: str, games: int = 4) -> tuple[GameRecord, ...]:
    """Valid self-play records (uniform evaluator, a few simulations), played once per run."""
    config = SelfPlayConfig(concurrent_games=games, num_simulations=8)
    rng = np.random.default_rng(0)
    return tuple(self_play(get_game(game_name), uniform_evaluator, rng, config, num_games=games))


def forged(base: GameRecord, **fields: Any) -> GameRecord:
    """`base` with `fields` set past the schema's own checks: the rules check relies on none."""
    record = msgspec.structs.replace(base)
    for name, value in fields.items():
        msgspec.structs.force_setattr(record, name, value)
    return record


def ttt(game_id: str = "g", **changes: Any) -> GameRecord:
    """The first Tic-tac-toe self-play record, with `changes`."""
    return forged(played("tictactoe")[0], game_id=game_id, **changes)


def resigned(game_id: str = "r", **changes: Any) -> GameRecord:
    """X plays the centre, then O resigns: X wins, and X's searched value (0) backs it."""
    policy = np.full((1, 9), 1 / 9, np.float32)
    fields: dict[str, Any] = dict(
        moves=[4],
        policy=pack_policy(policy),
        root_values=[0.0],
        outcome=1.0,
        plies=1,
        resigned=True,
        resign_enabled=True,
        model_sha256=MODEL,
        full_search=[],
    )
    return ttt(game_id, **{**fields, **changes})


def with_policy(record: GameRecord, ply: int, row: list[float]) -> GameRecord:
    policy = policy_targets(record).copy()
    policy[ply] = row
    return forged(record, policy=pack_policy(policy))


def refused(record: GameRecord, threshold: float | None = THRESHOLD) -> RejectedRecord:
    with pytest.raises(RejectedRecord) as caught:
        check_record(TTT, record, threshold)
    return caught.value


# -- the pure check ---------------------------------------------------------------------------


def test_self_play_records_pass_the_check() -> None:
    for game, name in ((TTT, "tictactoe"), (C4, "connect4")):
        for record in played(name):
            replayed = check_record(game, record)
            assert len(replayed.states) == record.plies
    assert check_record(TTT, resigned(), THRESHOLD).movers == [0]


def test_a_nan_or_out_of_range_root_value_is_refused_by_ply() -> None:
    for bad in (math.nan, math.inf, 1.5):
        values = list(ttt().root_values)
        values[3] = bad
        error = refused(ttt(root_values=values))
        assert error.field == "root_values[3]" and str(bad) in str(error)


def test_an_illegal_move_is_refused_by_ply() -> None:
    record = ttt()
    moves = [record.moves[0], record.moves[0], *record.moves[2:]]  # the same cell twice
    error = refused(ttt(moves=moves))
    assert str(error) == f"moves[1]: illegal action {moves[0]}"


def test_policy_targets_must_be_distributions_over_legal_moves() -> None:
    record = ttt()
    taken = record.moves[0]  # occupied from ply 1 on
    on_illegal = [0.0] * 9
    on_illegal[taken] = 1.0
    assert refused(with_policy(record, 1, on_illegal)).field == "policy[1]"
    assert "illegal" in str(refused(with_policy(record, 1, on_illegal)))
    assert refused(with_policy(record, 2, [math.nan] * 9)).field == "policy[2]"
    assert "sums to" in str(refused(with_policy(record, 2, [0.5] * 9)))


def test_an_outcome_the_moves_do_not_give_is_refused() -> None:
    record = ttt()
    wrong = 1.0 if record.outcome != 1.0 else -1.0
    assert refused(ttt(outcome=wrong)).field == "outcome"


def test_an_unfinished_record_that_nobody_resigned_is_refused() -> None:
    record = ttt()
    cut = record.plies - 1
    truncated = ttt(
        moves=record.moves[:cut],
        root_values=record.root_values[:cut],
        policy=pack_policy(policy_targets(record)[:cut]),
        plies=cut,
        full_search=[],
    )
    assert "do not end the game" in str(refused(truncated))


@pytest.mark.parametrize(
    ("record", "threshold", "field", "says"),
    [
        (resigned(resign_enabled=False), THRESHOLD, "resigned", "disabled"),
        (resigned(), None, "resigned", "no resign threshold"),
        (resigned(outcome=-1.0), THRESHOLD, "outcome", "player 1 resigned"),
        (resigned(outcome=0.0), THRESHOLD, "outcome", "player 1 resigned"),
        (resigned(root_values=[-0.9]), THRESHOLD, "root_values[0]", "at or below"),
        (resigned(would_resign=1), THRESHOLD, "would_resign", "allowed to resign"),
        (ttt(would_resign=0), None, "would_resign", "no resign threshold"),
        (ttt(resign_enabled=True), None, "resign_enabled", "no resign threshold"),
    ],
)
def test_a_forged_resignation_is_refused(
    record: GameRecord, threshold: float | None, field: str, says: str
) -> None:
    error = refused(record, threshold)
    assert error.field == field and says in error.reason


def test_a_resignation_after_the_game_ended_is_refused() -> None:
    record = ttt(resign_enabled=True, resigned=True)
    assert refused(record).field == "resigned"


def test_genuine_self_play_resignations_pass() -> None:
    config = SelfPlayConfig(
        concurrent_games=4, num_simulations=8, resign_value=1.0, resign_disabled_fraction=0.5
    )
    records = list(self_play(TTT, uniform_evaluator, np.random.default_rng(1), config, num_games=8))
    assert any(r.resigned for r in records) and any(r.would_resign is not None for r in records)
    for record in records:
        check_record(TTT, record, 1.0)


def test_the_check_costs_little_next_to_making_the_positions() -> None:
    """Measured: a Connect Four record (about 15 plies) checks in ~60 us and becomes positions in
    ~140 us, against ~150-400 ms per training step, so every record is checked in full."""
    records = played("connect4")
    for record in records:
        assert len(positions_of(C4, record).values) == record.plies


# -- the property: never anything but a typed refusal -------------------------------------------

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
SMALL_INTS = st.integers(-2, 12)


@st.composite
def mutations(draw: st.DrawFn, fields: dict[str, Any]) -> dict[str, Any]:
    """One to three random changes to a record's wire fields."""
    fields = dict(fields)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(
            st.sampled_from(
                [
                    "moves",
                    "root_values",
                    "policy",
                    "outcome",
                    "resigned",
                    "resign_enabled",
                    "would_resign",
                    "plies",
                    "truncate",
                    "game",
                    "full_search",
                ]
            )
        )
        fields.update(draw(_change(name, fields)))
    return fields


def _change(name: str, fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    plies = max(len(fields["moves"]), 1)
    at = st.integers(0, plies - 1)
    if name == "moves":
        return st.builds(lambda i, m: {"moves": _set(fields["moves"], i, m)}, at, SMALL_INTS)
    if name == "root_values":
        return st.builds(
            lambda i, v: {"root_values": _set(fields["root_values"], i, v)}, at, FLOATS
        )
    if name == "policy":
        cells = max(len(fields["policy"]) // 4, 1)
        return st.builds(
            lambda i, v: {"policy": _set_float(fields["policy"], i, v)},
            st.integers(0, cells - 1),
            FLOATS,
        )
    if name == "truncate":
        return st.builds(lambda n: _truncated(fields, n), st.integers(0, plies))
    simple: dict[str, st.SearchStrategy[Any]] = {
        "outcome": st.sampled_from([-1.0, 0.0, 1.0]),
        "resigned": st.booleans(),
        "resign_enabled": st.booleans(),
        "would_resign": st.sampled_from([None, 0, 1, 2, -1]),
        "plies": SMALL_INTS,
        "game": st.sampled_from(["tictactoe", "connect4", "chess"]),
        "full_search": st.lists(st.booleans(), max_size=12),
    }
    return simple[name].map(lambda value: {name: value})


def _set(values: list[Any], index: int, value: Any) -> list[Any]:
    return [value if i == index else v for i, v in enumerate(values)] if values else [value]


def _set_float(policy: bytes, index: int, value: float) -> bytes:
    cells = np.frombuffer(policy, np.float32).copy()
    if len(cells):
        cells[index] = value
    return cells.tobytes()


def _truncated(fields: dict[str, Any], n: int) -> dict[str, Any]:
    width = fields["num_actions"] * 4
    return {
        "moves": fields["moves"][:n],
        "root_values": fields["root_values"][:n],
        "policy": fields["policy"][: n * width],
        "plies": n,
        "full_search": [],
    }


def _wire(record: GameRecord) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.msgpack.decode(encode_record(record))
    return fields


BASES = [
    *played("tictactoe"),
    resigned(),
    played("tictactoe")[1],
    *played("connect4")[:2],
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    base=st.sampled_from(BASES),
    threshold=st.sampled_from([None, THRESHOLD, 1.0]),
)
def test_a_mutated_record_is_accepted_whole_or_refused_with_the_typed_error(
    data: st.DataObject, base: GameRecord, threshold: float | None
) -> None:
    fields = data.draw(mutations(_wire(base)))
    candidates = [forged(base, **{k: v for k, v in fields.items() if k != "type"})]
    with contextlib.suppress(BadMessage):  # else the schema refused it first, by field
        candidates.append(decode_record(msgspec.msgpack.encode(fields)))
    game = get_game(base.game)
    for record in candidates:
        try:
            positions = positions_of(game, record, 0, 0.5, threshold)
        except RejectedRecord as e:
            assert e.field and e.reason
            continue
        _assert_replays_cleanly(game, record, positions)


def _assert_replays_cleanly(game: Game[Any], record: GameRecord, positions: GamePositions) -> None:
    state = game.initial()
    for move in record.moves:
        assert game.legal_mask(state)[move]
        state = game.apply(state, move)
    assert game.terminal_value(state) is not None or record.resigned
    assert np.isfinite(positions.values).all() and (np.abs(positions.values) <= 1.0).all()
    assert np.isfinite(positions.policies).all()
    assert np.allclose(positions.policies.sum(axis=1), 1.0, atol=1e-3)


# -- training: non-finite steps skipped, non-finite nets never written ------------------------


def nan_positions(game_id: str, count: int = 8) -> GamePositions:
    """Positions whose value targets are NaN: what a record that slipped past the check gives."""
    encodings = np.stack([TTT.encode(TTT.initial())] * count)
    policies = np.full((count, 9), 1 / 9, np.float32)
    values = np.full(count, np.nan, np.float32)
    return GamePositions(
        game_id=game_id,
        seq=0,
        encodings=encodings,
        policies=policies,
        values=values,
        uses=np.zeros(count, np.int32),
    )


def good_window(*extra: GamePositions) -> ReplayWindow:
    window = ReplayWindow(100, max_reuse=100)
    for record in played("tictactoe"):
        window.add(positions_of(TTT, record))
    for positions in extra:
        window.add(positions)
    return window


def state_of(net: PolicyValueNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_steps_with_a_non_finite_loss_are_skipped_and_counted() -> None:
    torch.manual_seed(0)
    net = new_net(TTT, TINY)
    heard: list[StepsDone] = []
    window = good_window(nan_positions("poison", count=4))
    settings_ = TrainSettings(batch_size=4)
    report = train(net, TTT, window, 12, settings_, np.random.default_rng(0), heard.append)
    assert report.skipped > 0 and report.steps > 0 and report.steps + report.skipped == 12
    assert "policy loss" in report.first_fault and math.isfinite(report.value_loss)
    assert 0 < heard[-1].skipped <= report.skipped  # reported with the steps taken
    assert all(torch.isfinite(t).all() for t in net.state_dict().values() if t.is_floating_point())
    checkpoint_bytes(net, "tictactoe", 1)  # and it can be written


def test_a_skipped_step_leaves_weights_and_batch_norm_statistics_untouched() -> None:
    net = new_net(TTT, TINY)
    before = state_of(net)
    window = ReplayWindow(10, max_reuse=10)
    window.add(nan_positions("poison"))
    report = train(net, TTT, window, 5, TrainSettings(batch_size=4), np.random.default_rng(0))
    assert (report.steps, report.skipped) == (0, 5)
    after = state_of(net)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_non_finite_weight_is_never_written() -> None:
    net = new_net(TTT, TINY)
    with torch.no_grad():
        net.policy_fc.weight[0, 0] = math.nan
    with pytest.raises(NonFiniteWeights, match=r"'policy_fc\.weight' has 1 non-finite"):
        checkpoint_bytes(net, "tictactoe", 1)
    net = new_net(TTT, TINY)
    net.state_dict()["stem_bn.running_var"][0] = math.inf  # the buffer itself, not a copy
    with pytest.raises(NonFiniteWeights, match=r"stem_bn\.running_var"):
        checkpoint_bytes(net, "tictactoe", 1)


def test_a_checkpoint_with_a_non_finite_weight_is_never_loaded() -> None:
    net = new_net(TTT, TINY)
    payload = torch.load(io.BytesIO(checkpoint_bytes(net, "tictactoe", 1)), weights_only=True)
    with torch.no_grad():
        net.value_fc2.bias[0] = math.nan
    payload["state_dict"]["value_fc2.bias"][0] = math.nan
    payload["sha256"] = weights_sha256(net)  # a well-formed forgery: the digest matches
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with pytest.raises(NonFiniteWeights, match=r"value_fc2\.bias"):
        load_checkpoint(buffer.getvalue(), "tictactoe")


# -- the trainer's intake, in process, with a real nats-server --------------------------------


def tiny_trainer(tmp_path: Path, bus: Bus) -> Trainer:
    cfg = TrainerConfig(
        node_id="t1",
        cache_dir=str(tmp_path / "cache"),
        window_games=100,
        net=TINY,
        train=TrainSettings(batch_size=8),
    )
    return Trainer(bus, cfg)


@pytest.fixture
async def trainer(tmp_path: Path, bus: Bus) -> AsyncIterator[Trainer]:
    """A trainer following the games stream and ingesting, in this process."""
    t = tiny_trainer(tmp_path, bus)
    stop = asyncio.Event()
    await t.follow_games()
    task = asyncio.create_task(t.ingest(stop))
    try:
        yield t
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        t.ingest_pool.shutdown(wait=True)
        t.train_pool.shutdown(wait=True)


def nested(depth: int) -> bytes:
    """A record-shaped map with an unknown field nested `depth` arrays deep."""
    head = msgspec.msgpack.encode({"type": "conclave.game.v1"})
    return bytes([head[0] + 1]) + head[1:] + msgspec.msgpack.encode("x") + b"\x91" * depth + b"\xc0"


def poisoned() -> list[tuple[bytes, tuple[str, ...]]]:
    """Each attack, with what its dead letter may say (one of them): the schema (where it is
    hardened) or the rules check names the field; nothing else raised may stop the intake."""
    record = ttt()
    values = list(record.root_values)
    values[2] = math.nan
    illegal = [record.moves[0], record.moves[0], *record.moves[2:]]
    wrong = 1.0 if record.outcome != 1.0 else -1.0
    return [
        (encode_record(ttt("nan", root_values=values)), ("root_values[2]",)),
        (encode_record(ttt("illegal", moves=illegal)), (f"moves[1]: illegal action {illegal[1]}",)),
        (encode_record(ttt("wrong", outcome=wrong)), (f"outcome: {wrong} but the moves give",)),
        (
            encode_record(resigned("forged", model_sha256="b" * 64)),
            ("resigned: model 'bbbbbbbbbbbb' was given no resign threshold",),
        ),
        (nested(50_000), ("field $: nested deeper", "RecursionError")),  # under 64 KiB
        (b"\xc1 not msgpack", ("field $: not valid msgpack",)),
        (encode_record(ttt("chess", game="chess")), ("UnknownGame",)),
    ]


async def test_poisoned_records_are_dead_lettered_by_field_and_the_good_ones_trained_on(
    trainer: Trainer, bus: Bus
) -> None:
    meta = ModelMeta(
        sha256=MODEL,
        game="tictactoe",
        generation=1,
        parent_sha256="",
        size_bytes=1,
        window_first_seq=0,
        window_last_seq=0,
        positions=0,
        steps=0,
        policy_loss=None,
        value_loss=None,
        created_at=0.0,
        train_job="t0",
    )
    meta = msgspec.structs.replace(meta, resign_threshold=THRESHOLD)
    await bus.write(names.REGISTRY_BUCKET, names.model_key("tictactoe", MODEL), encode(meta))
    goods = [encode_record(ttt(f"ok{i}")) for i in range(3)]
    goods.append(encode_record(resigned("resigned-ok")))  # MODEL may resign at THRESHOLD
    attacks = poisoned()
    subject = names.games_subject("tictactoe")
    for i, data in enumerate([*goods, *(data for data, _ in attacks)]):
        await bus.publish_durable(subject, data, msg_id=f"m{i}")

    window = trainer.window("tictactoe")
    await eventually(lambda: len(window.games) == 4, what="the good records in the window")
    letters = await eventually(
        lambda: _letters(bus, len(attacks)), what=f"{len(attacks)} dead letters"
    )
    reasons = {letter.job: letter.reason for letter in letters}
    for data, says in attacks:
        assert any(s in reasons[data] for s in says), (says, reasons[data])
    assert sum(trainer.rejected.values()) == len(attacks)
    assert trainer.counters.snapshot()["records_rejected"] == len(attacks)  # its own counters

    job = TrainJob(
        job_id="tictactoe-t1", game="tictactoe", generation=1, parent_sha256="", steps=3, term=1
    )
    trained = await trainer.run_job(job)
    assert trained.steps == 3 and trained.rejected_records == len(attacks)
    assert trained.window_games == 4


async def _letters(bus: Bus, count: int) -> list[DeadLetter] | None:
    msgs = await bus.read_all(names.DLQ_STREAM, "dlq.records.>")
    letters = [decode(m.data, DeadLetter) for m in msgs]
    return letters if len(letters) >= count else None


async def test_a_job_whose_every_step_is_non_finite_fails_without_a_checkpoint(
    tmp_path: Path, bus: Bus
) -> None:
    t = tiny_trainer(tmp_path, bus)
    t.window("tictactoe").add(nan_positions("poison", count=64))
    job = TrainJob(
        job_id="tictactoe-t2", game="tictactoe", generation=1, parent_sha256="", steps=4, term=1
    )
    try:
        with pytest.raises(NonFiniteTraining, match="all 4 steps had a non-finite loss"):
            await t.run_job(job)
    finally:
        t.train_pool.shutdown(wait=True)
        t.ingest_pool.shutdown(wait=True)
    assert t.counters.snapshot()["train_steps_skipped"] == 4
    entry = await bus.last(names.REGISTRY_BUCKET, names.trained_key(job.job_id))
    assert entry.value is None
