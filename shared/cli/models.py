"""`conclave ratings` and `conclave models export`: read the registry and the ratings pool."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from schemas import names
from schemas.codec import decode
from schemas.jobs import BestPointer
from shared.bus.client import BusConfig, NatsBus
from shared.loop.ratingjobs import game_ratings
from shared.node.console import ratings_markdown
from shared.work.models import ModelStore


async def ratings_main(cfg: BusConfig, game: str, as_json: bool) -> int:
    bus = await NatsBus.connect(cfg)
    try:
        ratings, _ = await game_ratings(bus, game)
    finally:
        await bus.close()
    if as_json:
        print(msgspec.json.encode(ratings).decode())
    else:
        print(ratings_markdown(ratings), end="")
    return 0


async def export_main(cfg: BusConfig, game: str, out: Path) -> int:
    """Write the best checkpoint of `game` to `out` (a directory); print its path."""
    bus = await NatsBus.connect(cfg)
    try:
        entry = await bus.last(names.REGISTRY_BUCKET, names.best_key(game))
        if entry.value is None:
            print(f"conclave models export: no best model for {game} yet")
            return 1
        best = decode(entry.value, BestPointer, subject=names.best_key(game))
        data = await ModelStore(bus, out / ".cache").read(best.sha256)
    finally:
        await bus.close()
    path = out / f"{game}-gen{best.generation:03d}-{best.sha256[:12]}.ckpt"
    await asyncio.to_thread(_write, path, data)
    print(path)
    return 0


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
