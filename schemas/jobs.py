"""Training-loop wire messages: jobs, results, model registry entries, dead letters."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.control import Wire


class PlayerSpec(msgspec.Struct, frozen=True):
    """One side of an evaluation game: a model by digest, or a baseline agent spec."""

    name: str  # stable rating-pool id, e.g. "gen3" or "mcts:200"
    sha256: str = ""  # set for models
    agent: str = ""  # set for baselines: random | onestep | mcts:N
    sims: int = 0  # search budget for models


class SelfplayJob(Wire, frozen=True, tag="conclave.job.selfplay.v1"):
    job_id: str
    game: str
    model_sha256: str  # "" means the uniform-policy bootstrap
    generation: int
    games: int
    sims: int
    term: int
    group: str = "sp"
    resign_value: float | None = None  # resign below this Q (None: play every game out)


class TrainJob(Wire, frozen=True, tag="conclave.job.train.v1"):
    job_id: str
    game: str
    generation: int  # the generation this training produces
    parent_sha256: str  # "" trains from scratch
    window_games: int
    steps: int
    term: int
    group: str = "t"


class EvalJob(Wire, frozen=True, tag="conclave.job.eval.v1"):
    job_id: str
    game: str
    kind: Literal["match", "gauntlet", "rating"]
    a: PlayerSpec
    b: PlayerSpec
    games: int  # played in colour-swapped pairs
    term: int
    seed: int = 0
    group: str = "e"


Job = SelfplayJob | TrainJob | EvalJob


class EvalResult(Wire, frozen=True, tag="conclave.eval_result.v1"):
    """The outcome of one evaluation job, from `a`'s side."""

    job_id: str
    game: str
    kind: Literal["match", "gauntlet", "rating"]
    a: PlayerSpec
    b: PlayerSpec
    wins_a: int
    draws: int
    wins_b: int
    term: int
    finished_at: float
    group: str = ""  # the job's group, so an archived result can be filed again on restore
    elapsed_s: float = 0.0  # wall time of the match (0: not measured, an older evaluator)
    cpu_s: float = 0.0  # the evaluator process's CPU time over the match
    waited_s: float = 0.0  # from the job's submission to the start of the delivery that played it


class ModelMeta(Wire, frozen=True, tag="conclave.model.v1"):
    """A checkpoint in the object store `models`, named by `sha256`."""

    sha256: str
    game: str
    generation: int
    parent_sha256: str
    size_bytes: int
    window_first_seq: int
    window_last_seq: int
    positions: int
    steps: int
    policy_loss: float | None  # None when no step was taken (the initial network)
    value_loss: float | None
    created_at: float
    train_job: str
    window_games: int = 0  # distinct games in the replay window when training began
    duplicates_skipped: int = 0  # game records seen again (same id) and not kept twice
    rejected_records: int = 0  # records that failed replay under the rules
    # Resignation calibrated on the window's played-out games (None: not enough yet), and the
    # false-resign check: of `resign_checked` games someone would have resigned (resigning
    # disabled), `false_resigns` were not lost by them.
    resign_threshold: float | None = None
    resign_samples: int = 0
    resign_checked: int = 0
    false_resigns: int = 0


class BestPointer(Wire, frozen=True, tag="conclave.best.v1"):
    """Which model is the best of a game; moved only by compare-and-set, stamped with a term."""

    game: str
    generation: int
    sha256: str
    term: int
    promoted_at: float
    reason: str = ""


ModelEventKind = Literal["candidate", "promoted", "rejected"]


class ModelEvent(Wire, frozen=True, tag="conclave.model_event.v1"):
    kind: ModelEventKind
    game: str
    generation: int
    sha256: str
    at: float
    detail: str = ""


class TrainProgress(Wire, frozen=True, tag="conclave.train_progress.v1"):
    """A training job's progress, every few seconds while it trains and once when done.

    The losses and the rate cover the steps since the previous report (the final report repeats
    the last ones when no step followed); a loss is None when it is not finite or no step ran.
    """

    game: str
    job_id: str
    generation: int
    step: int  # steps taken so far
    steps: int  # the job's step budget
    policy_loss: float | None
    value_loss: float | None
    samples_per_s: float
    at: float
    done: bool = False
    learning_rate: float = 0.0  # at the last step reported


class JobFailure(Wire, frozen=True, tag="conclave.job_failure.v1"):
    """A worker's report that an attempt failed; the dead-letter keeps the last reason."""

    job_id: str
    kind: str
    node: str
    reason: str
    delivery: int
    at: float


class DeadLetter(Wire, frozen=True, tag="conclave.dead_letter.v1"):
    """A job that exhausted its deliveries, with why, moved out of the work queue."""

    kind: str
    job_id: str
    stream_seq: int
    deliveries: int
    reason: str
    job: bytes  # the original job message
    at: float


WIRE_MESSAGES: tuple[type[msgspec.Struct], ...] = (
    SelfplayJob,
    TrainJob,
    EvalJob,
    EvalResult,
    ModelMeta,
    BestPointer,
    ModelEvent,
    TrainProgress,
    JobFailure,
    DeadLetter,
)


def job_group(job: SelfplayJob | TrainJob | EvalJob) -> str:
    """The subject group of a job within its game (e.g. "m3" for the third match)."""
    return job.group
