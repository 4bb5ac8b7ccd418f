"""Encoding and strict decoding of wire messages, with errors that name the field at fault."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

MAX_CONTROL_BYTES = 256 * 1024

_encoder = msgspec.json.Encoder()
_MISSING = re.compile(r"missing required field `([^`]+)`")
_KEY_IN = re.compile(r"^`key` in `(.+)`$")  # msgspec: "... - at `key` in `$.a`"
_CHECKED = re.compile(r"^[A-Z]\w*\.(\w+)\b")


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
    try:
        return msgspec.json.decode(data, type=kind, strict=True)
    except msgspec.ValidationError as e:
        field, reason = split_error(str(e))
        raise BadMessage(subject, field, reason) from e
    except msgspec.DecodeError as e:
        raise BadMessage(subject, "$", f"not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise BadMessage(subject, "$", f"invalid UTF-8 at byte {e.start}") from e


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
