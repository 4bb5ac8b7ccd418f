"""Conclave's typed bus errors: what every bus implementation raises, whatever its broker."""

from __future__ import annotations


class BusError(Exception):
    """A broker operation failed."""


class Unavailable(BusError):
    """No answer in time: disconnected, no JetStream leader, or a stream leader election."""


class CasFailed(BusError):
    """A compare-and-set write found a different last revision than expected."""


class NoPlacement(BusError):
    """No hub server matches a stream's placement: for a lease slot, its server tag is missing."""


class ConnectFailed(BusError):
    """The first connection to NATS did not succeed in time."""
