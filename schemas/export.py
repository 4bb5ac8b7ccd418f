"""JSON Schema for every wire message, one file per message, for readers in other languages."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import msgspec

from schemas.control import CONTROL_MESSAGES

# Modules that define wire messages beyond the control plane; each lists them in WIRE_MESSAGES.
_MORE = ("schemas.jobs", "schemas.game")


def wire_messages() -> list[type[Any]]:
    found: list[type[Any]] = list(CONTROL_MESSAGES)
    for module_name in _MORE:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        found += list(getattr(module, "WIRE_MESSAGES", ()))
    return found


def schema_files() -> dict[str, bytes]:
    """File name -> pretty JSON Schema bytes, keyed by the message's versioned tag."""
    files: dict[str, bytes] = {}
    for message in wire_messages():
        tag = message.__struct_config__.tag or message.__name__
        schema = msgspec.json.schema(message)
        files[f"{tag}.json"] = msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"
    return files


def export(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in schema_files().items():
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written
