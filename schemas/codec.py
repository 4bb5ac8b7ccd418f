"""Encoding and strict decoding of wire messages, with errors that name the field at fault.

Every message comes from another node, so decoding treats it as untrusted: sizes and nesting are
bounded before parsing, numbers are bounded by the value types below (checked at decode, not
at construction), and any failure at all becomes a `BadMessage`.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

T = TypeVar("T")

MAX_CONTROL_BYTES = 256 * 1024
MAX_DEPTH = 32  # our messages nest a few levels; deeper is hostile or broken
_FLOAT_MAX = sys.float_info.max

# Bounded wire values. NaN fails every bound, and an upper bound also rejects infinity.
Count = Annotated[int, Meta(ge=0)]
NonNegative = Annotated[float, Meta(ge=0, le=_FLOAT_MAX)]  # finite: durations, rates, losses
Timestamp = Annotated[float, Meta(ge=0, le=1e11)]  # Unix seconds, before the year 5000
Probability = Annotated[float, Meta(ge=0, le=1)]
GameValue = Annotated[float, Meta(ge=-1, le=1)]  # an outcome or a search value, one side's view
Token = Annotated[str, Meta(max_length=64)]  # node ids, games, services, roles, kinds, groups
Ident = Annotated[str, Meta(max_length=256)]  # job, game and instance ids, player names, hosts
Text = Annotated[str, Meta(max_length=8192)]  # reasons and details for people
Sha256 = Annotated[str, Meta(pattern="^([0-9a-f]{64})?$")]  # a hex digest, "" for none

_encoder = msgspec.json.Encoder()
_MISSING = re.compile(r"missing required field `([^`]+)`")
_KEY_IN = re.compile(r"^`key` in `(.+)`$")  # msgspec: "... - at `key` in `$.a`"
_CHECKED = re.compile(r"^[A-Z]\w*\.(\w+)\b")
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class BadMessage(ValueError):
    """A message that does not decode into its schema; `field` is the JSON path at fault."""

    def __init__(self, subject: str, field: str, reason: str) -> None:
        super().__init__(f"bad message on {subject!r}: field {field}: {reason}")
        self.subject = subject
        self.field = field
        self.reason = reason


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes, kind: type[T], *, subject: str = "?") -> T:
    """Decode JSON `data` as `kind`; raise BadMessage naming the field (e.g. `$.node`)."""
    if len(data) > MAX_CONTROL_BYTES:
        raise BadMessage(subject, "$", f"{len(data)} bytes exceeds {MAX_CONTROL_BYTES}")
    if nested_deeper_than(data, MAX_DEPTH):
        raise BadMessage(subject, "$", f"nested deeper than {MAX_DEPTH} levels")
    try:
        return msgspec.json.decode(data, type=kind, strict=True)
    except Exception as e:
        raise rejection(subject, e, "JSON") from e


def nested_deeper_than(data: bytes, limit: int) -> bool:
    """Whether JSON `data` nests containers deeper than `limit`, by a scan of its brackets
    outside strings: linear passes in C, at most `limit` + 1 of them, each peeling the
    innermost containers. Malformed brackets are left to the parser to reject."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    unescaped = _ESCAPE.sub(b"", data) if b"\\" in data else data
    outside = b"".join(unescaped.split(b'"')[::2])
    brackets = outside.translate(_AS_PARENS, _NOT_BRACKETS)
    if b"(" * (limit + 1) in brackets:  # the usual attack, found in one scan
        return True
    for _ in range(limit + 1):
        peeled = brackets.replace(b"()", b"")
        if len(peeled) == len(brackets):
            return False
        brackets = peeled
    return True


def rejection(subject: str, error: Exception, form: str) -> BadMessage:
    """The BadMessage for any exception decoding raised, naming the field when it is known."""
    match error:
        case msgspec.ValidationError():
            return BadMessage(subject, *split_error(str(error)))
        case msgspec.DecodeError():
            return BadMessage(subject, "$", f"not valid {form}: {error}")
        case UnicodeDecodeError():
            return BadMessage(subject, "$", f"a string is not UTF-8 at byte {error.start}")
        case RecursionError():
            return BadMessage(subject, "$", f"nested deeper than {MAX_DEPTH} levels ({error})")
    field, reason = split_error(str(error))  # e.g. a __post_init__ check that is no ValueError
    return BadMessage(subject, field, f"{type(error).__name__}: {reason}")


def split_error(text: str) -> tuple[str, str]:
    # msgspec says e.g. "Expected `str`, got `int` - at `$.node`".
    reason, sep, where = text.rpartition(" - at ")
    key = _KEY_IN.match(where)
    field = (f"{key.group(1)} (a key)" if key else where.strip("`")) if sep else "$"
    reason = reason if sep else text
    missing = _MISSING.search(reason)
    if missing:
        field = f"{field}.{missing.group(1)}"
    checked = _CHECKED.match(reason)
    if checked and field == "$":  # a __post_init__ check says "Struct.field ..."
        field = f"$.{checked.group(1)}"
    return field, reason


def to_builtins(message: Any) -> Any:
    return msgspec.to_builtins(message)
