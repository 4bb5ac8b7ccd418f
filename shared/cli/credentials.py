"""Servers that refuse a command's credentials stop it with one line naming the credential to
pass, before its own connect would retry until a timeout."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import NamedTuple

from shared.bus.authprobe import auth_refusal

ADMIN_SEED = "<data>/auth/admin.nk"  # where `conclave up` keeps it


class NodeIdentity(NamedTuple):
    """`conclave node`'s identity: the node, its `--creds` directory (None: not given)."""

    node_id: str
    directory: str | None
    roles: str  # what `conclave auth node --roles` needs for the roles it runs


def refused_line(
    command: str, servers: str, creds: str | None, node: NodeIdentity | None, refusal: str
) -> str:
    """The one line: who refused what, and which credential to pass."""
    # Imported here, as in `check`: it loads cryptography, which most commands never need.
    from shared.auth.identities import ACCOUNTS_FILE, node_seed_path

    head = f"conclave {command}: {servers} refused"
    if node is not None and node.directory is None:
        made = f"conclave auth node --out DIR {node.node_id} --roles {node.roles}"
        return (
            f"{head} a connection without an identity ({refusal}): pass --creds DIR, the "
            f"directory holding node {node.node_id}'s identity (`{made}`)"
        )
    if node is not None and node.directory is not None:
        seed = node_seed_path(Path(node.directory), node.node_id)
        accounts = Path(node.directory) / ACCOUNTS_FILE
        return (
            f"{head} node {node.node_id}'s identity {seed} ({refusal}): install {accounts} on "
            "the servers and reload them (nats-server --signal reload), or pass --creds with "
            "the directory the servers' identities were made in"
        )
    if creds is None:
        return (
            f"{head} a connection without an identity ({refusal}): pass --creds with an nkey "
            f"seed it knows, e.g. --creds {ADMIN_SEED} (or $CONCLAVE_CREDS)"
        )
    if command == "node":  # a seed file, not the node's directory: never hand it admin's
        return (
            f"{head} the identity in {creds} ({refusal}): pass --creds DIR holding the node's "
            "own identity (`conclave auth node --out DIR NODE`), with DIR's accounts on the servers"
        )
    return (
        f"{head} the identity in {creds} ({refusal}): pass --creds with a seed from the "
        f"identities its accounts were made from, e.g. --creds {ADMIN_SEED}"
    )


def check(args: argparse.Namespace) -> str | None:
    """The line to stop with if the servers refuse this command's credentials; None to go on
    (accepted, no server answered, or a command that does not connect)."""
    if not hasattr(args, "nats") or getattr(args, "checkpoint", None):
        return None
    if getattr(args, "via_leaf", None):
        return None  # the leaf link, not this process, carries the identity to the hub
    from shared.auth.identities import node_seed_path

    node = _node(args) if args.command == "node" else None
    seed = args.creds
    if node is not None and node.directory is not None:
        seed = str(node_seed_path(Path(node.directory), node.node_id))
    if seed is not None and not Path(seed).is_file():
        return None  # the command itself names what is missing
    servers = [u.strip() for u in args.nats.split(",") if u.strip()]
    refusal = asyncio.run(auth_refusal(servers, seed, args.tls_ca))
    if refusal is None:
        return None
    return refused_line(args.command, ", ".join(servers), args.creds, node, refusal)


def _node(args: argparse.Namespace) -> NodeIdentity | None:
    """`conclave node`'s identity; None when `--creds` is one seed file (a client's case)."""
    from shared.node import launcher

    if args.creds is not None and not Path(args.creds).is_dir():
        return None
    node_id = args.node_id or launcher.default_node_id()
    try:
        roles = ",".join(launcher.identity_roles(launcher.parse_roles(args.roles)))
    except ValueError:
        roles = args.roles  # the node refuses an unknown role by name as it starts
    return NodeIdentity(node_id, args.creds, roles)
