"""The soak's options and node plan, without running anything."""

from __future__ import annotations

import pytest

from shared.soak.fleet import plan_nodes
from shared.soak.harness import SoakOptions, parse_duration


def test_durations_take_units() -> None:
    assert [parse_duration(t) for t in ("90s", "5m", "1.5h", "12")] == [90.0, 300.0, 5400.0, 12.0]
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_leader_kill_share_outside_0_to_1_names_the_field(share: float) -> None:
    with pytest.raises(ValueError, match="leader_kills"):
        SoakOptions(data_dir="d", report_dir="r", leader_kills=share)


def test_the_plan_has_two_coordinators_one_behind_a_leaf_and_every_fourth_selfplay_node() -> None:
    specs = plan_nodes(24)
    assert [s.roles for s in specs[:5]] == [
        ["coordinator"], ["coordinator"], ["trainer"], ["evaluator"], ["syncer"]
    ]  # fmt: skip
    leafy = [s.node_id for s in specs if s.via_leaf]
    assert leafy == ["n02", "n09", "n13", "n17", "n21"]
    with pytest.raises(ValueError, match="at least"):
        plan_nodes(5)
