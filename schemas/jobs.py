"""Training-loop wire messages: jobs, results, model registry entries, dead letters."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.codec import Count, GameValue, Ident, NonNegative, Sha256, Text, Timestamp, Token
from schemas.control import Wire

# Work sizes a job asks for, bounded far above any preset so that no message can make a worker
# allocate a search tree, a match or a replay window it cannot hold.
MAX_SIMS = 100_000
MAX_GAMES_PER_JOB = 100_000
MAX_STEPS = 10_000_000

Sims = Annotated[int, Meta(ge=0, le=MAX_SIMS)]
Games = Annotated[int, Meta(ge=0, le=MAX_GAMES_PER_JOB)]
PairsPerGame = Annotated[int, Meta(ge=1, le=3)]  # opponents of one seat: 2..4 players


class PlayerSpec(msgspec.Struct, frozen=True):
    """One side of an evaluation game: a model by digest, or a baseline agent spec."""

    name: Ident  # stable rating-pool id, e.g. "gen3" or "mcts:200"
    sha256: Sha256 = ""  # set for models
    agent: Ident = ""  # set for baselines: random | onestep | mcts:N
    sims: Sims = 0  # search budget for models

    def same_player(self, other: PlayerSpec) -> bool:
        """The same rating-pool entry, or the same model under two names."""
        return self.name == other.name or (
            bool(self.sha256) and (self.sha256, self.agent) == (other.sha256, other.agent)
        )


class SelfplayJob(Wire, frozen=True, kw_only=True, tag="conclave.job.selfplay.v1"):
    job_id: Ident
    game: Token
    model_sha256: Sha256  # "" means the uniform-policy bootstrap
    generation: Count
    games: Games
    sims: Sims
    term: Count
    group: Token = "sp"
    resign_value: GameValue | None = None  # resign below this Q (None: play every game out)


class TrainJob(Wire, frozen=True, kw_only=True, tag="conclave.job.train.v1"):
    """Train `generation` from `parent_sha256` for `steps` steps on the trainer's own window."""

    job_id: Ident
    game: Token
    generation: Count  # the generation this training produces
    parent_sha256: Sha256  # "" trains from scratch
    steps: Annotated[int, Meta(ge=0, le=MAX_STEPS)]
    term: Count
    group: Token = "t"


class EvalJob(Wire, frozen=True, kw_only=True, tag="conclave.job.eval.v1"):
    job_id: Ident
    game: Token
    kind: Literal["match", "gauntlet", "rating"]
    a: PlayerSpec
    b: PlayerSpec
    games: Games  # played in colour-swapped pairs
    term: Count
    seed: Count = 0
    group: Token = "e"


Job = SelfplayJob | TrainJob | EvalJob


class EvalResult(Wire, frozen=True, kw_only=True, tag="conclave.eval_result.v1"):
    """The outcome of one evaluation job, from `a`'s side, between two different players.

    W/D/L count pairs: a game of P players gives `a` one result against each of its
    `pairs_per_game` = P - 1 opponents (docs/evaluation-nplayer.md); with two, pairs are games.
    """

    job_id: Ident
    game: Token
    kind: Literal["match", "gauntlet", "rating"]
    a: PlayerSpec
    b: PlayerSpec
    wins_a: Count
    draws: Count
    wins_b: Count
    term: Count
    finished_at: Timestamp
    group: Token = ""  # the job's group, so an archived result can be filed again on restore
    elapsed_s: NonNegative = 0.0  # wall time of the match (0: not measured, an older evaluator)
    cpu_s: NonNegative = 0.0  # the evaluator process's CPU time over the match
    waited_s: NonNegative = 0.0  # from the job's submission to the start of the delivery
    pairs_per_game: PairsPerGame = 1  # older results are all two-player

    def __post_init__(self) -> None:
        # A player against itself would enter the ratings and the SPRT as a real game.
        if self.a.same_player(self.b):
            raise ValueError(f"EvalResult.b is the same player as a ({self.a.name!r})")
        problem = pairs_problem(self.wins_a, self.draws, self.wins_b, self.pairs_per_game)
        if problem is not None:
            raise ValueError(f"EvalResult: {problem}")

    @property
    def games(self) -> int:
        """Games played: the pairs over `pairs_per_game`."""
        return (self.wins_a + self.draws + self.wins_b) // self.pairs_per_game


def pairs_problem(wins_a: int, draws: int, wins_b: int, pairs_per_game: int) -> str | None:
    """Why pairwise counts of P = pairs_per_game + 1 player games are no whole games; None if
    they are. A game adds k = pairs_per_game wins (a won), one loss and k - 1 draws (another
    won) or k draws, so the counts are games exactly when these three hold."""
    k = pairs_per_game
    if wins_a % k:
        return f"wins_a {wins_a} is not a multiple of pairs_per_game {k}"
    if (wins_a + draws + wins_b) % k:
        return f"wins_a + draws + wins_b is not a multiple of pairs_per_game {k}"
    if draws < wins_b * (k - 1):
        return f"draws {draws} < wins_b * (pairs_per_game - 1) = {wins_b * (k - 1)}"
    return None


class ModelMeta(Wire, frozen=True, kw_only=True, tag="conclave.model.v1"):
    """A checkpoint in the object store `models`, named by `sha256`."""

    sha256: Sha256
    game: Token
    generation: Count
    parent_sha256: Sha256
    size_bytes: Count
    window_first_seq: Count
    window_last_seq: Count
    positions: Count
    steps: Count
    policy_loss: NonNegative | None  # None when no step was taken (the initial network)
    value_loss: NonNegative | None
    created_at: Timestamp
    train_job: Ident
    window_games: Count = 0  # distinct games in the replay window when training began
    duplicates_skipped: Count = 0  # game records seen again (same id) and not kept twice
    rejected_records: Count = 0  # records that failed replay under the rules
    # Resignation calibrated on the window's played-out games (None: not enough yet), and the
    # false-resign check: of `resign_checked` games someone would have resigned (resigning
    # disabled), `false_resigns` were not lost by them.
    resign_threshold: GameValue | None = None
    resign_samples: Count = 0
    resign_checked: Count = 0
    false_resigns: Count = 0


class BestPointer(Wire, frozen=True, kw_only=True, tag="conclave.best.v1"):
    """Which model is the best of a game; moved only by compare-and-set, stamped with a term."""

    game: Token
    generation: Count
    sha256: Sha256
    term: Count
    promoted_at: Timestamp
    reason: Text = ""


ModelEventKind = Literal["candidate", "promoted", "rejected"]


class ModelEvent(Wire, frozen=True, kw_only=True, tag="conclave.model_event.v1"):
    kind: ModelEventKind
    game: Token
    generation: Count
    sha256: Sha256
    at: Timestamp
    detail: Text = ""


class TrainProgress(Wire, frozen=True, kw_only=True, tag="conclave.train_progress.v1"):
    """A training job's progress, every few seconds while it trains and once when done.

    The losses and the rate cover the steps since the previous report (the final report repeats
    the last ones when no step followed); a loss is None when it is not finite or no step ran.
    """

    game: Token
    job_id: Ident
    generation: Count
    step: Count  # steps taken so far
    steps: Count  # the job's step budget
    policy_loss: NonNegative | None
    value_loss: NonNegative | None
    samples_per_s: NonNegative
    at: Timestamp
    done: bool = False
    learning_rate: NonNegative = 0.0  # at the last step reported


class JobFailure(Wire, frozen=True, kw_only=True, tag="conclave.job_failure.v1"):
    """A worker's report that an attempt failed; the dead-letter keeps the last reason."""

    job_id: Ident
    kind: Token
    node: Token
    reason: Text
    delivery: Count
    at: Timestamp


class DeadLetter(Wire, frozen=True, kw_only=True, tag="conclave.dead_letter.v1"):
    """A job that exhausted its deliveries, with why, moved out of the work queue."""

    kind: Token
    job_id: Ident
    stream_seq: Count
    deliveries: Count
    reason: Text
    job: bytes  # the original job message
    at: Timestamp


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
