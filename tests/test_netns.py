"""The soak's network namespaces: a node inside reaches the hub's address until its link is cut."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.soak import netns
from shared.soak.netns import Namespaces

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root and network namespaces")

CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()"


@pytest.fixture
def spaces() -> Iterator[Namespaces]:
    made = Namespaces()
    try:
        made.create_bridge()
        yield made
    finally:
        made.remove()


def reaches(spaces: Namespaces, node_id: str, port: int) -> bool:
    argv = [*spaces.exec_prefix(node_id), sys.executable, "-c", CONNECT, spaces.host_ip, str(port)]
    return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0


def listed() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_a_node_reaches_the_bridge_until_cut_and_again_once_mended(spaces: Namespaces) -> None:
    spaces.add("n09")
    with socket.create_server((spaces.host_ip, 0)) as server:
        port = server.getsockname()[1]
        assert reaches(spaces, "n09", port)
        spaces.cut("n09")
        assert not reaches(spaces, "n09", port)
        spaces.mend("n09")
        assert reaches(spaces, "n09", port)
    assert spaces.namespace("n09") in listed()


def test_remove_deletes_every_namespace_and_the_bridge(spaces: Namespaces) -> None:
    spaces.add("n02")
    spaces.add("n13")
    names = [spaces.namespace(n) for n in ("n02", "n13")]
    spaces.remove()
    assert not any(name in listed() for name in names)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert spaces.bridge not in links and f"cc{spaces.tag}h" not in links
    spaces.remove()  # twice is harmless


def test_a_node_outside_any_namespace_runs_as_is() -> None:
    assert Namespaces().exec_prefix("n01") == []


def test_what_a_killed_run_left_is_removed_from_its_recorded_tag(tmp_path: Path) -> None:
    run = Namespaces()
    tag_file = tmp_path / "netns.tag"
    run.record(tag_file)
    try:
        run.create_bridge()
        run.add("n05")
        assert netns.leftovers(run.tag) == [run.namespace("n05")]
        netns.remove_recorded(tag_file)  # as if the harness had been SIGKILLed
        assert netns.leftovers(run.tag) == []
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert run.bridge not in links
    finally:
        run.remove()
