"""compose.yaml names only files that exist, configs rendered from nats/, and roles we know."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from shared.bus.server import COMPOSE_SERVERS, compose_config
from shared.node.launcher import LOOP_ROLES, ROLE_SERVICES

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_every_mounted_file_exists() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"
    assert (ROOT / "Dockerfile").is_file()


def test_hub_configs_match_the_cluster_template() -> None:
    for server in COMPOSE_SERVERS:
        committed = (ROOT / "nats" / "compose" / f"{server}.conf").read_text()
        assert committed == compose_config(server), f"nats/compose/{server}.conf is stale"
        assert server in compose()["services"]


def test_every_role_named_is_a_known_role() -> None:
    roles_seen = set()
    for service in compose()["services"].values():
        command = service.get("command", [])
        if "--roles" in command:
            roles = command[command.index("--roles") + 1].split(",")
            roles_seen |= set(roles)
            assert set(roles) <= set(ROLE_SERVICES), roles
    assert roles_seen >= set(LOOP_ROLES), "compose should run every role of the loop"
