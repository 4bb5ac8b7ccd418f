"""Fleet orders: what a launcher does with an order and how far one has got (pure), then end to
end on `conclave up`: a restart moves the leader by release and brings new services; an upgrade
whose wheel fails its self-test is refused and the node keeps its version and its processes; a
node started with --no-remote-upgrade refuses; an identity other than admin cannot order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from schemas.control import FleetOrder, FleetReport, NodeStatus, Resources, ServiceState, WheelRef
from shared.bus.server import free_port
from shared.cli.fleetorders import NoTargets, targets
from shared.work.fleet import order_state, order_step
from tests.conftest import Processes, eventually, pids_mentioning
from tests.wheels import build_wheel

WHEEL = WheelRef(name="conclave-9.9.9-py3-none-any.whl", digest="a" * 64, size=1, version="9.9.9")


def order(action: str = "restart", at: float = 100.0, wheel: WheelRef | None = None) -> FleetOrder:
    return FleetOrder(id="o1", action=action, node="n1", issued_by="me", at=at, wheel=wheel)  # type: ignore[arg-type]


def report(outcome: str, since: float = 100.0, at: float = 101.0, of: str = "o1") -> FleetReport:
    return FleetReport(
        order=of,
        action="restart",
        node="n1",
        outcome=outcome,
        version="0.1.0",
        since=since,
        at=at,  # type: ignore[arg-type]
    )


def status(
    started_at: float = 100.5, sent_at: float = 102.0, alive: bool = True, version: str = "0.1.0"
) -> NodeStatus:
    beat = ServiceState(name="heartbeat", alive=True)
    services = [beat, ServiceState(name="leader", alive=alive)]
    return NodeStatus(
        node="n1",
        roles=["control"],
        services=services,
        version=version,
        resources=Resources(cores=2, memory_bytes=1),
        hostname="h",
        started_at=started_at,
        sent_at=sent_at,
    )


def test_each_order_is_carried_out_once_and_a_restart_older_than_the_launcher_is_done() -> None:
    assert order_step(order(), handled="", started_at=50.0, remote_upgrade=True) == "carry out"
    assert order_step(order(), handled="o1", started_at=50.0, remote_upgrade=True) == (
        "already done"
    )
    assert order_step(order(at=40.0), "", started_at=50.0, remote_upgrade=True) == "started since"
    upgrade = order("upgrade", at=40.0, wheel=WHEEL)  # a node that was away still upgrades
    assert order_step(upgrade, "", started_at=50.0, remote_upgrade=True) == "carry out"
    assert order_step(upgrade, "", started_at=50.0, remote_upgrade=False) == "refuse upgrade"


def test_an_order_is_healthy_only_once_new_services_are_all_alive() -> None:
    o = order()
    assert order_state(o, None, status(), 103.0)[0] == "waiting"
    assert order_state(o, report("done", of="older"), status(), 103.0)[0] == "waiting"
    assert order_state(o, report("received"), status(), 103.0)[0] == "waiting"
    assert order_state(o, report("done"), None, 103.0)[0] == "waiting"
    old = status(started_at=99.0)  # from services started before the order was taken
    assert order_state(o, report("done"), old, 103.0)[0] == "waiting"
    before_done = status(sent_at=100.8)
    assert order_state(o, report("done"), before_done, 103.0)[0] == "waiting"
    state, line = order_state(o, report("done"), status(alive=False), 103.0)
    assert state == "waiting" and "leader" in line
    assert order_state(o, report("done"), status(), 103.0) == ("healthy", "healthy at 0.1.0")
    refused = msgspec.structs.replace(report("refused"), reason="no")
    state, line = order_state(o, refused, status(), 103.0)
    assert state == "refused" and line == "refused: no"


def test_an_upgrade_is_healthy_only_at_the_wheels_version() -> None:
    o = order("upgrade", wheel=WHEEL)
    assert order_state(o, report("done"), status(version="0.1.0"), 103.0)[0] == "refused"
    assert order_state(o, report("done"), status(version="9.9.9"), 103.0)[0] == "healthy"


def test_targets_are_live_named_or_by_role_with_the_leader_last() -> None:
    live = {n: status() for n in ("a", "b", "c")}
    live["c"] = msgspec.structs.replace(live["c"], roles=["selfplay"])
    assert targets(live, [], "", leader="a") == ["b", "c", "a"]
    assert targets(live, [], "selfplay", leader="a") == ["c"]
    assert targets(live, ["c", "a", "c"], "", leader="c") == ["a", "c"]
    with pytest.raises(NoTargets, match="zz"):
        targets(live, ["a", "zz"], "", leader=None)
    with pytest.raises(NoTargets, match="trainer"):
        targets(live, [], "trainer", leader=None)


# -- end to end on `conclave up --no-train` -------------------------------------------------


@pytest.fixture(scope="module")
def good_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("good"), version="9.9.6")


@pytest.fixture(scope="module")
def broken_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def break_heartbeat(src: Path) -> None:
        path = src / "services" / "heartbeat.py"
        path.write_text(path.read_text() + "\nraise RuntimeError('broken on purpose')\n")

    return build_wheel(tmp_path_factory.mktemp("broken"), version="9.9.7", edit=break_heartbeat)


class Up:
    def __init__(self, processes: Processes, data: Path, *extra: str) -> None:
        self.port = free_port()
        self.data = data
        self.out = data.parent / f"{data.name}.out"
        argv = [sys.executable, "-m", "shared.cli.main", "up", "--no-train"]
        argv += ["--data-dir", str(data), "--nats-port", str(self.port), *extra]
        self.proc = processes.spawn(argv, self.out)

    def conclave(self, *args: str, creds: str = "admin.nk") -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "shared.cli.main", *args]
        cmd += [
            "--nats",
            f"nats://127.0.0.1:{self.port}",
            "--creds",
            str(self.data / "auth" / creds),
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)

    def node(self) -> dict[str, object]:
        listed = json.loads(self.conclave("fleet", "ls", "--json").stdout)["nodes"]
        [node] = listed
        return dict(node)

    def interpreters(self) -> list[str]:
        """The python each service process runs on."""
        return [self._argv(pid)[0].decode() for pid in self.pids().values()]

    @staticmethod
    def _argv(pid: int) -> list[bytes]:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")

    def pids(self) -> dict[str, int]:
        """The node's service processes (their config names the server), by module."""
        found = {}
        for pid in pids_mentioning(f"127.0.0.1:{self.port}"):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:  # it ended meanwhile
                continue
            if b"-m" in argv and argv[argv.index(b"-m") + 1].startswith(b"services."):
                found[argv[argv.index(b"-m") + 1].decode()] = pid
        return found


def leader_terms(up: Up) -> list[str]:
    return [line for line in up.out.read_text().splitlines() if line.startswith("leader ")]


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")
@pytest.mark.timeout(300)
async def test_restart_a_refused_upgrade_and_an_upgrade_on_a_running_node(
    processes: Processes, tmp_path: Path, broken_wheel: Path, good_wheel: Path
) -> None:
    up = Up(processes, tmp_path / "data")
    await eventually(lambda: "leader elected" in up.out.read_text(), 60, what="leader elected")
    await eventually(lambda: len(up.pids()) == 2 and all(up.pids().values()), 30, what="pids")
    before = up.pids()

    restarted = up.conclave("fleet", "restart", "--timeout", "60")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "healthy" in restarted.stdout
    after = up.pids()
    assert set(after) == set(before) and not set(after.values()) & set(before.values())
    terms = leader_terms(up)
    assert any("released" in line for line in terms), terms  # moved by release, not expiry

    upgraded = up.conclave("fleet", "upgrade", "--wheel", str(broken_wheel), "--timeout", "120")
    assert upgraded.returncode == 1, upgraded.stdout + upgraded.stderr
    assert "refused: self-test failed" in upgraded.stdout + upgraded.stderr
    assert "broken on purpose" in upgraded.stdout + upgraded.stderr
    assert up.pids() == after  # it kept running what it ran
    node = up.node()
    assert node["version"] != "9.9.7"
    order = node["order"]
    assert isinstance(order, dict) and order["action"] == "upgrade"
    assert order["outcome"] == "refused" and "self-test failed" in order["reason"]
    listed = up.conclave("fleet", "ls").stdout
    assert "last order: upgrade refused" in listed, listed
    assert not (tmp_path / "data" / "cache" / "local" / "fleet" / "current").exists()

    # Only admin orders: the node's own identity is refused, and nothing happens.
    denied = up.conclave("fleet", "restart", creds="nodes/local.nk")
    assert denied.returncode != 0 and "only admin" in denied.stderr, denied.stderr
    assert up.pids() == after

    # A good wheel: the services switch to it, its own code (not the checkout's, although the
    # launcher runs in the checkout), and the node reports its version.
    upgraded = up.conclave("fleet", "upgrade", "--wheel", str(good_wheel), "--timeout", "120")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert "healthy at 9.9.6" in upgraded.stdout
    assert up.node()["version"] == "9.9.6"
    venvs = tmp_path / "data" / "cache" / "local" / "fleet" / "venvs"
    assert all(python.startswith(str(venvs)) for python in up.interpreters()), up.interpreters()


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")
@pytest.mark.timeout(300)
async def test_a_node_started_with_no_remote_upgrade_refuses_and_says_so(
    processes: Processes, tmp_path: Path, broken_wheel: Path
) -> None:
    up = Up(processes, tmp_path / "data", "--no-remote-upgrade")
    await eventually(lambda: "leader elected" in up.out.read_text(), 60, what="leader elected")
    await eventually(lambda: len(up.pids()) == 2 and all(up.pids().values()), 30, what="pids")
    before = up.pids()
    upgraded = up.conclave("fleet", "upgrade", "--wheel", str(broken_wheel), "--timeout", "60")
    assert upgraded.returncode == 1
    assert "--no-remote-upgrade" in upgraded.stdout + upgraded.stderr
    assert up.pids() == before
    assert not (tmp_path / "data" / "cache" / "local" / "fleet" / "venvs").exists()
