"""Networks, value targets and training for games of more than two players (tic-tac-mo), and
two-player checkpoints written before the value head could have more than one output."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
import torch

from schemas.game import GameRecord, pack_policy
from shared.learn.games import get_game
from shared.learn.games.mnk import FAMILY, MnkState
from shared.learn.inference import NetEvaluator, symmetrised
from shared.learn.net import (
    MalformedCheckpoint,
    NetConfig,
    PolicyValueNet,
    WrongGame,
    checkpoint_bytes,
    load_checkpoint,
)
from shared.learn.netconfig import TrainSettings
from shared.learn.replay import (
    GamePositions,
    ReplayWindow,
    augment,
    positions_of,
    value_targets,
)
from shared.learn.training import new_net, train
from shared.work.modelcache import UnloadableModel, load_evaluator

GAME = FAMILY["tictacmo"]  # 3 players on 3 rows x 5 columns, 3 in a row wins
TINY = NetConfig(blocks=1, channels=8, value_hidden=8)
DATA = Path(__file__).parent / "data"
# Seat 1 fills cells 5, 6, 7 (the middle row's left three) at ply 7; nobody else has a line.
SEAT1_WINS = [0, 5, 10, 3, 6, 12, 14, 7]
# Seat 2 completes the bottom row (cells 10, 11, 12) at ply 8.
SEAT2_WINS = [0, 5, 10, 3, 6, 11, 8, 9, 12]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def states_of(moves: list[int]) -> list[MnkState]:
    """The position before each move, then the final one."""
    states = [GAME.initial()]
    for move in moves:
        states.append(GAME.apply(states[-1], move))
    return states


def root_vectors(plies: int) -> list[float]:
    """Distinct made-up search values by seat, exact in binary: ply i gives [i/16, -1/4, 3/4]."""
    return [v for ply in range(plies) for v in (ply / 16, -0.25, 0.75)]


def record(moves: list[int], game_id: str = "g1") -> GameRecord:
    """A finished tic-tac-mo game with uniform policy targets over each ply's legal moves."""
    states = states_of(moves)
    outcome = GAME.outcome(states[-1])
    assert outcome is not None, "the moves must end the game"
    policy = np.stack([GAME.legal_mask(s) / GAME.legal_mask(s).sum() for s in states[:-1]])
    vectors = root_vectors(len(moves))
    # The mover's own entry, as self-play records root_values next to root_vectors.
    mover_values = [vectors[3 * ply + GAME.to_play(s)] for ply, s in enumerate(states[:-1])]
    return GameRecord(
        game=GAME.name,
        game_id=game_id,
        model_sha256="",
        generation=0,
        moves=moves,
        policy=pack_policy(policy.astype(np.float32)),
        root_values=mover_values,
        outcome=outcome[0],
        plies=len(moves),
        num_actions=GAME.num_actions,
        search="gumbel",
        sims_per_move=8,
        players=3,
        outcomes=list(outcome),
        root_vectors=vectors,
    )


def random_moves(rng: np.random.Generator) -> list[int]:
    state, moves = GAME.initial(), []
    while GAME.outcome(state) is None:
        move = int(rng.choice(np.flatnonzero(GAME.legal_mask(state))))
        moves.append(move)
        state = GAME.apply(state, move)
    return moves


def movers_of(rec: GameRecord) -> list[int]:
    return [GAME.to_play(s) for s in states_of(list(rec.moves))[:-1]]


# --- the network -------------------------------------------------------------------------


def test_a_three_player_net_gives_a_bounded_value_per_player() -> None:
    torch.manual_seed(0)
    net = new_net(GAME, TINY)
    assert net.players == 3
    states = states_of(SEAT1_WINS)[:5]
    x = np.stack([GAME.encode(s) for s in states])
    masks = np.stack([GAME.legal_mask(s) for s in states])
    logits, values = net.eval()(torch.from_numpy(x))
    assert logits.shape == (5, 15) and values.shape == (5, 3)
    priors, evaluated = NetEvaluator(net, threads=1)(x, masks)
    assert priors.shape == (5, 15) and evaluated.shape == (5, 3)
    assert np.all(np.abs(evaluated) <= 1.0)
    np.testing.assert_allclose(evaluated, values.detach().numpy(), atol=1e-5)
    # Averaged over the board's symmetries the vector keeps its shape (turn order is kept).
    _, averaged = symmetrised(NetEvaluator(net, threads=1), GAME.symmetries())(x, masks)
    assert averaged.shape == (5, 3) and np.all(np.abs(averaged) <= 1.0)


def test_a_two_player_net_keeps_its_single_value() -> None:
    game = get_game("tictactoe")
    net = new_net(game, TINY)
    assert net.players == 2 and net.value_fc2.out_features == 1
    assert net(torch.zeros(4, *game.encoding_shape))[1].shape == (4,)
    with pytest.raises(ValueError, match="players"):
        PolicyValueNet(TINY, game.encoding_shape, game.num_actions, players=5)


def test_a_three_player_checkpoint_records_its_players() -> None:
    torch.manual_seed(1)
    net = new_net(GAME, TINY).eval()
    loaded = load_checkpoint(checkpoint_bytes(net, GAME.name, 4), GAME.name, players=3).net
    assert loaded.players == 3
    x = torch.from_numpy(GAME.encode(states_of(SEAT1_WINS)[3])[None])
    with torch.inference_mode():
        assert torch.equal(net(x)[1], loaded(x)[1])
    with pytest.raises(WrongGame, match="3 players"):
        load_checkpoint(checkpoint_bytes(net, GAME.name, 4), GAME.name, players=2)


def test_a_worker_loads_a_three_player_checkpoint_and_refuses_it_for_two_players() -> None:
    torch.manual_seed(1)
    blob = checkpoint_bytes(new_net(GAME, TINY).eval(), GAME.name, 4)
    evaluate = load_evaluator(blob, GAME, "x", threads=1)
    state = states_of(SEAT1_WINS)[3]
    mask = np.array(GAME.legal_mask(state), dtype=np.bool_)[None]  # a writable copy
    priors, values = evaluate(GAME.encode(state)[None], mask)
    assert priors.shape == (1, GAME.num_actions) and values.shape == (1, 3)
    two = PolicyValueNet(TINY, GAME.encoding_shape, GAME.num_actions, 2)  # tictacmo's shape
    blob2 = checkpoint_bytes(two.eval(), GAME.name, 4)
    with pytest.raises(UnloadableModel, match="players is 2, tictacmo needs 3"):
        load_evaluator(blob2, GAME, "y", threads=1)


@pytest.mark.parametrize("players", [True, "3", 5, 1.0])
def test_a_bad_player_count_is_malformed(players: object) -> None:
    payload = torch.load(
        io.BytesIO(checkpoint_bytes(new_net(GAME, TINY), GAME.name, 1)), weights_only=True
    )
    payload["players"] = players
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with pytest.raises(MalformedCheckpoint, match="players"):
        load_checkpoint(buffer.getvalue(), GAME.name)


def test_a_checkpoint_written_before_player_counts_loads_unchanged() -> None:
    """net2p_golden.* were written at commit 1e0bc65, before nets had a player count: a 1x8
    tictactoe net (seed 0, random batch-norm statistics and value-head weights), its raw and
    evaluator outputs on 6 positions. It loads as a two-player net and gives those outputs (to
    float rounding: another machine's kernels may round differently)."""
    data = (DATA / "net2p_golden.ckpt").read_bytes()
    assert b"players" not in data
    golden = np.load(DATA / "net2p_golden.npz")
    checkpoint = load_checkpoint(data, "tictactoe", players=2)
    net = checkpoint.net
    assert (net.players, checkpoint.generation, net.value_fc2.out_features) == (2, 3, 1)
    with torch.inference_mode():
        logits, values = net(torch.from_numpy(golden["encodings"]))
    np.testing.assert_allclose(logits.numpy(), golden["logits"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(values.numpy(), golden["values"], rtol=0, atol=1e-6)
    priors, evaluated = NetEvaluator(net, threads=1)(golden["encodings"], golden["masks"])
    assert evaluated.shape == golden["evaluator_values"].shape
    np.testing.assert_allclose(priors, golden["priors"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(evaluated, golden["evaluator_values"], rtol=0, atol=1e-6)
    # Written again it records 2 players and reads back to the same weights.
    again = load_checkpoint(checkpoint_bytes(net, "tictactoe", 3), "tictactoe")
    assert again.sha256 == checkpoint.sha256 and again.net.players == 2


# --- value targets -----------------------------------------------------------------------


def test_value_targets_turn_the_outcome_to_each_movers_view() -> None:
    rec = record(SEAT1_WINS)
    assert rec.outcomes == [-1.0, 1.0, -1.0]
    targets = value_targets(GAME, rec, movers_of(rec))
    assert targets.shape == (8, 3) and targets.dtype == np.float32
    # Entry j is the player j seats after the mover.
    assert targets[0].tolist() == [-1.0, 1.0, -1.0]  # seat 0 moves: seats 0, 1, 2
    assert targets[1].tolist() == [1.0, -1.0, -1.0]  # seat 1 moves: seats 1, 2, 0
    assert targets[2].tolist() == [-1.0, -1.0, 1.0]  # seat 2 moves: seats 2, 0, 1
    assert targets[7].tolist() == [1.0, -1.0, -1.0]  # seat 1's winning move
    assert positions_of(GAME, rec).values.tolist() == targets.tolist()


def test_value_targets_mix_in_the_root_vector_turned_alike() -> None:
    rec = record(SEAT1_WINS)
    targets = value_targets(GAME, rec, movers_of(rec), root_value_weight=0.5)
    # Ply 2, seat 2 to move: outcome [-1, -1, +1] and root vector by seat [2/16, -1/4, 3/4]
    # turned to [3/4, 2/16, -1/4]; half of each.
    assert targets[2].tolist() == [-0.125, -0.4375, 0.375]
    # Ply 4, seat 1 to move: outcome [+1, -1, -1], root [-1/4, 3/4, 4/16].
    assert targets[4].tolist() == [0.375, -0.125, -0.375]


def test_positions_of_a_three_player_record() -> None:
    rec = record(SEAT2_WINS)
    assert rec.outcomes == [-1.0, -1.0, 1.0]
    positions = positions_of(GAME, rec)
    assert positions.values.shape == (9, 3) and positions.encodings.shape == (9, 3, 3, 5)
    assert positions.values[2].tolist() == [1.0, -1.0, -1.0]  # the winner to move
    assert positions.values[3].tolist() == [-1.0, -1.0, 1.0]  # seat 0: seats 0, 1, 2
    assert positions.values[4].tolist() == [-1.0, 1.0, -1.0]  # seat 1: seats 1, 2, 0
    trimmed = msgspec.structs.replace(rec, full_search=[ply % 2 == 0 for ply in range(9)])
    assert positions_of(GAME, trimmed).values.tolist() == positions.values[::2].tolist()


def test_two_player_targets_are_unchanged() -> None:
    game = get_game("tictactoe")
    moves = [0, 3, 1, 4, 2]  # X completes the top row
    states = [game.initial()]
    for move in moves:
        states.append(game.apply(states[-1], move))
    policy = np.stack([game.legal_mask(s) / game.legal_mask(s).sum() for s in states[:-1]])
    roots = [0.3, -0.7, 0.1, 0.9, -0.2]
    rec = GameRecord(
        game="tictactoe",
        game_id="g",
        model_sha256="",
        generation=0,
        moves=moves,
        policy=pack_policy(policy.astype(np.float32)),
        root_values=roots,
        outcome=1.0,
        plies=5,
        num_actions=9,
        search="gumbel",
        sims_per_move=8,
    )
    values = positions_of(game, rec, root_value_weight=0.3).values
    # The expression replay used before N players, value for value.
    before = [(1.0 - 0.3) * (1.0 if ply % 2 == 0 else -1.0) + 0.3 * roots[ply] for ply in range(5)]
    assert values.shape == (5,) and np.array_equal(values, np.asarray(before, np.float32))


def test_a_record_with_another_player_count_is_rejected() -> None:
    rec = record(SEAT1_WINS)
    with pytest.raises(ValueError, match="players"):
        value_targets(get_game("tictactoe"), rec, movers_of(rec))


# --- augmentation and training ---------------------------------------------------------


def test_symmetries_map_positions_policies_and_keep_value_vectors() -> None:
    positions = positions_of(GAME, record(SEAT2_WINS))
    window = ReplayWindow(1, max_reuse=1000)
    window.add(positions)
    batch = window.sample(9, np.random.default_rng(0))
    assert batch is not None
    seen: set[str] = set()
    for seed in range(8):
        augmented = augment(GAME, batch, np.random.default_rng(seed))
        np.testing.assert_array_equal(augmented.values, batch.values)
        for row in range(len(batch.values)):
            seen.add(_check_image(batch.encodings[row], batch.policies[row], augmented, row))
    assert seen == {s.name for s in GAME.symmetries()}


def _check_image(encoding: Any, policy: Any, augmented: Any, row: int) -> str:
    """The symmetry that maps `encoding` onto the augmented row: its policy must be the
    original's moved along (uniform over the image position's legal moves)."""
    for sym in GAME.symmetries():
        if np.array_equal(sym.planes(encoding), augmented.encodings[row]):
            mapped = np.zeros_like(policy)
            mapped[sym.actions] = policy
            np.testing.assert_array_equal(augmented.policies[row], mapped)
            image_legal = augmented.encodings[row].sum(axis=0).ravel() == 0
            np.testing.assert_allclose(mapped, image_legal / image_legal.sum(), atol=1e-6)
            return sym.name
    raise AssertionError(f"row {row} is no symmetry's image")


def test_a_symmetry_of_the_moves_encodes_as_the_symmetry_of_the_planes() -> None:
    states = states_of(SEAT2_WINS[:6])
    for sym in GAME.symmetries():
        image = states_of([int(sym.actions[a]) for a in SEAT2_WINS[:6]])
        for state, mapped in zip(states, image, strict=True):
            np.testing.assert_array_equal(sym.planes(GAME.encode(state)), GAME.encode(mapped))


def test_training_on_three_player_records_lowers_the_value_loss() -> None:
    rng = np.random.default_rng(3)
    window = ReplayWindow(64, max_reuse=1000)
    for index in range(12):
        rec = record(random_moves(rng), game_id=f"g{index}")
        window.add(positions_of(GAME, rec, root_value_weight=0.25))
    torch.manual_seed(0)
    net = new_net(GAME, TINY)
    before = _value_loss(net, window)
    settings = TrainSettings(batch_size=64, learning_rate=0.01)
    report = train(net, GAME, window, 40, settings, rng)
    assert report.steps == 40 and report.skipped == 0
    after = _value_loss(net, window)
    assert after < 0.8 * before, (before, after)


def test_training_refuses_a_net_for_another_player_count() -> None:
    window = ReplayWindow(1, max_reuse=1)
    window.add(positions_of(GAME, record(SEAT2_WINS)))
    net = new_net(get_game("tictactoe"), TINY)
    with pytest.raises(ValueError, match="2 players"):
        train(net, GAME, window, 1, TrainSettings(), np.random.default_rng(0))


def _value_loss(net: PolicyValueNet, window: ReplayWindow) -> float:
    """Mean squared error over every value entry of every position in the window."""
    games: list[GamePositions] = list(window.games.values())
    x = torch.from_numpy(np.concatenate([g.encodings for g in games]))
    targets: npt.NDArray[np.float32] = np.concatenate([g.values for g in games])
    with torch.inference_mode():
        values = net.eval()(x)[1].numpy()
    return float(np.mean((values - targets) ** 2))
