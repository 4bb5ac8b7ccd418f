"""Whether the servers refuse a client's credentials: one connect attempt per server, no retry.

nats-py's first connect retries every failure until the caller gives up, an authorization
violation included, so a client without an identity the servers know only ever sees a timeout.
A command asks here first and can name the credential it lacks instead.
"""

from __future__ import annotations

import asyncio
import ssl
from contextlib import suppress
from typing import Any

import nats.errors
from nats.aio.client import Client

from shared.bus.client import identity_inbox

PROBE_TIMEOUT_S = 2.0  # per server; a refusal comes back within a round trip


def is_auth_refusal(error: str) -> bool:
    """Whether a connect error is the server refusing the credentials (nats-py reports the
    server's `-ERR 'Authorization Violation'` as text, or as `AuthorizationError`)."""
    return "authorization" in error.lower()


async def auth_refusal(
    servers: list[str],
    nkey_seed: str | None,
    tls_ca: str | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> str | None:
    """The refusal of the first server that answers, if it refuses these credentials; None if it
    accepts them or no server answers (the command's own connect then says why)."""
    for url in servers:
        try:
            outcome = await asyncio.wait_for(_attempt(url, nkey_seed, tls_ca), timeout_s)
        except TimeoutError:
            continue
        if outcome is not None:
            return outcome or None
    return None


async def _attempt(url: str, nkey_seed: str | None, tls_ca: str | None) -> str | None:
    """One connect: the refusal's text, "" when accepted, None when the server did not answer."""

    async def quiet(_: Exception) -> None:
        """The refusal is returned; nats-py would otherwise log it as an error too."""

    options: dict[str, Any] = {
        "servers": [url],
        "allow_reconnect": False,
        # Ends the attempts on an unreachable server (0 would mean: try it forever).
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
        "connect_timeout": PROBE_TIMEOUT_S,
        "error_cb": quiet,
    }
    if nkey_seed:
        try:
            identity_inbox(nkey_seed)  # nats-py would fail on it before connecting
        except (OSError, ValueError):
            return None  # the command's own connect names an unreadable seed
        options["nkeys_seed"] = nkey_seed
    if tls_ca:
        options["tls"] = ssl.create_default_context(cafile=tls_ca)
    nc = Client()
    try:
        await nc.connect(**options)
    except nats.errors.Error as e:
        return str(e) if is_auth_refusal(str(e)) else None
    except (OSError, TimeoutError):
        return None  # unreachable: the command's own connect says so
    finally:
        # Refused or not: nats-py leaves the socket of a failed first connect open.
        with suppress(nats.errors.Error, OSError, TimeoutError):
            await nc.close()
    return ""
