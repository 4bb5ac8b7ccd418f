from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.loop.policy import (
    AbandonTraining,
    Action,
    EnqueueSelfplay,
    GameSnapshot,
    GameState,
    LoopConfig,
    LoopState,
    MatchScore,
    Promote,
    Reject,
    Snapshot,
    StartMatch,
    StartTraining,
    Trained,
    apply,
    match_games_to_schedule,
    next_actions,
    room_for_jobs,
    should_train,
)
from shared.loop.sprt import SprtConfig

CFG = LoopConfig(
    games=("c4",),
    games_per_generation=100,
    selfplay_games_per_job=10,
    queue_target_per_worker=2,
    max_enqueue=50,
    eval_games_per_job=8,
    eval_jobs_per_worker=1,
)
BEST = GameState(generation=3, best="b3", trainings=5, games_at_last_train=1000)
TRAINING = msgspec.structs.replace(BEST, training_in_progress=True)
EVALUATING = msgspec.structs.replace(BEST, pending_eval="cand", match_games=16)


def _one(game: GameState) -> LoopState:
    return LoopState({"c4": game})


def _snap(workers: int = 0, evals: int = 2, **game: object) -> Snapshot:
    return Snapshot(workers, evals, {"c4": GameSnapshot(**game)})  # type: ignore[arg-type]


# self-play top-up (one game: the free slots of the worker queue)


def _selfplay_jobs(workers: int, queued: int, cfg: LoopConfig = CFG) -> int:
    actions = next_actions(
        _one(BEST), _snap(workers, games_total=1000, queued_selfplay=queued), cfg
    )
    return sum(a.jobs for a in actions if isinstance(a, EnqueueSelfplay))


@pytest.mark.parametrize(
    ("workers", "queued", "jobs"),
    [(4, 3, 5), (4, 8, 0), (4, 20, 0), (0, 0, 0), (1000, 0, 50)],
)
def test_selfplay_jobs_fill_the_queue_target(workers: int, queued: int, jobs: int) -> None:
    assert _selfplay_jobs(workers, queued) == jobs


def test_selfplay_job_cap_bounds_what_is_stored_however_many_workers_live() -> None:
    capped = msgspec.structs.replace(CFG, selfplay_job_cap=3)
    assert _selfplay_jobs(1000, 0, capped) == 3
    assert _selfplay_jobs(1000, 2, capped) == 1  # stored jobs count, in flight too
    assert _selfplay_jobs(1000, 5, capped) == 0
    assert _selfplay_jobs(1, 0, capped) == 2  # below the cap the per-worker target rules
    assert room_for_jobs(5, capped) == 0
    with pytest.raises(ValueError, match="selfplay_job_cap"):
        msgspec.structs.replace(CFG, selfplay_job_cap=0)


# should_train


def test_should_train_after_a_generation_of_new_games() -> None:
    assert not should_train(BEST, 1099, CFG)
    assert should_train(BEST, 1100, CFG)


def test_should_not_train_while_training_or_evaluating() -> None:
    assert not should_train(TRAINING, 10_000, CFG)
    assert not should_train(EVALUATING, 10_000, CFG)


def test_first_training_needs_no_games() -> None:
    assert should_train(GameState(), 0, CFG)


# match_games_to_schedule


def test_match_window_is_whole_jobs_per_evaluator() -> None:
    assert match_games_to_schedule(0, MatchScore(candidate="c"), 3, CFG) == 24
    assert (
        match_games_to_schedule(24, MatchScore(candidate="c", wins=5, draws=0, losses=0), 3, CFG)
        == 0
    )
    assert (
        match_games_to_schedule(24, MatchScore(candidate="c", wins=5, draws=2, losses=1), 3, CFG)
        == 8
    )
    assert (
        match_games_to_schedule(0, MatchScore(candidate="c"), 0, CFG) == 8
    )  # waits for an evaluator


def test_match_schedule_is_capped_and_replaces_lost_games() -> None:
    assert (
        match_games_to_schedule(
            396, MatchScore(candidate="c", wins=200, draws=100, losses=96), 3, CFG
        )
        == 8
    )  # whole jobs
    assert (
        match_games_to_schedule(
            400, MatchScore(candidate="c", wins=200, draws=100, losses=100), 3, CFG
        )
        == 0
    )
    assert (
        match_games_to_schedule(
            400, MatchScore(candidate="c", wins=200, draws=100, losses=92, lost=8), 3, CFG
        )
        == 8
    )


def test_lost_games_are_replaced_only_within_one_jobs_slack() -> None:
    # 408 scheduled (the cap plus one job), 16 of them lost: nothing more, however many are lost.
    assert (
        match_games_to_schedule(
            408, MatchScore(candidate="c", wins=196, draws=100, losses=96, lost=16), 3, CFG
        )
        == 0
    )
    assert match_games_to_schedule(400, MatchScore(candidate="c", lost=400), 3, CFG) == 8
    assert match_games_to_schedule(408, MatchScore(candidate="c", lost=408), 3, CFG) == 0


def test_a_match_that_cannot_be_finished_is_rejected_with_the_reason() -> None:
    state = _one(msgspec.structs.replace(EVALUATING, match_games=408))
    (action,) = next_actions(
        state,
        _snap(match=MatchScore(candidate="cand", wins=50, draws=40, losses=50, lost=268)),
        CFG,
    )
    assert isinstance(action, Reject) and "268 of 408 games dead-lettered" in action.reason
    assert action.result is not None and action.result.games == 140


# next_actions


def test_bootstrap_trains_the_initial_network() -> None:
    actions = next_actions(LoopState(), _snap(workers=4), CFG)
    assert actions == [StartTraining("c4", generation=0, training=1, games_total=0)]


def test_initial_network_is_promoted_without_a_match_and_self_play_starts() -> None:
    state = apply(LoopState(), StartTraining("c4", 0, 1, 0))
    actions = next_actions(state, _snap(workers=4, trained=Trained(1, "net0")), CFG)
    assert actions == [Promote("c4", "net0", 0), EnqueueSelfplay("c4", 8, 10, "net0")]
    for action in actions:
        state = apply(state, action)
    assert state.game("c4") == GameState(generation=0, best="net0", trainings=1, selfplay_jobs=8)


def test_trains_the_next_generation_when_enough_games() -> None:
    actions = next_actions(_one(BEST), _snap(workers=1, games_total=1100, queued_selfplay=2), CFG)
    assert actions == [StartTraining("c4", generation=4, training=6, games_total=1100)]
    after = apply(_one(BEST), actions[0]).game("c4")
    assert after.training_in_progress
    assert after.games_at_last_train == 1100


def test_candidate_is_matched_against_the_best() -> None:
    actions = next_actions(_one(TRAINING), _snap(trained=Trained(5, "cand")), CFG)
    assert actions == [StartMatch("c4", "cand", "b3", 16)]
    after = apply(_one(TRAINING), actions[0]).game("c4")
    assert (after.pending_eval, after.match_games, after.training_in_progress) == (
        "cand",
        16,
        False,
    )


def test_ungated_candidate_is_promoted_at_once() -> None:
    cfg = msgspec.structs.replace(CFG, gate="none")
    actions = next_actions(_one(TRAINING), _snap(trained=Trained(5, "cand")), cfg)
    assert actions == [Promote("c4", "cand", 4)]


def test_stale_training_result_is_ignored() -> None:
    assert next_actions(_one(TRAINING), _snap(trained=Trained(4, "old")), CFG) == []


def test_dead_lettered_training_is_abandoned_and_retried() -> None:
    snap = _snap(failed_training=5, games_total=1100)
    actions = next_actions(_one(TRAINING), snap, CFG)
    assert actions == [AbandonTraining("c4", 5), StartTraining("c4", 4, 6, 1100)]


def test_match_promotes_a_clearly_better_candidate() -> None:
    (action,) = next_actions(
        _one(EVALUATING),
        _snap(match=MatchScore(candidate="cand", wins=60, draws=20, losses=20)),
        CFG,
    )
    assert isinstance(action, Promote)
    assert (action.candidate, action.generation) == ("cand", 4)
    assert action.result is not None and action.result.decision == "accept_h1"
    after = apply(_one(EVALUATING), action).game("c4")
    assert after == msgspec.structs.replace(BEST, generation=4, best="cand")


def test_match_rejects_a_clearly_worse_candidate() -> None:
    (action,) = next_actions(
        _one(EVALUATING),
        _snap(match=MatchScore(candidate="cand", wins=10, draws=10, losses=60)),
        CFG,
    )
    assert isinstance(action, Reject)
    assert action.result is not None and action.result.decision == "accept_h0"
    assert apply(_one(EVALUATING), action).game("c4") == BEST


def test_undecided_match_is_topped_up_or_left_alone() -> None:
    state = _one(EVALUATING)
    assert (
        next_actions(
            state, _snap(match=MatchScore(candidate="cand", wins=2, draws=2, losses=1)), CFG
        )
        == []
    )
    topped = next_actions(
        state, _snap(match=MatchScore(candidate="cand", wins=4, draws=3, losses=2)), CFG
    )
    assert topped == [StartMatch("c4", "cand", "b3", 8)]
    assert apply(state, topped[0]).game("c4").match_games == 24


def test_match_at_the_cap_decides_by_the_cap_rule() -> None:
    cfg = msgspec.structs.replace(CFG, sprt=SprtConfig(max_games=16))
    (action,) = next_actions(
        _one(EVALUATING), _snap(match=MatchScore(candidate="cand", wins=5, draws=6, losses=5)), cfg
    )
    assert isinstance(action, Promote)
    assert action.result is not None and action.result.truncated


def test_decision_and_next_training_in_one_step() -> None:
    snap = _snap(games_total=1200, match=MatchScore(candidate="cand", wins=10, draws=10, losses=60))
    actions = next_actions(_one(EVALUATING), snap, CFG)
    assert [type(a) for a in actions] == [Reject, StartTraining]
    assert actions[1] == StartTraining("c4", 4, 6, 1200)


def test_score_of_another_candidate_is_ignored() -> None:
    actions = next_actions(
        _one(EVALUATING),
        _snap(match=MatchScore(candidate="other", wins=90, draws=0, losses=0)),
        CFG,
    )
    assert actions == []


def test_games_share_the_self_play_queue() -> None:
    cfg = msgspec.structs.replace(CFG, games=("c4", "ttt", "new"))
    state = LoopState({"c4": BEST, "ttt": GameState(generation=0, best="t0", trainings=1)})
    snap = Snapshot(3, 0, {"c4": GameSnapshot(queued_selfplay=1), "other": GameSnapshot()})
    actions = next_actions(state, snap, cfg)
    assert actions == [
        StartTraining("new", 0, 1, 0),
        EnqueueSelfplay("c4", 2, 10, "b3"),
        EnqueueSelfplay("ttt", 3, 10, "t0"),
    ]


def test_apply_refuses_a_second_training() -> None:
    with pytest.raises(ValueError, match="StartTraining"):
        apply(_one(TRAINING), StartTraining("c4", 4, 6, 2000))
    with pytest.raises(ValueError, match="Promote"):
        apply(_one(BEST), Promote("c4", "x", 4))
    with pytest.raises(ValueError, match="StartMatch"):
        apply(_one(BEST), StartMatch("c4", "x", "b3", 8))
    result = next_actions(
        _one(EVALUATING), _snap(match=MatchScore(candidate="cand", wins=0, draws=0, losses=80)), CFG
    )[0]
    assert isinstance(result, Reject)
    with pytest.raises(ValueError, match="Reject"):
        apply(_one(TRAINING), result)


def test_state_round_trips_through_json() -> None:
    data = msgspec.json.encode(EVALUATING)
    assert b'"type":"conclave.loop_state.v1"' in data
    assert msgspec.json.decode(data, type=GameState) == EVALUATING


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"games": ()}, "LoopConfig.games"),
        ({"games": ("a", "a")}, "LoopConfig.games"),
        ({"games_per_generation": 0}, "LoopConfig.games_per_generation"),
        ({"eval_games_per_job": 0}, "LoopConfig.eval_games_per_job"),
        ({"max_enqueue": -1}, "LoopConfig.max_enqueue"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LoopConfig(**kwargs)  # type: ignore[arg-type]


def test_snapshot_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"Snapshot\.eval_workers"):
        Snapshot(1, -1)
    with pytest.raises(ValueError, match=r"GameSnapshot\.queued_selfplay"):
        GameSnapshot(queued_selfplay=-3)
    with pytest.raises(ValueError, match=r"MatchScore\.lost"):
        MatchScore(candidate="c", lost=-1)


# A simulated cluster driven by random events.

SIM = LoopConfig(
    games=("a", "b"),
    games_per_generation=10,
    selfplay_games_per_job=10,
    queue_target_per_worker=2,
    max_enqueue=6,
    eval_games_per_job=4,
    sprt=SprtConfig(max_games=24),
)


@dataclass
class _World:
    queued: int = 0
    games_total: int = 0
    training: int | None = None
    trained: Trained | None = None
    failed: int | None = None
    scheduled: dict[str, int] = field(default_factory=dict)
    scores: dict[str, MatchScore] = field(default_factory=dict)


Step = tuple[int, int, int, str, tuple[int, int, int, int], bool]


def _observe(world: _World, step: Step, pending: str | None) -> None:
    """Advance one game's world: self-play jobs finish, the trainer acts, match games end."""
    done = min(step[2], world.queued)
    world.queued -= done
    world.games_total += done * SIM.selfplay_games_per_job
    if world.training is not None and step[3] == "done":
        world.trained, world.training = Trained(world.training, f"net{world.training}"), None
    elif world.training is not None and step[3] == "fail":
        world.failed, world.training = world.training, None
    if pending is not None:
        s = world.scores.get(pending, MatchScore(candidate=pending))
        room = world.scheduled.get(pending, 0) - s.lost - s.finished
        ended = {}
        order = (2, 1, 0, 3) if step[5] else (0, 1, 2, 3)  # losses or wins fill the room first
        for k in order:
            ended[k] = min(step[4][k], room)
            room -= ended[k]
        w, d, lo, lost = (ended[k] for k in range(4))
        world.scores[pending] = MatchScore(
            candidate=pending,
            wins=s.wins + w,
            draws=s.draws + d,
            losses=s.losses + lo,
            lost=s.lost + lost,
        )


def _carry_out(world: _World, action: Action) -> None:
    if isinstance(action, EnqueueSelfplay):
        world.queued += action.jobs
    elif isinstance(action, StartTraining):
        assert world.training is None, "two trainings at once"
        world.training, world.trained, world.failed = action.training, None, None
    elif isinstance(action, StartMatch):
        world.scheduled[action.candidate] = world.scheduled.get(action.candidate, 0) + action.games


def _snapshot(state: LoopState, worlds: dict[str, _World], step: Step) -> Snapshot:
    games = {}
    for name, w in worlds.items():
        score = w.scores.get(state.game(name).pending_eval or "")
        games[name] = GameSnapshot(
            games_total=w.games_total,
            queued_selfplay=w.queued,
            trained=w.trained,
            failed_training=w.failed,
            match=score,
        )
    return Snapshot(step[0], step[1], games)


def _check_actions(actions: list[Action]) -> None:
    for game in SIM.games:
        assert sum(isinstance(a, StartTraining) and a.game == game for a in actions) <= 1
    for action in actions:
        if isinstance(action, EnqueueSelfplay):
            assert 0 < action.jobs <= SIM.max_enqueue
        if isinstance(action, StartMatch):
            assert 0 < action.games <= SIM.sprt.max_games


def _check_state(state: LoopState, worlds: dict[str, _World]) -> None:
    for name, world in worlds.items():
        g = state.game(name)
        assert not (g.training_in_progress and g.pending_eval is not None)
        assert min(g.match_games, g.trainings, g.generation + 1, world.queued) >= 0
        if g.pending_eval is not None:  # lost games replaced within one job's slack only
            assert g.match_games <= SIM.sprt.max_games + SIM.eval_games_per_job


_step = st.tuples(
    st.integers(0, 4),  # self-play workers
    st.integers(0, 3),  # evaluators
    st.integers(0, 6),  # self-play jobs finished, per game
    st.sampled_from(["wait", "done", "fail"]),  # the trainer
    st.tuples(*(st.integers(0, n) for n in (8, 8, 8, 3))),  # match wins, draws, losses, lost
    st.booleans(),  # losses end before wins
)


@settings(max_examples=120, deadline=None)
@given(st.lists(_step, min_size=1, max_size=40))
def test_simulated_loop_keeps_its_invariants(steps: list[Step]) -> None:
    state = LoopState()
    worlds = {game: _World() for game in SIM.games}
    for step in steps:
        for name, world in worlds.items():
            _observe(world, step, state.game(name).pending_eval)
        actions = next_actions(state, _snapshot(state, worlds, step), SIM)
        _check_actions(actions)
        for action in actions:
            state = apply(state, action)  # raises ValueError on an illegal transition
            _carry_out(worlds[action.game], action)
        _check_state(state, worlds)


def test_simulated_loop_makes_progress() -> None:
    state = LoopState()
    worlds = {game: _World() for game in SIM.games}
    step: Step = (4, 3, 6, "done", (2, 1, 1, 0), False)
    for _ in range(60):
        for name, world in worlds.items():
            _observe(world, step, state.game(name).pending_eval)
        for action in next_actions(state, _snapshot(state, worlds, step), SIM):
            state = apply(state, action)
            _carry_out(worlds[action.game], action)
    assert all(state.game(name).generation >= 3 for name in SIM.games)
