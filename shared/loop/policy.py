"""The master loop's scheduling policy: pure functions from (state, snapshot) to typed actions.

The scheduler service is a thin loop around it:

    state = LoopState read from KV `loop` (one GameState per game, written by the leader only)
    snapshot = Snapshot observed from streams, queues and KV
    for action in next_actions(state, snapshot, cfg):
        carry the action out (enqueue jobs, write the registry)
        state = apply(state, action)
    write state back

Per game, one candidate at a time: once `games_per_generation` new self-play games exist, train
the next generation; evaluate the candidate against the best with the SPRT (promote at once when
`gate` is "none" or there is no best yet); promote or reject; repeat. Self-play with the best
keeps going throughout. Training waits while a candidate is being evaluated, so a game never has
two trainings, or a training and a match, at once.

The first training of a game (generation 0, no best yet) produces the initial network, which is
promoted without a match. `apply` checks every transition and raises ValueError on one that the
policy would never produce, so a scheduler bug cannot silently corrupt the loop state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal, assert_never

import msgspec

from schemas import names
from shared.loop.allocation import fair_picks
from shared.loop.placement import fastest_tier, place
from shared.loop.sprt import SprtConfig, SprtResult, sprt


class LoopConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Knobs of the master loop, shared by all `games`.

    Self-play: keep `queue_target_per_worker` jobs of `selfplay_games_per_job` games queued per
    live self-play worker, split over the games that have a best net by the allocation's shares
    (`shared.loop.allocation`, from `weights`: 1 for a game missing, 0 pauses its self-play),
    adding at most `max_enqueue` jobs per game per step. Matches: keep `eval_jobs_per_worker`
    jobs of `eval_games_per_job` games in flight per live evaluator, so the SPRT can stop early.
    """

    games: tuple[str, ...] = ("connect4",)
    games_per_generation: int = 5000
    selfplay_games_per_job: int = 64
    queue_target_per_worker: int = 2
    max_enqueue: int = 256
    selfplay_job_cap: int | None = None  # most self-play jobs stored (queued or in flight) per game
    eval_games_per_job: int = 16
    eval_jobs_per_worker: int = 1
    gate: Literal["sprt", "none"] = "sprt"
    sprt: SprtConfig = SprtConfig()
    weights: dict[str, float] = {}  # base weight of each game's self-play share (default 1)
    # A configuration's own settings (`conclave up --config`), used for everything about it;
    # the fields above are for the games without an entry.
    per_game: dict[str, LoopConfig] = {}

    def __post_init__(self) -> None:
        if not self.games or any(not g for g in self.games):
            raise ValueError(f"LoopConfig.games must be non-empty names, got {self.games!r}")
        if len(set(self.games)) != len(self.games):
            raise ValueError(f"LoopConfig.games must be unique, got {self.games!r}")
        for name, own in self.per_game.items():
            if name not in self.games or own.games != (name,) or own.per_game:
                raise ValueError(
                    f"LoopConfig.per_game[{name!r}] must be the settings of one of the games "
                    f"{self.games!r}, for it alone (games=({name!r},), no per_game)"
                )
        for name in (
            "games_per_generation",
            "selfplay_games_per_job",
            "queue_target_per_worker",
            "max_enqueue",
            "eval_games_per_job",
            "eval_jobs_per_worker",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.selfplay_job_cap is not None and self.selfplay_job_cap < 1:
            raise ValueError(
                f"LoopConfig.selfplay_job_cap must be >= 1, got {self.selfplay_job_cap}"
            )
        _check_weights(self.weights, self.games)

    def for_game(self, name: str) -> LoopConfig:
        """The settings that decide about game `name`."""
        return self.per_game.get(name, self)


class GameState(msgspec.Struct, frozen=True, kw_only=True, tag="conclave.loop_state.v1"):
    """What the loop remembers about one game (the value of KV `loop/<game>`).

    `generation` is the best net's (-1 before the first); `trainings` counts training jobs
    started and is the id of the latest; `match_games` is the games scheduled for `pending_eval`.
    `selfplay_jobs` and `rating_jobs` count the jobs of each kind enqueued so far: the next
    job's id, so a leader repeating an enqueue from the same state repeats its ids.
    """

    generation: int = -1
    best: str | None = None
    trainings: int = 0
    games_at_last_train: int = 0
    training_in_progress: bool = False
    pending_eval: str | None = None
    match_games: int = 0
    selfplay_jobs: int = 0
    rating_jobs: int = 0


class LoopState(msgspec.Struct, frozen=True):
    """Per-game loop state, keyed by game name; a game not present starts from GameState()."""

    games: dict[str, GameState] = {}

    def game(self, name: str) -> GameState:
        return self.games.get(name, GameState())


class Trained(msgspec.Struct, frozen=True):
    """The trainer's output for training job `training`: the candidate net's sha256."""

    training: int
    candidate: str


class MatchScore(msgspec.Struct, frozen=True, kw_only=True):
    """Finished games of `candidate` against the best, from the candidate's view.

    `lost` counts games of match jobs that ended in the dead-letter queue: never to be played.
    `unloadable` is an evaluator's reason why it cannot load the candidate ("" when none).
    """

    candidate: str
    wins: int = 0
    draws: int = 0
    losses: int = 0
    lost: int = 0
    unloadable: str = ""
    pairs_per_game: int = 1  # W/D/L count pairs, this many a game (players - 1)

    def __post_init__(self) -> None:
        _check_counts(self, "MatchScore", ("wins", "draws", "losses", "lost"))
        if self.pairs_per_game < 1:
            raise ValueError(f"MatchScore.pairs_per_game must be >= 1, got {self.pairs_per_game}")

    @property
    def finished(self) -> int:
        """Finished games: with more than two players W/D/L count pairs, `pairs_per_game` a game."""
        return (self.wins + self.draws + self.losses) // self.pairs_per_game


class GameSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What the cluster reports about one game now; `failed_training` is a dead-lettered job."""

    games_total: int = 0
    queued_selfplay: int = 0
    queued_by_tier: dict[str, int] = {}  # the self-play jobs queued in each tier
    trained: Trained | None = None
    failed_training: int | None = None
    match: MatchScore | None = None

    def __post_init__(self) -> None:
        _check_counts(self, "GameSnapshot", ("games_total", "queued_selfplay"))


class Snapshot(msgspec.Struct, frozen=True):
    """Live workers by kind and per-game observations; a game not present reports nothing."""

    selfplay_workers: int = 0
    eval_workers: int = 0
    games: dict[str, GameSnapshot] = {}
    # Live workers' throughput per tier (shared.loop.placement.tier_capacity)
    selfplay_tiers: dict[str, float] = {}
    train_tiers: dict[str, float] = {}
    # Each game's target share of self-play (shared.loop.allocation); {}: the base weights
    selfplay_shares: dict[str, float] = {}
    # Each game's self-play worker-seconds over the allocation's window, and the estimated
    # worker-seconds of one of its jobs (1 when missing): what `fair_picks` weighs jobs by.
    selfplay_spent: dict[str, float] = {}
    selfplay_job_s: dict[str, float] = {}

    def __post_init__(self) -> None:
        _check_counts(self, "Snapshot", ("selfplay_workers", "eval_workers"))

    def game(self, name: str) -> GameSnapshot:
        return self.games.get(name, GameSnapshot())


class _Action(msgspec.Struct, frozen=True, tag_field="type"):
    game: str


class EnqueueSelfplay(_Action, frozen=True, tag="enqueue_selfplay"):
    """Enqueue `jobs` self-play jobs of `games_per_job` games each, played by net `model`."""

    jobs: int
    games_per_job: int
    model: str
    tiers: tuple[str, ...] = ()  # each job's tier (shared.loop.placement); () = the default


class StartTraining(_Action, frozen=True, tag="start_training"):
    """Train `generation` as training job `training` on self-play games up to `games_total`."""

    generation: int
    training: int
    games_total: int
    tier: str = names.DEFAULT_TIER


class AbandonTraining(_Action, frozen=True, tag="abandon_training"):
    """Training job `training` dead-lettered: forget it so that a new one can start."""

    training: int


class StartMatch(_Action, frozen=True, tag="start_match"):
    """Schedule `games` more games of `candidate` against `best`; the first opens the match."""

    candidate: str
    best: str
    games: int


class Promote(_Action, frozen=True, tag="promote"):
    """Make `candidate` the best net as `generation`; `result` is None when promoted ungated."""

    candidate: str
    generation: int
    result: SprtResult | None = None


class Reject(_Action, frozen=True, kw_only=True, tag="reject"):
    """Drop `candidate` (it was shown worse, failed the cap rule, or cannot be played: then
    `reason` says why); the best stays."""

    candidate: str
    generation: int
    result: SprtResult | None = None
    reason: str = ""


Action = EnqueueSelfplay | StartTraining | AbandonTraining | StartMatch | Promote | Reject


def should_train(state: GameState, games_total: int, cfg: LoopConfig) -> bool:
    """Train when idle (no training, no match) and `games_per_generation` games are new.

    With no best net yet, train at once: that training makes the initial network.
    """
    if state.training_in_progress or state.pending_eval is not None:
        return False
    if state.best is None:
        return True
    return games_total - state.games_at_last_train >= cfg.games_per_generation


def match_games_to_schedule(
    scheduled: int, score: MatchScore, eval_workers: int, cfg: LoopConfig
) -> int:
    """More match games to schedule, in whole jobs: up to the in-flight window, until max_games
    are live (scheduled and not lost), and never past max_games plus one job in all.

    The window is max(1, eval_workers) * eval_jobs_per_worker * eval_games_per_job games. Lost
    games no longer count as live, so they are replaced, but only within that one job's slack:
    jobs that keep dead-lettering cannot make a match schedule games without end.
    """
    per_job = cfg.eval_games_per_job
    live = scheduled - score.lost
    window = max(1, eval_workers) * cfg.eval_jobs_per_worker * per_job
    jobs = min(
        max(0, window - _in_flight(scheduled, score)) // per_job,
        -(-max(0, cfg.sprt.max_games - live) // per_job),  # whole jobs up to the cap
        max(0, match_games_limit(cfg) - scheduled) // per_job,
    )
    return jobs * per_job


def match_games_limit(cfg: LoopConfig) -> int:
    """The most match games ever scheduled for one candidate."""
    return cfg.sprt.max_games + cfg.eval_games_per_job


def _in_flight(scheduled: int, score: MatchScore) -> int:
    return max(0, scheduled - score.lost - score.finished)


def next_actions(state: LoopState, snapshot: Snapshot, cfg: LoopConfig) -> list[Action]:
    """Everything the scheduler should do now, in order; apply each to `state` once done."""
    actions: list[Action] = []
    for name in cfg.games:
        game_state = state.game(name)
        for action in _game_actions(name, game_state, snapshot, cfg.for_game(name)):
            game_state = apply_game(game_state, action)
            actions.append(action)
        state = _with_game(state, name, game_state)
    actions.extend(_selfplay_actions(state, snapshot, cfg))
    return actions


def apply(state: LoopState, action: Action) -> LoopState:
    """The loop state after `action` has been carried out."""
    return _with_game(state, action.game, apply_game(state.game(action.game), action))


def apply_game(state: GameState, action: Action) -> GameState:
    """One game's state after `action`; ValueError for a transition the policy never makes."""
    match action:
        case EnqueueSelfplay():
            _require(action.jobs >= 0, action)
            return msgspec.structs.replace(state, selfplay_jobs=state.selfplay_jobs + action.jobs)
        case StartTraining():
            return _start_training(state, action)
        case AbandonTraining():
            _require(state.training_in_progress and action.training == state.trainings, action)
            return msgspec.structs.replace(state, training_in_progress=False)
        case StartMatch():
            return _start_match(state, action)
        case Promote():
            done = _decide(state, action, ungated=action.result is None)
            return msgspec.structs.replace(
                done, best=action.candidate, generation=action.generation
            )
        case Reject():
            return _decide(state, action, ungated=False)
        case _:
            assert_never(action)


def rating_issued(state: LoopState, game: str) -> LoopState:
    """The loop state after one more rating job of `game` was enqueued."""
    current = state.game(game)
    return _with_game(
        state, game, msgspec.structs.replace(current, rating_jobs=current.rating_jobs + 1)
    )


def _decide(state: GameState, action: Promote | Reject, *, ungated: bool) -> GameState:
    """The candidate's evaluation is over (an ungated promotion ends the training instead)."""
    _require(
        (ungated and state.training_in_progress) or state.pending_eval == action.candidate, action
    )
    _require(action.generation == state.generation + 1, action)
    return msgspec.structs.replace(
        state, training_in_progress=False, pending_eval=None, match_games=0
    )


def _game_actions(name: str, state: GameState, snapshot: Snapshot, cfg: LoopConfig) -> list[Action]:
    """Training result, then match progress, then a new training, each seeing the one before."""
    observed = snapshot.game(name)
    actions: list[Action] = []
    for rule in (_on_trained, _on_match):
        action = rule(name, state, observed, snapshot.eval_workers, cfg)
        if action is not None:
            actions.append(action)
            state = apply_game(state, action)
    if should_train(state, observed.games_total, cfg):
        generation, training = state.generation + 1, state.trainings + 1
        tier = fastest_tier(snapshot.train_tiers)
        actions.append(StartTraining(name, generation, training, observed.games_total, tier))
    return actions


def _on_trained(
    name: str, state: GameState, observed: GameSnapshot, eval_workers: int, cfg: LoopConfig
) -> Action | None:
    """The current training's outcome: a dead letter, or a candidate to match or promote."""
    if not state.training_in_progress:
        return None
    if observed.failed_training == state.trainings:
        return AbandonTraining(name, state.trainings)
    trained = observed.trained
    if trained is None or trained.training != state.trainings:
        return None
    if state.best is None or cfg.gate == "none":
        return Promote(name, trained.candidate, state.generation + 1)
    first = match_games_to_schedule(0, MatchScore(candidate=trained.candidate), eval_workers, cfg)
    return StartMatch(name, trained.candidate, state.best, first)


def _on_match(
    name: str, state: GameState, observed: GameSnapshot, eval_workers: int, cfg: LoopConfig
) -> Action | None:
    """Promote or reject when the SPRT decides; otherwise top the match up."""
    candidate, best = state.pending_eval, state.best
    if candidate is None or best is None:
        return None
    score = observed.match
    if score is None or score.candidate != candidate:
        score = MatchScore(candidate=candidate)
    if score.unloadable:
        return Reject(
            game=name, candidate=candidate, generation=state.generation + 1, reason=score.unloadable
        )
    result = sprt(
        score.wins, score.draws, score.losses, cfg.sprt, pairs_per_game=score.pairs_per_game
    )
    if result.decision != "continue":
        return _decided(name, candidate, state.generation + 1, result)
    more = match_games_to_schedule(state.match_games, score, eval_workers, cfg)
    if more > 0:
        return StartMatch(name, candidate, best, more)
    if _in_flight(state.match_games, score) == 0:
        return _exhausted(name, candidate, state, score, cfg)
    return None


def _decided(name: str, candidate: str, generation: int, result: SprtResult) -> Action:
    if result.decision == "accept_h1":
        return Promote(name, candidate, generation, result)
    return Reject(game=name, candidate=candidate, generation=generation, result=result)


def _exhausted(
    name: str, candidate: str, state: GameState, score: MatchScore, cfg: LoopConfig
) -> Reject:
    """Nothing in flight and no games left to schedule: too many match jobs were dead-lettered.
    The best stays (a candidate whose games keep failing must not become every self-play
    worker's net); the SPRT over the games played goes with the reason."""
    reason = f"match cut short: {score.lost} of {state.match_games} games dead-lettered"
    result = (
        sprt(score.wins, score.draws, score.losses, cfg.sprt, pairs_per_game=score.pairs_per_game)
        if score.finished
        else None
    )
    return Reject(
        game=name,
        candidate=candidate,
        generation=state.generation + 1,
        result=result,
        reason=reason,
    )


def _selfplay_actions(state: LoopState, snapshot: Snapshot, cfg: LoopConfig) -> list[Action]:
    """Self-play jobs for every game with a best net: the worker queue's free slots (live
    workers * queue_target_per_worker, less the jobs stored) go to the games by their shares of
    worker time (`shared.loop.allocation.fair_picks`), each within its own job cap."""
    ready = {name: best for name in cfg.games if (best := state.game(name).best) is not None}
    queued = {name: snapshot.game(name).queued_selfplay for name in ready}
    picks = fair_picks(
        snapshot.selfplay_workers * cfg.queue_target_per_worker - sum(queued.values()),
        selfplay_shares(ready, snapshot, cfg),
        snapshot.selfplay_spent,
        queued,
        {name: snapshot.selfplay_job_s.get(name, 1.0) for name in ready},
        {name: room_for_jobs(queued[name], cfg.for_game(name)) for name in ready},
    )
    actions: list[Action] = []
    for name, best in ready.items():
        jobs = picks[name]
        if jobs > 0:
            tiers = place(jobs, snapshot.game(name).queued_by_tier, snapshot.selfplay_tiers)
            actions.append(
                EnqueueSelfplay(name, jobs, cfg.for_game(name).selfplay_games_per_job, best, tiers)
            )
    return actions


def selfplay_shares(ready: Iterable[str], snapshot: Snapshot, cfg: LoopConfig) -> dict[str, float]:
    """Each ready game's share of self-play: the snapshot's (the allocation's), else its base
    weight."""
    shares = snapshot.selfplay_shares or {name: cfg.weights.get(name, 1.0) for name in cfg.games}
    return {name: shares.get(name, 0.0) for name in ready}


def room_for_jobs(queued: int, cfg: LoopConfig) -> int:
    """Jobs a game may add now: at most `max_enqueue`, and up to its `selfplay_job_cap`."""
    room = cfg.max_enqueue
    if cfg.selfplay_job_cap is not None:
        room = min(room, cfg.selfplay_job_cap - queued)
    return max(0, room)


def _check_weights(weights: dict[str, float], games: tuple[str, ...]) -> None:
    for name, weight in weights.items():
        if name not in games:
            raise ValueError(f"LoopConfig.weights[{name!r}] names no game of {games!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"LoopConfig.weights[{name!r}] must be finite and >= 0, got {weight}")


def _start_training(state: GameState, action: StartTraining) -> GameState:
    _require(not state.training_in_progress and state.pending_eval is None, action)
    _require(action.training == state.trainings + 1, action)
    _require(action.generation == state.generation + 1, action)
    return msgspec.structs.replace(
        state,
        training_in_progress=True,
        trainings=action.training,
        games_at_last_train=action.games_total,
    )


def _start_match(state: GameState, action: StartMatch) -> GameState:
    _require(action.games >= 0 and action.best == state.best, action)
    if state.pending_eval == action.candidate:
        return msgspec.structs.replace(state, match_games=state.match_games + action.games)
    _require(state.training_in_progress and state.pending_eval is None, action)
    return msgspec.structs.replace(
        state, training_in_progress=False, pending_eval=action.candidate, match_games=action.games
    )


def _with_game(state: LoopState, name: str, game: GameState) -> LoopState:
    return LoopState({**state.games, name: game})


def _require(ok: bool, action: Action) -> None:
    if not ok:
        raise ValueError(f"{type(action).__name__} is not valid in this state: {action!r}")


def _check_counts(obj: msgspec.Struct, owner: str, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ValueError(f"{owner}.{name} must be >= 0, got {getattr(obj, name)}")
