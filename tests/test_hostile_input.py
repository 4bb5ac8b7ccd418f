"""Hostile input: every wire schema decodes random and mutated bytes without crashing, and every
rejection names the field at fault (JSON control messages and msgpack game records alike); a
message that does decode holds no negative count, no NaN or infinity, no flood."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import BadMessage, decode, encode
from schemas.export import wire_messages
from schemas.game import MAX_PLIES, MAX_RECORD_BYTES, GameRecord, decode_record, encode_record
from schemas.jobs import PlayerSpec

KINDS = wire_messages()


def example_value(t: msgspec.inspect.Type) -> Any:
    """A valid value of a msgspec type: the smallest that is not empty."""
    simple: dict[type, Any] = {
        msgspec.inspect.BoolType: True,
        msgspec.inspect.BytesType: b"\x00\x01",
    }
    if type(t) in simple:
        return simple[type(t)]
    if isinstance(t, msgspec.inspect.StrType):
        return next(s for s in ("x", "ab" * 32) if re.search(t.pattern or "", s))
    if isinstance(t, msgspec.inspect.IntType):
        return 1
    if isinstance(t, msgspec.inspect.FloatType):
        return next(x for x in (1.5, 0.5) if x <= (math.inf if t.le is None else t.le))
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
        values |= {"players": 2, "outcomes": [1.0, -1.0], "root_vectors": [0.5, -0.5]}
    if isinstance(values.get("b"), PlayerSpec):  # the two sides of a match are two players
        values["b"] = PlayerSpec("y", agent="y")
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
    assert_decodes_bounded_or_names_the_field(kind, data)


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


def document(kind: type[Any]) -> dict[str, Any]:
    """The example of `kind` as the plain data a hostile writer would edit."""
    if kind is GameRecord:
        doc: dict[str, Any] = msgspec.msgpack.decode(encode_record(example(kind)))
        return doc
    return dict(msgspec.json.decode(encode(example(kind))))


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a document below its root, containers included."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if prefix or key != "type":  # the tag has its own tests
            yield (*prefix, key)
        if isinstance(item, dict | list):
            yield from paths(item, (*prefix, key))


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of `doc` with `value` at `path` (which may add a key)."""
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = replaced(doc[path[0]], path[1:], value) if path[1:] else value
    return copy


def at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else doc[key]
    return doc


def flood(value: Any, n: int) -> Any:
    """`value` grown to n entries (a list or dict), or repeated n times in a list."""
    if isinstance(value, dict) and value:
        first = next(iter(value.values()))
        return {f"k{i}": first for i in range(n)}
    if isinstance(value, list) and value:
        return value[:1] * n
    return [value] * n


def nested(depth: int, *, msgpack: bool) -> msgspec.Raw:
    if msgpack:
        return msgspec.Raw(b"\x91" * depth + b"\x90")
    return msgspec.Raw(b"[" * depth + b"]" * depth)


def as_json(value: Any) -> Any:
    """JSON has no NaN or infinity: send what a hostile writer would, as raw text."""
    if isinstance(value, float) and not math.isfinite(value):
        return msgspec.Raw(b"NaN" if math.isnan(value) else b"%s1e999" % (b"-" * (value < 0)))
    return value


WRONG_SCALARS = (
    -1,
    -(2**63),
    2**63 - 1,
    2**64 - 1,
    math.nan,
    math.inf,
    -math.inf,
    -1e308,
    2.0,
    -1.5,
    "",
    "x" * 100_000,
    None,
)
HOSTILE = st.one_of(
    st.tuples(st.just("scalar"), st.sampled_from(WRONG_SCALARS)),
    st.tuples(st.just("deep"), st.integers(33, 20_000)),
    st.tuples(st.just("flood"), st.integers(33, 20_000)),
)


def hostile_bytes(kind: type[Any], path: tuple[Any, ...], change: tuple[str, Any]) -> bytes:
    doc, msgpack = document(kind), kind is GameRecord
    how, arg = change
    if how == "deep":
        new: Any = nested(arg, msgpack=msgpack)
    elif how == "flood":
        new = flood(at(doc, path), arg)
    else:
        new = arg if msgpack else as_json(arg)
    bad = replaced(doc, path, new)
    return msgspec.msgpack.encode(bad) if msgpack else msgspec.json.encode(bad)


def assert_bounded(value: Any) -> None:
    """No negative count, no NaN or infinity, no collection beyond the longest game."""
    if isinstance(value, dict | list):
        assert len(value) <= MAX_PLIES
        for item in value.values() if isinstance(value, dict) else value:
            assert_bounded(item)
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, int):
        assert value >= 0


def assert_decodes_bounded_or_names_the_field(kind: type[Any], data: bytes) -> None:
    _, dec = codec_of(kind)
    try:
        decoded = dec(data)
    except BadMessage as e:
        assert e.field.startswith("$") and e.field in str(e)
    else:
        assert isinstance(decoded, kind)
        assert_bounded(msgspec.to_builtins(decoded))


def places(kind: type[Any]) -> list[tuple[Any, ...]]:
    return [*paths(document(kind)), ("unknown_field",)]


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), pick=st.integers(0, 10_000), change=HOSTILE)
def test_well_typed_but_wrong_values_are_rejected_by_field_or_decode_bounded(
    kind: type[Any], pick: int, change: tuple[str, Any]
) -> None:
    """Negative counts, NaN/inf, deep nesting and floods of any size, at any field or an
    unknown one."""
    where = places(kind)
    data = hostile_bytes(kind, where[pick % len(where)], change)
    assert_decodes_bounded_or_names_the_field(kind, data)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_every_wrong_value_at_every_field_is_rejected_or_bounded(kind: type[Any]) -> None:
    """The same, exhaustively: each wrong scalar, a deep nest and a flood at every place."""
    changes = [("scalar", x) for x in WRONG_SCALARS] + [("deep", 5_000), ("flood", 5_000)]
    for path in places(kind):
        for change in changes:
            assert_decodes_bounded_or_names_the_field(kind, hostile_bytes(kind, path, change))
