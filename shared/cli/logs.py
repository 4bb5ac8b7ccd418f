"""`conclave logs [--follow] [--node N] [--service S] [--level L] [--json]`: lines from the bus."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

import msgspec
import orjson

from schemas import names
from shared.bus.client import BusConfig, NatsBus
from shared.bus.message import Message
from shared.runtime.buslog import levels_from


def render(line: bytes) -> str:
    """`HH:MM:SS node/service LEVEL message  key=value ...` from one JSON log line."""
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line.decode(errors="replace")
    if not isinstance(entry, dict):
        return line.decode(errors="replace")
    at = time.strftime("%H:%M:%S", time.localtime(float(entry.pop("t", 0.0))))
    where = f"{entry.pop('node', '?')}/{entry.pop('service', '?')}"
    level, msg = str(entry.pop("level", "?")).upper(), entry.pop("msg", "")
    entry.pop("logger", None)
    extras = "  ".join(f"{k}={v}" for k, v in entry.items())
    return f"{at} {where} {level:<7} {msg}{'  ' + extras if extras else ''}"


class LogQuery(msgspec.Struct, frozen=True):
    node: str | None = None
    service: str | None = None
    level: str = "info"
    follow: bool = False
    wait_s: float = 5.0  # without `follow`: how long to listen
    as_json: bool = False


async def logs_main(cfg: BusConfig, query: LogQuery) -> int:
    """Print matching lines as they arrive: until Ctrl-C with `follow`, else for `wait_s`."""
    levels = levels_from(query.level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bus = await NatsBus.connect(cfg)
    node, service, as_json = query.node, query.service, query.as_json

    async def show(msg: Message) -> None:
        text = msg.data.decode(errors="replace") if as_json else render(msg.data)
        print(text, flush=True)

    try:
        for lv in levels:
            await bus.subscribe(
                names.log_subject(node or names.ANY, service or names.ANY, lv), show
            )
        await bus.flush()
        where = names.log_subject(node or names.ANY, service or names.ANY, ">=" + query.level)
        print(f"# listening to {where}", file=sys.stderr, flush=True)
        if query.follow:
            await stop.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), query.wait_s)
    finally:
        await bus.close()
    return 0
