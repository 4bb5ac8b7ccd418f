from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.learn.games.connect4 import GAME as CONNECT4
from shared.learn.games.tictactoe import GAME as TICTACTOE
from shared.learn.inference import NetEvaluator, symmetrised, uniform_evaluator
from shared.learn.net import (
    BadDigest,
    CheckpointError,
    MalformedCheckpoint,
    NetConfig,
    PolicyValueNet,
    WrongGame,
    checkpoint_bytes,
    inference_copy,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)

TINY = NetConfig(blocks=1, channels=8, value_hidden=8)


def tiny_net(seed: int = 0) -> PolicyValueNet:
    torch.manual_seed(seed)
    net = PolicyValueNet(TINY, TICTACTOE.encoding_shape, TICTACTOE.num_actions).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so they must round-trip too
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
                module.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
    return net


def positions(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    states = [TICTACTOE.parse(t) for t in texts]
    x = np.stack([TICTACTOE.encode(s) for s in states])
    return x, np.stack([TICTACTOE.legal_mask(s) for s in states])


def test_default_architecture_and_output_shapes() -> None:
    assert NetConfig() == NetConfig(blocks=4, channels=64)
    net = PolicyValueNet(NetConfig(), CONNECT4.encoding_shape, CONNECT4.num_actions)
    logits, value = net(torch.zeros(5, *CONNECT4.encoding_shape))
    assert logits.shape == (5, 7) and value.shape == (5,)


def test_config_rejects_bad_fields_by_name() -> None:
    with pytest.raises(ValueError, match=r"NetConfig\.channels"):
        NetConfig(channels=0)


def test_evaluator_masks_priors_and_bounds_values() -> None:
    x, masks = positions(["", "15", "1524"])
    priors, values = NetEvaluator(tiny_net(), threads=1)(x, masks)
    assert torch.get_num_threads() == 1
    assert priors.shape == (3, 9) and priors.dtype == np.float32
    assert np.allclose(priors.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(priors[~masks] == 0.0)
    assert np.all(np.abs(values) <= 1.0)


def test_uniform_evaluator() -> None:
    _, masks = positions(["159"])
    priors, values = uniform_evaluator(np.zeros((1, 3, 3, 3), np.float32), masks)
    assert np.allclose(priors[0][masks[0]], 1 / 6) and values[0] == 0.0


def test_symmetrised_evaluator_is_equivariant() -> None:
    evaluate = symmetrised(NetEvaluator(tiny_net(), threads=1), TICTACTOE.symmetries())
    x, masks = positions(["12", "159", "2"])
    priors, values = evaluate(x, masks)
    for sym in TICTACTOE.symmetries():
        image_masks = np.zeros_like(masks)
        image_masks[:, sym.actions] = masks
        p_img, v_img = evaluate(sym.planes(x), image_masks)
        assert np.allclose(p_img[:, sym.actions], priors, atol=1e-5), sym.name
        assert np.allclose(v_img, values, atol=1e-5), sym.name


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net = tiny_net()
    path = tmp_path / "net.ckpt"
    digest = save_checkpoint(path, net, "tictactoe", generation=7)
    loaded = load_checkpoint(path, "tictactoe")
    assert (loaded.game, loaded.generation, loaded.config) == ("tictactoe", 7, TINY)
    assert loaded.sha256 == digest == weights_sha256(net) == weights_sha256(loaded.net)
    x, masks = positions(["", "5"])
    a, b = NetEvaluator(net)(x, masks), NetEvaluator(loaded.net)(x, masks)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert weights_sha256(tiny_net(seed=1)) != digest


def test_wrong_game_rejected() -> None:
    data = checkpoint_bytes(tiny_net(), "tictactoe", 1)
    with pytest.raises(WrongGame, match="connect4"):
        load_checkpoint(data, "connect4")


def test_bad_digest_rejected() -> None:
    payload = torch.load(
        io.BytesIO(checkpoint_bytes(tiny_net(), "tictactoe", 1)), weights_only=True
    )
    payload["state_dict"]["policy_fc.bias"][0] += 1.0
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with pytest.raises(BadDigest):
        load_checkpoint(buffer.getvalue(), "tictactoe")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


@pytest.mark.parametrize("kind", ["garbage", "code", "list", "format", "shape"])
def test_malformed_rejected_without_running_code(kind: str) -> None:
    payload = torch.load(
        io.BytesIO(checkpoint_bytes(tiny_net(), "tictactoe", 1)), weights_only=True
    )
    if kind == "format":
        payload["format"] = "other"
    if kind == "shape":
        payload["config"]["channels"] = 16
    obj = {"code": {"evil": _Evil()}, "list": [1, 2]}.get(kind, payload)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = b"not a checkpoint" if kind == "garbage" else buffer.getvalue()
    with pytest.raises(MalformedCheckpoint):
        load_checkpoint(data, "tictactoe")
    assert issubclass(MalformedCheckpoint, CheckpointError)


def test_inference_copy_folds_batch_norm_without_changing_outputs() -> None:
    net = tiny_net()
    fused = inference_copy(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    x = torch.from_numpy(positions(["", "159", "24"])[0])
    with torch.inference_mode():
        (p0, v0), (p1, v1) = net(x), fused(x)
    assert torch.allclose(p0, p1, atol=1e-5) and torch.allclose(v0, v1, atol=1e-5)
