"""Wire schemas: strict decoding that names the field, versions, and the committed JSON Schema."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import names
from schemas.codec import MAX_CONTROL_BYTES, BadMessage, decode, encode
from schemas.control import CONTROL_MESSAGES, Lease, NodeStatus, Resources, ServiceState
from schemas.export import schema_files, wire_messages

ROOT = Path(__file__).resolve().parents[1]


def test_committed_json_schemas_are_current() -> None:
    committed = {p.name: p.read_bytes() for p in (ROOT / "schemas" / "json").glob("*.json")}
    fresh = schema_files()
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    assert not stale, f"schemas/json is stale for {stale}: run `make schemas`"


def test_every_message_is_frozen_and_version_tagged() -> None:
    for message in wire_messages():
        config = message.__struct_config__
        assert config.frozen, message
        assert isinstance(config.tag, str) and config.tag.rsplit(".", 1)[-1].startswith("v")


def test_round_trip() -> None:
    status = NodeStatus(
        node="n1",
        roles=["coordinator"],
        services=[
            ServiceState(
                name="leader",
                alive=True,
                pid=12,
                lag_p50_ms=0.5,
                lag_max_ms=3.0,
                last_pulse_age_s=0.2,
            )
        ],
        version="0.1.0",
        resources=Resources(2, 2**30, ["mps"]),
        hostname="h",
        started_at=1.0,
        sent_at=2.0,
    )
    assert decode(encode(status), NodeStatus) == status


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b'{"type":"conclave.lease.v2","node":"a"}', "$.type"),
        (b'{"type":"conclave.lease.v1","node":3}', "$.node"),
        (
            b'{"type":"conclave.lease.v1","node":"a","instance":"i","term":0,"acquired_at":1}',
            "$.ttl_s",
        ),
        (b"[1,2", "$"),
        (b"null", "$"),
    ],
)
def test_bad_input_names_the_field(data: bytes, field: str) -> None:
    with pytest.raises(BadMessage) as err:
        decode(data, Lease, subject="s")
    assert err.value.field == field and field in str(err.value)


def test_oversized_messages_are_refused_before_parsing() -> None:
    with pytest.raises(BadMessage, match="exceeds"):
        decode(b" " * (MAX_CONTROL_BYTES + 1), Lease)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), kind=st.sampled_from(CONTROL_MESSAGES))
def test_random_bytes_never_crash_the_decoder(data: bytes, kind: type[msgspec.Struct]) -> None:
    try:
        decode(data, kind)
    except BadMessage as e:
        assert e.field.startswith("$")


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 200), byte=st.integers(0, 255))
def test_mutated_messages_are_rejected_with_a_field_or_decoded_whole(
    position: int, byte: int
) -> None:
    good = bytearray(
        encode(Lease(node="node-1", instance="abc", term=4, acquired_at=10.0, ttl_s=3))
    )
    good[position % len(good)] = byte
    try:
        lease = decode(bytes(good), Lease)
    except BadMessage as e:
        assert e.field.startswith("$")
    else:
        assert isinstance(lease, Lease)


def test_bad_node_ids_are_refused_by_name() -> None:
    with pytest.raises(names.BadName, match="node id"):
        names.node_key("a.b")
    assert names.node_key("gpu-node_7") == "gpu-node_7"
