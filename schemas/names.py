"""Every subject, stream, KV bucket, object store and key Conclave uses, named in one place."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# KV buckets
NODES_BUCKET = "nodes"
ELECTION_BUCKET = "election"

# Streams
EVENTS_STREAM = "EVENTS"

# KV keys
LEADER_KEY = "leader"


class BadName(ValueError):
    """A node id or other name token that cannot be used in a subject or KV key."""


def check_token(value: str, field: str) -> str:
    """Return `value` if it is a valid subject token / KV key, else raise BadName naming `field`."""
    if not _TOKEN.match(value):
        raise BadName(f"{field} {value!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def node_key(node_id: str) -> str:
    return check_token(node_id, "node id")


def pulse_subject(node_id: str, service: str) -> str:
    """Core subject where each service process reports its event-loop lag about once a second."""
    return f"pulse.{node_id}.{service}"


def pulse_wildcard(node_id: str) -> str:
    return f"pulse.{node_id}.*"


def events_subjects() -> list[str]:
    return ["events.>"]


def leader_event_subject(kind: str) -> str:
    return f"events.leader.{kind}"


def leader_validity_subject() -> str:
    """Core subject where a lease holder says how long it may act as leader (an audit trail)."""
    return "leader.validity"


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"
