"""NATS subject matching: `*` is one token, `>` one or more trailing tokens."""

from __future__ import annotations


def matches(filter_: str, subject: str) -> bool:
    """Whether the literal `subject` is one `filter_` selects."""
    wanted, tokens = filter_.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or (token != "*" and token != tokens[i]):
            return False
    return len(tokens) == len(wanted)


def overlap(a: str, b: str) -> bool:
    """Whether some subject matches both filters."""
    left, right = a.split("."), b.split(".")
    for i in range(max(len(left), len(right))):
        x = left[i] if i < len(left) else None
        y = right[i] if i < len(right) else None
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != y and "*" not in (x, y):
            return False
    return True
