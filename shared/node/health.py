"""`python -m shared.node.health`: a node container's healthcheck (compose.yaml). Healthy while a
hub server holds this node's heartbeat connection, which authenticated as the node's identity
and which the launcher restarts if it stalls; the hub's monitoring endpoints need no seed.

A node behind a leaf server (`--via-leaf`) is not seen there: its services reach the hub only
through the leaf link.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

CONNZ = "connz?auth=true&limit=100000"
TIMEOUT_S = 3.0


def heartbeat_connected(pages: Iterable[dict[str, Any]], node_id: str) -> bool:
    """Whether any server's `/connz` page lists `node_id`'s heartbeat connection, signed in."""
    name = f"{node_id}/heartbeat"
    return any(
        c.get("name") == name and c.get("authorized_user")
        for page in pages
        for c in page.get("connections", [])
    )


def connz_pages(monitors: list[str]) -> list[dict[str, Any]]:
    """Each reachable server's connections; a server that is down is only left out."""
    pages = []
    for monitor in monitors:
        try:
            with urllib.request.urlopen(f"{monitor.rstrip('/')}/{CONNZ}", timeout=TIMEOUT_S) as r:
                pages.append(json.loads(r.read()))
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return pages


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.node.health", description=__doc__)
    parser.add_argument("--node-id", required=True, help="the node's --node-id")
    parser.add_argument(
        "--monitor",
        required=True,
        help="the hub servers' monitoring URLs, comma-separated (http://nats1:8222,...)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    node_id = args.node_id
    monitors = [m.strip() for m in args.monitor.split(",") if m.strip()]
    if heartbeat_connected(connz_pages(monitors), node_id):
        return 0
    print(f"node {node_id}: no hub server holds its heartbeat connection", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
