"""The local leaf server of a NAT-blocked node (`conclave node --via-leaf HUB_LEAF_URLS`).

The node's services connect to it on loopback; it makes the node's one outbound connection, to
one of the hub's leaf listeners, and the services reach the hub's JetStream through its domain.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from shared.bus.server import LeafSpec, NatsServer, NatsServerError
from shared.runtime.service import wait_or_stop

log = logging.getLogger("conclave.leaf")
RESTART_DELAY_S = 1.0


class LocalLeaf:
    """A leaf server this process starts, restarts on the same port if it dies, and stops."""

    def __init__(
        self,
        node_id: str,
        data_dir: Path,
        hub_urls: list[str],
        *,
        nkey_seed: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        spec = LeafSpec(
            f"leaf-{node_id}", data_dir, tuple(hub_urls), ca_file=ca_file, nkey_seed=nkey_seed
        )
        self.server = NatsServer(spec)
        self.restarts = 0

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> None:
        # The hub may be unreachable right now; services wait for it through the leaf.
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        self.server.start(wait_jetstream=False, dies_with_parent=True)

    async def keep_running(self, stop: asyncio.Event) -> None:
        """Restart the server whenever it exits, until `stop`; then stop it."""
        try:
            while not stop.is_set():
                process = self.server.process
                if process is not None:
                    exited = asyncio.ensure_future(asyncio.to_thread(process.wait))
                    stopping = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    stopping.cancel()
                    if stop.is_set():
                        break
                    log.warning("leaf server exited with %s; restarting", process.returncode)
                await wait_or_stop(stop, RESTART_DELAY_S)
                if not stop.is_set():
                    await self._restart()
        finally:
            await asyncio.to_thread(self.server.stop)

    async def _restart(self) -> None:
        try:
            await self.start()
            self.restarts += 1
        except NatsServerError as e:
            log.error("leaf server did not restart: %s", e)
