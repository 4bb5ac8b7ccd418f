"""Decoding treats bus data as untrusted: deep nesting, negative counts, NaN and infinity,
a player against itself and floods of entries are each a BadMessage naming the field, quickly;
what the code itself writes still decodes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pytest

from schemas.codec import (
    MAX_CONTROL_BYTES,
    MAX_DEPTH,
    BadMessage,
    GameValue,
    NonNegative,
    decode,
    encode,
)
from schemas.control import (
    MAX_SERVICES,
    NodeStatus,
    Resources,
    ServicePulse,
    ServiceState,
)
from schemas.game import MAX_PLIES, GameRecord, decode_record, encode_record, pack_policy
from schemas.jobs import EvalResult, PlayerSpec, SelfplayJob, TrainJob
from shared.node.launcher import ROLE_SERVICES

SHA_A, SHA_B = "ab" * 32, "cd" * 32
NOW = 1.8e9


def status(**changes: Any) -> NodeStatus:
    every_service = sorted({s for services in ROLE_SERVICES.values() for s in services})
    work = {"games": 1200.0, "simulations": 9.6e6, "cpu_s": 5321.125}
    services = [
        ServiceState(
            name=name,
            alive=True,
            pid=4242,
            lag_p50_ms=0.3,
            lag_max_ms=12.5,
            last_pulse_age_s=0.4,
            counters=work,
            doing="tictactoe-sp-0123456789ab",
        )
        for name in ["heartbeat", *every_service]
    ]
    base = NodeStatus(
        node="gpu-node_7",
        roles=sorted(ROLE_SERVICES),
        services=services,
        version="0.1.0",
        resources=Resources(64, 2**40, ["NVIDIA H100 80GB HBM3"] * 8),
        hostname="worker-7.cluster.example.org",
        started_at=NOW,
        sent_at=NOW + 3600,
    )
    return msgspec.structs.replace(base, **changes)


def result(**changes: Any) -> EvalResult:
    base = EvalResult(
        job_id="tictactoe-m3-1",
        game="tictactoe",
        kind="match",
        a=PlayerSpec("gen4", SHA_A, sims=64),
        b=PlayerSpec("gen3", SHA_B, sims=64),
        wins_a=12,
        draws=5,
        wins_b=3,
        term=7,
        finished_at=NOW,
        group="m3",
        elapsed_s=41.5,
        cpu_s=40.25,
        waited_s=0.5,
    )
    return msgspec.structs.replace(base, **changes)


def record(**changes: Any) -> GameRecord:
    policy = np.full((3, 9), 1 / 9, dtype=np.float32)
    policy[1] = np.eye(9, dtype=np.float32)[4]
    base = GameRecord(
        game="tictactoe",
        game_id="sp-0123456789ab-17",
        model_sha256=SHA_A,
        generation=4,
        moves=[4, 0, 8],
        policy=pack_policy(policy),
        root_values=[0.25, -1.0, 1.0],
        outcome=0.0,
        plies=3,
        num_actions=9,
        search="gumbel",
        sims_per_move=64,
        would_resign=1,
        started_at=NOW,
        seconds=0.75,
        nn_evals=190,
    )
    return msgspec.structs.replace(base, **changes)


def json_with(message: msgspec.Struct, edit: Callable[[dict[str, Any]], Any]) -> bytes:
    """The message as JSON after `edit` changed its plain-data form in place."""
    doc = msgspec.json.decode(encode(message))
    edit(doc)
    return msgspec.json.encode(doc)


def msgpack_with(edit: Callable[[dict[str, Any]], Any]) -> bytes:
    doc = msgspec.msgpack.decode(encode_record(record()))
    edit(doc)
    return msgspec.msgpack.encode(doc)


def rejected(decoding: Callable[[], Any]) -> BadMessage:
    """The BadMessage `decoding` raises, which must name its field, within a second."""
    started = time.perf_counter()
    with pytest.raises(BadMessage) as err:
        decoding()
    assert time.perf_counter() - started < 1.0
    assert err.value.field.startswith("$") and err.value.field in str(err.value)
    return err.value


class Bounded(msgspec.Struct):
    finite: NonNegative = 0.0
    value: GameValue = 0.0


@pytest.mark.parametrize(
    ("field", "number"),
    [("finite", math.nan), ("finite", math.inf), ("value", math.nan), ("value", -math.inf)],
)
def test_msgspec_bounds_reject_nan_and_infinity(field: str, number: float) -> None:
    """What the value types rely on: NaN fails every bound, infinity fails an upper one."""
    data = msgspec.msgpack.encode({field: number})
    with pytest.raises(msgspec.ValidationError, match=f"at `\\$.{field}`"):
        msgspec.msgpack.decode(data, type=Bounded)
    zero = msgspec.msgpack.encode({field: -0.0})
    assert msgspec.msgpack.decode(zero, type=Bounded) == Bounded(**{field: 0.0})


def test_what_the_code_writes_decodes() -> None:
    assert decode(encode(status()), NodeStatus) == status()
    assert decode(encode(result()), EvalResult) == result()
    assert decode_record(encode_record(record())) == record()
    random_vs_random = result(a=PlayerSpec("a", agent="random"), b=PlayerSpec("b", agent="random"))
    assert decode(encode(random_vs_random), EvalResult) == random_vs_random


@pytest.mark.parametrize("where", ["an unknown key", "a known field", "a counter"])
def test_json_nested_100k_deep_is_rejected_at_the_root(where: str) -> None:
    deep = msgspec.Raw(b"[" * 100_000 + b"]" * 100_000)
    edits: dict[str, Callable[[dict[str, Any]], Any]] = {
        "an unknown key": lambda d: d.update(gpu_node_7=deep),
        "a known field": lambda d: d.update(roles=deep),
        "a counter": lambda d: d["services"][0]["counters"].update(games=deep),
    }
    data = json_with(status(), edits[where])
    assert len(data) < MAX_CONTROL_BYTES
    bad = rejected(lambda: decode(data, NodeStatus, subject="$KV.nodes.n1"))
    assert (bad.field, bad.reason) == ("$", f"nested deeper than {MAX_DEPTH} levels")


def test_nesting_is_bounded_at_max_depth_outside_strings_only() -> None:
    def nest(levels: int) -> bytes:  # the message itself is the first level
        inner = msgspec.Raw(b"[" * (levels - 1) + b"]" * (levels - 1))
        return json_with(status(), lambda d: d.update(extra=inner))

    assert decode(nest(MAX_DEPTH), NodeStatus) == status()
    assert rejected(lambda: decode(nest(MAX_DEPTH + 1), NodeStatus)).field == "$"
    noisy = '\\"' + "[{" * 5_000  # brackets and an escaped quote inside a string
    message = status(hostname=noisy[:200], services=[])
    assert decode(encode(message), NodeStatus) == message


def test_the_depth_scan_of_a_worst_case_message_is_cheap() -> None:
    # Too deep everywhere without a long run of openers: every peeling pass does work.
    zigzag = msgspec.Raw(b"[[]," * MAX_DEPTH + b"0" + b"]" * MAX_DEPTH)
    data = json_with(status(), lambda d: d.update(extra=[zigzag] * 1_500))
    assert len(data) > MAX_CONTROL_BYTES // 2
    assert rejected(lambda: decode(data, NodeStatus)).field == "$"


def test_msgpack_nested_100k_deep_in_an_unknown_field_is_rejected_at_the_root() -> None:
    deep = msgspec.Raw(b"\x91" * 100_000 + b"\x90")
    bad = rejected(lambda: decode_record(msgpack_with(lambda d: d.update(extra=deep))))
    assert bad.field == "$" and "nested" in bad.reason


def test_msgpack_nesting_in_a_known_field_names_it() -> None:
    deep = msgspec.Raw(b"\x91" * 100_000 + b"\x90")
    bad = rejected(lambda: decode_record(msgpack_with(lambda d: d.update(moves=[deep]))))
    assert bad.field == "$.moves[0]"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wins_a", -1),
        ("draws", -1),
        ("wins_b", -(2**63)),
        ("term", -1),
        ("finished_at", -1.0),
        ("elapsed_s", -0.5),
        ("finished_at", msgspec.Raw(b"1e999")),  # JSON's way to say infinity
        ("cpu_s", msgspec.Raw(b"-1e999")),
    ],
)
def test_eval_result_counts_and_times_are_in_range(field: str, value: Any) -> None:
    data = json_with(result(), lambda d: d.update({field: value}))
    assert rejected(lambda: decode(data, EvalResult)).field == f"$.{field}"


@pytest.mark.parametrize(
    ("kind", "message", "field", "value"),
    [
        (
            SelfplayJob,
            SelfplayJob(
                job_id="j",
                game="tictactoe",
                model_sha256=SHA_A,
                generation=3,
                games=10,
                sims=32,
                term=1,
            ),
            "games",
            -10,
        ),
        (
            SelfplayJob,
            SelfplayJob(
                job_id="j",
                game="tictactoe",
                model_sha256=SHA_A,
                generation=3,
                games=10,
                sims=32,
                term=1,
            ),
            "sims",
            10**9,
        ),
        (
            SelfplayJob,
            SelfplayJob(
                job_id="j",
                game="tictactoe",
                model_sha256=SHA_A,
                generation=3,
                games=10,
                sims=32,
                term=1,
            ),
            "generation",
            -1,
        ),
        (
            SelfplayJob,
            SelfplayJob(
                job_id="j",
                game="tictactoe",
                model_sha256=SHA_A,
                generation=3,
                games=10,
                sims=32,
                term=1,
            ),
            "resign_value",
            -1.5,
        ),
        (
            SelfplayJob,
            SelfplayJob(
                job_id="j",
                game="tictactoe",
                model_sha256=SHA_A,
                generation=3,
                games=10,
                sims=32,
                term=1,
            ),
            "model_sha256",
            "../x",
        ),
        (
            TrainJob,
            TrainJob(
                job_id="t", game="tictactoe", generation=4, parent_sha256=SHA_A, steps=300, term=1
            ),
            "steps",
            -300,
        ),
        (
            TrainJob,
            TrainJob(
                job_id="t", game="tictactoe", generation=4, parent_sha256=SHA_A, steps=300, term=1
            ),
            "generation",
            -1,
        ),
    ],
)
def test_job_sizes_and_values_are_in_range(
    kind: type[msgspec.Struct], message: msgspec.Struct, field: str, value: Any
) -> None:
    data = json_with(message, lambda d: d.update({field: value}))
    assert rejected(lambda: decode(data, kind)).field == f"$.{field}"


def test_a_negative_count_deep_inside_names_its_path() -> None:
    data = json_with(status(), lambda d: d["services"][2].update(pid=-1))
    assert rejected(lambda: decode(data, NodeStatus)).field == "$.services[2].pid"
    data = json_with(status(), lambda d: d["services"][0]["counters"].update(games=-1.0))
    assert rejected(lambda: decode(data, NodeStatus)).field == "$.services[0].counters[...]"


@pytest.mark.parametrize(
    ("field", "value", "at"),
    [
        ("root_values", [0.25, float("nan"), 1.0], "$.root_values[1]"),
        ("root_values", [0.25, -1.0, float("inf")], "$.root_values[2]"),
        ("root_values", [0.25, -1.0, 1.5], "$.root_values[2]"),
        ("outcome", float("nan"), "$.outcome"),
        ("seconds", float("inf"), "$.seconds"),
        ("started_at", float("nan"), "$.started_at"),
        ("generation", -4, "$.generation"),
        ("plies", -3, "$.plies"),
        ("sims_per_move", -64, "$.sims_per_move"),
        ("nn_evals", -1, "$.nn_evals"),
        ("would_resign", 2, "$.would_resign"),
    ],
)
def test_game_record_numbers_are_finite_and_in_range(field: str, value: Any, at: str) -> None:
    data = msgpack_with(lambda d: d.update({field: value}))
    assert rejected(lambda: decode_record(data)).field == at


@pytest.mark.parametrize("target", [float("nan"), float("inf"), -0.25, 1.5])
def test_game_record_policy_targets_are_probabilities(target: float) -> None:
    policy = np.full((3, 9), 1 / 9, dtype=np.float32)
    policy[2, 5] = target
    data = msgpack_with(lambda d: d.update(policy=pack_policy(policy)))
    assert rejected(lambda: decode_record(data)).field == "$.policy"


@pytest.mark.parametrize(
    "b",
    [
        PlayerSpec("gen4", SHA_B, sims=64),  # the same name
        PlayerSpec("gen4-again", SHA_A, sims=800),  # the same model under another name
        PlayerSpec("gen4", agent="mcts:200"),  # a baseline under the model's name
    ],
)
def test_a_player_against_itself_is_rejected_naming_b(b: PlayerSpec) -> None:
    data = json_with(result(), lambda d: d.update(b=msgspec.to_builtins(b)))
    bad = rejected(lambda: decode(data, EvalResult))
    assert bad.field == "$.b" and "same player" in bad.reason


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.update(services=d["services"][:1] * 1_000), "$.services"),
        (lambda d: d.update(roles=[f"r{i}" for i in range(100)]), "$.roles"),
        (lambda d: d["resources"].update(gpus=["gpu"] * 10_000), "$.resources.gpus"),
        (lambda d: d.update(node="n" * 65), "$.node"),
        (lambda d: d.update(hostname="h" * 100_000), "$.hostname"),
        (lambda d: d["services"][0].update(name="s" * 65), "$.services[0].name"),
    ],
)
def test_node_status_floods_are_rejected(edit: Callable[[dict[str, Any]], Any], field: str) -> None:
    data = json_with(status(), edit)
    assert len(data) < MAX_CONTROL_BYTES  # the bound, not the size cap, rejects it
    assert rejected(lambda: decode(data, NodeStatus)).field == field


def test_a_status_at_the_service_bound_decodes() -> None:
    services = [
        ServiceState(name=f"service-{i}", alive=True, pid=i + 1) for i in range(MAX_SERVICES)
    ]
    assert decode(encode(status(services=services)), NodeStatus).services == services


def test_a_pulse_flooding_counters_is_rejected() -> None:
    pulse = ServicePulse(
        node="n1",
        service="selfplay",
        pid=42,
        lag_p50_ms=0.5,
        lag_max_ms=3.0,
        started_at=NOW,
        sent_at=NOW + 1,
        counters={"games": 3.0},
    )
    data = json_with(pulse, lambda d: d.update(counters={f"c{i}": 1.0 for i in range(1000)}))
    assert rejected(lambda: decode(data, ServicePulse)).field == "$.counters"


def test_game_record_per_ply_lists_are_bounded() -> None:
    data = msgpack_with(lambda d: d.update(moves=[0] * (MAX_PLIES + 1)))
    assert rejected(lambda: decode_record(data)).field == "$.moves"


class Checked(msgspec.Struct, frozen=True):
    """A schema whose own check fails with something other than a ValueError."""

    count: int

    def __post_init__(self) -> None:
        if self.count == 0:
            raise ZeroDivisionError("Checked.count must not be 0")
        if self.count > 10:
            raise KeyError(self.count)


@pytest.mark.parametrize(
    ("data", "field", "error"),
    [
        (b'{"count": 0}', "$.count", "ZeroDivisionError"),
        (b'{"count": 11}', "$", "KeyError"),
    ],
)
def test_any_error_a_check_raises_is_a_bad_message(data: bytes, field: str, error: str) -> None:
    bad = rejected(lambda: decode(data, Checked, subject="test"))
    assert bad.field == field and bad.reason.startswith(error)
