"""nats-py's errors as Conclave's typed errors (`shared.bus.errors`), naming the operation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors
import nats.js.errors

from shared.bus.errors import BusError, CasFailed, NoPlacement, Unavailable

WRONG_LAST_SEQUENCE = 10071
STREAM_NAME_IN_USE = 10058
NO_MESSAGE_FOUND = 10057  # a delete of a message already gone
NO_SUITABLE_PEERS = 10005  # no server matches a stream's placement (tags, cluster)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn nats-py errors into Conclave's typed errors, naming the operation."""
    try:
        yield
    except nats.js.errors.APIError as e:
        if e.err_code == WRONG_LAST_SEQUENCE:
            raise CasFailed(f"{what}: {e.description}") from e
        if e.err_code == NO_SUITABLE_PEERS:
            raise NoPlacement(f"{what}: {e.description}") from e
        if isinstance(e, nats.js.errors.ServiceUnavailableError):
            raise Unavailable(f"{what}: {e.description}") from e
        raise BusError(f"{what}: {e.description} (code {e.err_code})") from e
    except nats.errors.MaxPayloadError as e:
        raise BusError(f"{what}: {e!r}") from e
    except (
        TimeoutError,
        nats.errors.TimeoutError,
        nats.errors.NoRespondersError,
        nats.errors.ConnectionClosedError,
        nats.errors.OutboundBufferLimitError,
        nats.js.errors.NoStreamResponseError,
    ) as e:
        raise Unavailable(f"{what}: {type(e).__name__}") from e
