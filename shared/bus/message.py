"""Conclave's own view of bus messages and KV entries, so no caller outside `shared/bus` sees
nats-py's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from schemas import names


@dataclass(frozen=True)
class Entry:
    """The last message of a KV key; `value` is None when it was deleted or expired."""

    key: str
    revision: int
    value: bytes | None
    written_at: datetime | None

    @property
    def present(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class Message:
    """A message as read: `seq`, `stream`, `timestamp`, `num_pending` and `num_delivered` are
    set for stream messages (a core message has seq 0 and no timestamp)."""

    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    seq: int = 0
    stream: str = ""
    timestamp: datetime | None = None
    num_pending: int = 0
    num_delivered: int = 1

    @property
    def msg_id(self) -> str:
        """The publisher's `Nats-Msg-Id` ("" when none)."""
        return self.headers.get("Nats-Msg-Id", "")


class Subscription(Protocol):
    """A live subscription; `unsubscribe` ends it."""

    async def unsubscribe(self) -> None: ...


def from_nats(msg: Any) -> Message:
    """A nats-py `Msg` (core or JetStream) as a Message; a core message whose reply subject only
    looks like a JetStream ack (anyone may publish one) stays a core message."""
    headers = dict(msg.headers or {})
    try:
        meta = msg.metadata if names.is_js_ack(msg.reply or "") else None
    except Exception:  # nats-py raises several kinds on a malformed ack subject
        meta = None
    if meta is None:
        return Message(msg.subject, msg.data, headers)
    return Message(
        msg.subject,
        msg.data,
        headers,
        seq=int(meta.sequence.stream),
        stream=meta.stream,
        timestamp=meta.timestamp,
        num_pending=int(meta.num_pending or 0),
        num_delivered=int(meta.num_delivered or 1),
    )


def from_raw(msg: Any) -> Message:
    """A nats-py `RawStreamMsg` (a direct get) as a Message."""
    return Message(
        msg.subject or "",
        msg.data or b"",
        dict(msg.headers or {}),
        seq=int(msg.seq or 0),
        stream=msg.stream or "",
        timestamp=msg.time,
    )
