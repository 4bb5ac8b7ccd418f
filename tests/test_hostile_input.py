"""Hostile input: every wire schema decodes random and mutated bytes without crashing, and every
rejection names the field at fault (JSON control messages and msgpack game records alike)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import BadMessage, decode, encode
from schemas.export import wire_messages
from schemas.game import MAX_RECORD_BYTES, GameRecord, decode_record, encode_record

KINDS = wire_messages()


def example_value(t: msgspec.inspect.Type) -> Any:
    """A valid value of a msgspec type: the smallest that is not empty."""
    simple: dict[type, Any] = {
        msgspec.inspect.StrType: "x",
        msgspec.inspect.IntType: 1,
        msgspec.inspect.FloatType: 1.5,
        msgspec.inspect.BoolType: True,
        msgspec.inspect.BytesType: b"\x00\x01",
    }
    if type(t) in simple:
        return simple[type(t)]
    if isinstance(t, msgspec.inspect.ListType):
        return [example_value(t.item_type)]
    if isinstance(t, msgspec.inspect.DictType):
        return {example_value(t.key_type): example_value(t.value_type)}
    if isinstance(t, msgspec.inspect.LiteralType):
        return t.values[0]
    if isinstance(t, msgspec.inspect.UnionType):
        return example_value(
            next(u for u in t.types if not isinstance(u, msgspec.inspect.NoneType))
        )
    if isinstance(t, msgspec.inspect.StructType):
        return example(t.cls)
    raise AssertionError(f"no example for {t}")


def example(kind: type[Any]) -> Any:
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    values = {f.name: example_value(f.type) for f in info.fields}
    if kind is GameRecord:  # its fields must agree: one ply of one action
        values |= {"plies": 1, "num_actions": 1, "moves": [0], "outcome": 1.0}
        values |= {"policy": b"\x00\x00\x80\x3f"}
    return kind(**values)


def codec_of(kind: type[Any]) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    if kind is GameRecord:
        return encode_record, decode_record
    return encode, lambda data: decode(data, kind, subject="test")


def test_every_wire_message_has_an_example_that_round_trips() -> None:
    assert len(KINDS) >= 15
    for kind in KINDS:
        enc, dec = codec_of(kind)
        assert dec(enc(example(kind))) == example(kind), kind


@settings(max_examples=600, deadline=None)
@given(kind=st.sampled_from(KINDS), data=st.binary(max_size=400))
def test_random_bytes_are_rejected_by_field_never_crash(kind: type[Any], data: bytes) -> None:
    _, dec = codec_of(kind)
    try:
        decoded = dec(data)
    except BadMessage as e:
        assert e.field.startswith("$") and e.field in str(e)
    else:
        assert isinstance(decoded, kind)


@settings(max_examples=1500, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 10_000) | st.none(),
)
def test_mutated_messages_are_rejected_by_field_or_decoded_whole(
    kind: type[Any], edits: list[tuple[int, int]], cut: int | None
) -> None:
    enc, dec = codec_of(kind)
    data = bytearray(enc(example(kind)))
    for position, byte in edits:
        data[position % len(data)] = byte
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    try:
        decoded = dec(bytes(data))
    except BadMessage as e:
        assert e.field.startswith("$") and e.field in str(e)
    else:
        assert isinstance(decoded, kind)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: {**d, "moves": ["e4"]}, "$.moves[0]"),
        (lambda d: {**d, "plies": "many"}, "$.plies"),
        (lambda d: {k: v for k, v in d.items() if k != "game_id"}, "$.game_id"),
    ],
)
def test_a_bad_game_record_names_its_field(
    mutate: Callable[[dict[str, Any]], dict[str, Any]], field: str
) -> None:
    doc = msgspec.msgpack.decode(encode_record(example(GameRecord)))
    with pytest.raises(BadMessage) as err:
        decode_record(msgspec.msgpack.encode(mutate(doc)))
    assert err.value.field == field


def test_an_oversized_game_record_is_refused_before_parsing() -> None:
    with pytest.raises(BadMessage, match="exceeds"):
        decode_record(b"\x00" * (MAX_RECORD_BYTES + 1))
