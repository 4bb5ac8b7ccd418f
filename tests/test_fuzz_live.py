"""Issue 14 against a live cluster: `conclave up --game tictactoe` (auth on, a real nats-server,
every service a real supervised process) gets a few hundred random and mutated messages on every
application subject each identity may publish to, each sent with that identity's own credentials,
and no service crashes or wedges: every consumer gets past them and the loop goes on.

Subjects come from `shared.auth.permissions`: every publish grant of the five role identities and of
the node identity, wildcards filled with plausible tokens (the running game, another and an
unknown one; the real node and another; real and unknown job groups and ids; the best model's
digest and an unknown one). Covered: pulses, logs, game records, results, every event kind,
`leader.validity`, jobs of every kind and lane, dead letters, KV puts (loop `issued.*`, registry
model metadata, trained markers, sync status, a node's status) and the models object store's
chunk and meta subjects. Left out: JetStream API subjects (`$JS.API.>`, `$JS.<domain>.API.>`,
`$JS.ACK.>`, `$JS.FC.>`: the server's, not our consumers'), and the keys whose readers obey them
as their writer's word, so that what is written there steers the loop by design: the leader and
archive leases, and the coordinator's loop state, best pointer, accepted protocol range and
decided marks (evaluators drop the jobs of a match marked decided).

Targets take turns (each at least once, those whose consumers do most more often), and
hypothesis draws each payload's recipe (derandomized, so CI is reproducible): random bytes, or a
valid message of the subject's schema mutated (a wrong type, a missing or extra field, NaN,
infinity, huge or negative numbers, long strings, deep nesting, a name of something else,
another message type, msgpack for JSON and the reverse, flipped or cut bytes). Stream subjects
get a durable publish. Then an unreadable sentinel behind the fuzz on each consumer's subject
must come out in the dead-letter stream naming the field (that consumer got past everything in
front of it), no service process may have been restarted, and the loop must go on.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import itertools
import json
import math
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import nats.errors
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import names
from schemas.codec import BadMessage, decode
from schemas.control import (
    LeaderEvent,
    LeaderValidity,
    NodeStatus,
    Resources,
    ServicePulse,
    ServiceState,
)
from schemas.game import GameRecord
from schemas.jobs import (
    BestPointer,
    DeadLetter,
    EvalJob,
    EvalResult,
    JobFailure,
    ModelEvent,
    ModelMeta,
    PlayerSpec,
    SelfplayJob,
    TrainJob,
    TrainProgress,
)
from services.scheduler import STATE_KEY, LoopRecord
from services.syncer import SyncStatus
from shared.auth.identities import NODE_ROLES_FILE, node_seed_path, seed_path
from shared.auth.permissions import (
    ROLES,
    Permissions,
    Role,
    covers,
    durables,
    may_publish,
    node_permissions,
    permissions,
)
from shared.bus import provision
from shared.bus.ports import Bus
from shared.bus.server import free_port
from shared.learn.evaltypes import uniform_evaluator
from shared.learn.games import get_game
from shared.learn.selfplay import SelfPlayConfig, self_play
from shared.lease.fencing import read_termed
from shared.lease.watch import current_holder
from tests import hostile
from tests.conftest import Processes, eventually

pytestmark = [pytest.mark.xdist_group("heavy"), pytest.mark.timeout(240)]

EXAMPLES = 600
GAME, OTHER_GAME, UNKNOWN_GAME = "tictactoe", "connect4", "nogame"
NODE, OTHER_NODE = "local", "fuzz-node"
FAKE_SHA = "ee" * 32
CHUNKS_NUID = "fuzzchunks"
SERVICES = ("heartbeat", "leader", "scheduler", "selfplay", "trainer", "evaluator", "syncer")
GROUPS = ("sp", "t1", "m1", "g1-0", "r", "x9")
JOB_IDS = ("tictactoe-t1", "tictactoe-m1-0", "fuzz-job")
TRAININGS = ("tictactoe-t0", "tictactoe-t1", "tictactoe-t2", "tictactoe-t3", "fuzz-job")
SENTINEL = b"\xffsentinel"
EVAL_GROUPS = (("m1", "match"), ("m9", "match"), ("g1-0", "gauntlet"), ("r", "rating"))
DLQ_GROUPS = (
    ("selfplay", "sp"),
    ("train", "t1"),
    ("eval", "m1"),
    ("records", "rejected"),
    ("model", "candidate"),
    ("archive", "games"),
    ("results", "r"),
)
ISSUED = (("r", "fuzz-job"), ("m1", "tictactoe-m1-9"))
STARTUP_S, SETTLE_S, LOOP_S = 90.0, 60.0, 90.0

Form = Literal["json", "msgpack"]
T = TypeVar("T")


@dataclass(frozen=True)
class Template:
    """A valid message of one schema, as builtins, and how it travels."""

    doc: dict[str, Any]
    form: Form = "json"


@dataclass(frozen=True)
class Target:
    identity: str  # a role, or `node <id>`
    subject: str
    kind: str  # the schema its consumers expect (a key of `templates()`), "raw" when none


@dataclass(frozen=True)
class Send:
    target: Target
    payload: bytes


# -- who may publish what ----------------------------------------------------------------------


NodeRoles = tuple[Role, ...]


def identities(node_roles: NodeRoles) -> dict[str, Permissions]:
    """Every identity but admin: the roles', and the node's carrying `node_roles`."""
    roles = {role: permissions(role) for role in ROLES if role != "admin"}
    return roles | {f"node {NODE}": node_permissions(NODE, "fuzz", node_roles)}


def node_roles_of(auth: Path) -> NodeRoles:
    """The roles the node's identity carries, as the server's accounts grant them."""
    path = auth / NODE_ROLES_FILE
    listed = json.loads(path.read_text()).get(NODE, []) if path.exists() else []
    return tuple(role for role in ROLES if role in listed)


def is_application(pattern: str) -> bool:
    """Ours, not the server's: JetStream API, acks and flow control go to nats-server."""
    return not pattern.startswith(("$JS.", "_INBOX."))


def trusted_state(subject: str) -> bool:
    """A key its readers obey as their writer's word (left out, see the docstring)."""
    if not subject.startswith("$KV."):
        return False
    _, bucket, key = subject.split(".", 2)
    return (
        key in (names.LEADER_KEY, names.SYNCER_KEY, names.PROTOCOL_KEY)
        or (bucket == names.LOOP_BUCKET and key == STATE_KEY)
        or key.endswith(".best")
        or ".decided." in key
    )


def candidate_subjects(best: str, node_roles: NodeRoles) -> list[str]:
    """Concrete subjects with plausible tokens, and every wildcard-free grant."""
    games = (GAME, OTHER_GAME, UNKNOWN_GAME)
    kv = names.kv_subject
    every = identities(node_roles).values()
    grants = {p for grant in every for p in grant.publish if "*" not in p}
    return sorted(
        {
            *(g for g in grants if ">" not in g and is_application(g)),
            *(names.pulse_subject(NODE, s) for s in ("heartbeat", "scheduler", "selfplay", "x")),
            names.pulse_subject(OTHER_NODE, "selfplay"),
            *(names.log_subject(NODE, s, level) for s, level in (("selfplay", "info"), ("x", "x"))),
            *(names.games_subject(g) for g in games),
            *(names.results_subject(g, grp) for g in games[:2] for grp in GROUPS),
            *(names.model_event_subject(k) for k in ("candidate", "promoted", "rejected", "x")),
            *(names.leader_event_subject(k) for k in ("elected", "lost", "fenced", "released")),
            *(names.train_progress_subject(g) for g in games),
            *(names.job_failure_subject(j) for j in JOB_IDS),
            "events.fuzz.x",
            *(names.job_subject("selfplay", g, "sp") for g in games),
            *(names.job_subject("train", GAME, grp) for grp in ("t1", "t9")),
            *(names.job_subject("eval", GAME, grp, lane) for grp, lane in EVAL_GROUPS),
            "jobs.fuzz.tictactoe.x",
            *(names.dlq_subject(kind, GAME, grp) for kind, grp in DLQ_GROUPS),
            *(names.dlq_subject(kind, "unknown", "x9") for kind, _ in DLQ_GROUPS),
            *(kv(names.LOOP_BUCKET, names.issued_key(GAME, g, j)) for g, j in ISSUED),
            kv(names.LOOP_BUCKET, "fuzz"),
            *(kv(names.REGISTRY_BUCKET, names.model_key(GAME, sha)) for sha in (best, FAKE_SHA)),
            *(kv(names.REGISTRY_BUCKET, names.trained_key(j)) for j in TRAININGS),
            kv(names.REGISTRY_BUCKET, "sync.status"),
            kv(names.REGISTRY_BUCKET, "fuzz"),
            *(kv(names.NODES_BUCKET, n) for n in (NODE, OTHER_NODE)),
            *(object_meta_subject(sha) for sha in (best, FAKE_SHA)),
            f"$O.{names.MODELS_STORE}.C.{CHUNKS_NUID}",
        }
    )


def object_meta_subject(sha: str) -> str:
    return f"$O.{names.MODELS_STORE}.M.{base64.urlsafe_b64encode(sha.encode()).decode()}"


MODELS_STREAM = f"OBJ_{names.MODELS_STORE}"
EVERY_OBJECT_META = f"$O.{names.MODELS_STORE}.M.*"


def targets(best: str, node_roles: NodeRoles = ()) -> list[Target]:
    """Every (identity, subject) pair the identity may publish, but trusted state."""
    found = []
    for identity, grant in identities(node_roles).items():
        for subject in candidate_subjects(best, node_roles):
            if may_publish(grant, subject) and not trusted_state(subject):
                found.append(Target(identity, subject, kind_of(subject)))
    return found


def uncovered_grants(chosen: list[Target], node_roles: NodeRoles) -> list[str]:
    """Application grants no target exercises (a new grant needs plausible tokens here)."""
    missing = []
    for identity, grant in identities(node_roles).items():
        mine = [t.subject for t in chosen if t.identity == identity]
        for pattern in filter(is_application, grant.publish):
            left_out = "*" not in pattern and trusted_state(pattern)
            if not left_out and not any(covers(pattern, s) for s in mine):
                missing.append(f"{identity}: {pattern}")
    return missing


KINDS = (
    ("pulse.*.*", "pulse"),
    ("logs.*.*.*", "log"),
    ("games.*", "game"),
    ("results.*.*", "result"),
    ("events.model.*", "model_event"),
    ("events.leader.*", "leader_event"),
    ("events.train.progress.*", "progress"),
    ("events.job.failed.*", "failure"),
    ("leader.validity", "validity"),
    ("jobs.selfplay.*.*", "selfplay_job"),
    ("jobs.train.*.*", "train_job"),
    ("jobs.eval.*.*.*", "eval_job"),
    ("dlq.*.*.*", "dead_letter"),
    ("$KV.loop.issued.*.*.*", "eval_job"),
    ("$KV.registry.*.model.*", "model_meta"),
    ("$KV.registry.trained.*", "model_meta"),
    ("$KV.registry.sync.status", "sync_status"),
    ("$KV.nodes.*", "node_status"),
    (f"$O.{names.MODELS_STORE}.M.*", "object_meta"),
)


def kind_of(subject: str) -> str:
    return next((kind for pattern, kind in KINDS if covers(pattern, subject)), "raw")


def stored(subject: str) -> bool:
    """Whether a stream keeps `subject` (a durable publish), or it is a core subject."""
    return any(covers(pattern, subject) for pattern in stream_subjects())


@functools.cache
def stream_subjects() -> tuple[str, ...]:
    configs = [*provision.streams(), *provision.lease_slot_streams(1)]
    return tuple(p for c in configs for p in c.subjects or [])


# -- valid messages ----------------------------------------------------------------------------


def templates(best: str) -> dict[str, Template]:
    now = time.time()
    random, onestep = PlayerSpec("random", agent="random"), PlayerSpec("onestep", agent="onestep")
    gen1 = PlayerSpec("gen1", best, sims=8)
    meta = ModelMeta(
        sha256=FAKE_SHA,
        game=GAME,
        generation=1,
        parent_sha256=best,
        size_bytes=100,
        window_first_seq=1,
        window_last_seq=10,
        positions=100,
        steps=1,
        policy_loss=1.0,
        value_loss=0.1,
        created_at=now,
        train_job="fuzz-job",
    )
    state = ServiceState(
        name="selfplay",
        alive=True,
        pid=4242,
        lag_p50_ms=0.1,
        lag_max_ms=0.5,
        last_pulse_age_s=0.2,
        counters={"games": 1.0},
    )
    messages: dict[str, msgspec.Struct] = {
        "pulse": ServicePulse(
            node=NODE,
            service="selfplay",
            pid=4242,
            lag_p50_ms=0.1,
            lag_max_ms=0.5,
            started_at=now,
            sent_at=now,
            counters={"games": 1.0},
        ),
        "result": EvalResult(
            job_id="tictactoe-m1-0",
            game=GAME,
            kind="match",
            a=gen1,
            b=random,
            wins_a=1,
            draws=0,
            wins_b=1,
            term=1,
            finished_at=now,
        ),
        "model_event": ModelEvent(kind="candidate", game=GAME, generation=1, sha256=best, at=now),
        "leader_event": LeaderEvent(
            kind="elected", node=NODE, instance="fuzz-instance", term=1, at=now
        ),
        "progress": TrainProgress(
            game=GAME,
            job_id="tictactoe-t1",
            generation=1,
            step=10,
            steps=300,
            policy_loss=1.0,
            value_loss=0.1,
            samples_per_s=1000.0,
            at=now,
        ),
        "failure": JobFailure(
            job_id="fuzz-job", kind="selfplay", node=NODE, reason="fuzz", delivery=1, at=now
        ),
        "validity": LeaderValidity(
            node=NODE, instance="fuzz-instance", term=1, valid_from=now, valid_until=now + 3
        ),
        "selfplay_job": SelfplayJob(
            job_id="fuzz-sp", game=GAME, model_sha256=best, generation=1, games=2, sims=2, term=1
        ),
        "train_job": TrainJob(
            job_id="fuzz-t",
            game=GAME,
            generation=1,
            parent_sha256=best,
            steps=1,
            term=1,
            group="t9",
        ),
        "eval_job": EvalJob(
            job_id="fuzz-e",
            game=GAME,
            kind="rating",
            a=random,
            b=onestep,
            games=2,
            term=1,
            group="r",
        ),
        "dead_letter": DeadLetter(
            kind="eval",
            job_id="tictactoe-m1-0",
            stream_seq=1,
            deliveries=5,
            reason="fuzz",
            job=b"{}",
            at=now,
        ),
        "model_meta": meta,
        "sync_status": SyncStatus(
            node=NODE,
            target="file://x",
            archived_through={GAME: 10},
            games_archived=10,
            newest_model=best,
            last_error="",
            last_error_at=0.0,
            updated_at=now,
        ),
        "node_status": NodeStatus(
            node=NODE,
            roles=["selfplay"],
            services=[state],
            version="0.1.0",
            resources=Resources(2, 2**33),
            hostname="host",
            started_at=now,
            sent_at=now,
        ),
    }
    found = {kind: Template(builtins(m)) for kind, m in messages.items()}
    found["game"] = Template(builtins(game_record()), "msgpack")
    found["log"] = Template({"level": "info", "msg": "fuzz", "node": NODE, "service": "selfplay"})
    found["object_meta"] = Template(object_meta(FAKE_SHA))
    return found


def builtins(message: msgspec.Struct) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(message, builtin_types=(bytes,))
    return doc


def game_record() -> GameRecord:
    game = get_game(GAME)
    config = SelfPlayConfig(concurrent_games=1, num_simulations=4)
    rng = np.random.default_rng(0)
    return next(iter(self_play(game, uniform_evaluator, rng, config, num_games=1)))


def object_meta(sha: str) -> dict[str, Any]:
    """The meta message nats-py reads for object `sha` (`ObjectInfo`)."""
    return {
        "name": sha,
        "bucket": names.MODELS_STORE,
        "nuid": CHUNKS_NUID,
        "size": 4,
        "chunks": 1,
        "mtime": "2025-01-01T00:00:00Z",
        "digest": "SHA-256=" + base64.urlsafe_b64encode(b"\x00" * 32).decode(),
        "options": {"max_chunk_size": 1024 * 1024},
    }


# -- mutations ---------------------------------------------------------------------------------

NAN, INF, NEG_INF, DEEP = "@NAN@", "@INF@", "@-INF@", "@DEEP@"
DEPTH = 5000
JSON_SPECIALS = {
    NAN: b"NaN",
    INF: b"1e999",
    NEG_INF: b"-1e999",
    DEEP: b"[" * DEPTH + b"]" * DEPTH,
}
MSGPACK_SPECIALS = {
    NAN: b"\xcb" + struct.pack(">d", math.nan),
    INF: b"\xcb" + struct.pack(">d", math.inf),
    NEG_INF: b"\xcb" + struct.pack(">d", -math.inf),
    DEEP: b"\x91" * DEPTH + b"\xc0",
}
WRONG_VALUES: tuple[Any, ...] = (
    None,
    True,
    "",
    "x",
    OTHER_GAME,
    UNKNOWN_GAME,
    FAKE_SHA,
    "../../etc/passwd",
    -1,
    0,
    2**31,
    2**63 - 1,
    2**64 - 1,
    -(2**63),
    1e30,
    -1e30,
    1.7e308,
    0.5,
    -0.5,
    NAN,
    INF,
    NEG_INF,
    [],
    {},
    ["x"] * 1000,
    {"k": {"k": [1, "x", None]}},
    "a" * 70_000,
    DEEP,
)


SHAS = (FAKE_SHA, "", "ab" * 32)
# Values of the right kind that name something else, by field; other fields get `PLAUSIBLE`.
PLAUSIBLE_BY_FIELD: dict[str, tuple[Any, ...]] = {
    "game": (OTHER_GAME, UNKNOWN_GAME, "", "g" * 64),
    "sha256": SHAS,
    "model_sha256": SHAS,
    "parent_sha256": SHAS,
    "agent": ("mcts:2", "mcts:99999999999999999999", "mcts:x", "greedy", ""),
    "node": (OTHER_NODE, "", "a.b"),
    "service": ("selfplay-2", "svc-x", "", "a.b"),
    "job_id": ("tictactoe-t1", "tictactoe-m1-0", "", "a.b"),
    "group": ("m1", "t1", "r", "x9", "a.b"),
    "kind": ("match", "gauntlet", "rating", "candidate", "promoted", "selfplay", "x"),
    "name": ("gen0", "gen1", "random", "", "a.b"),
    "nuid": (CHUNKS_NUID, ">", "a.b", ""),
    "type": ("conclave.job.eval.v1", "conclave.game.v1", "conclave.x.v2"),
}
PLAUSIBLE: tuple[Any, ...] = (0, 1, 2, 64, 0.0, 1.0, -1.0, 1e10, False, "", [], {})


def encoded(doc: Any, form: Form) -> bytes:
    """`doc` in `form`, each placeholder (NAN, INF, NEG_INF, DEEP) made what it names."""
    if form == "json":
        data = msgspec.json.encode(doc)
        for token, raw in JSON_SPECIALS.items():
            data = data.replace(msgspec.json.encode(token), raw)
        return data
    data = msgspec.msgpack.encode(doc)
    for token, raw in MSGPACK_SPECIALS.items():
        data = data.replace(msgspec.msgpack.encode(token), raw)
    return data


def paths(doc: dict[str, Any]) -> list[tuple[str | int, ...]]:
    """Every field, and the fields of a nested struct or of a list's first struct."""
    found: list[tuple[str | int, ...]] = []
    for key, value in doc.items():
        found.append((key,))
        if isinstance(value, dict):
            found += [(key, inner) for inner in value]
        if isinstance(value, list) and value and isinstance(value[0], dict):
            found += [(key, 0, inner) for inner in value[0]]
    return found


def replaced(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(doc)
    parent: Any = changed
    for step in path[:-1]:
        parent = parent[step]
    if value is _DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return changed


_DELETE = object()


@dataclass(frozen=True)
class Recipe:
    """How to spoil a message, drawn by hypothesis whatever the target (so that the targets can
    be taken in turn): which mutation, and the choices it makes (indexes wrap around)."""

    mutation: int
    field: int
    value: int
    other: int
    noise: bytes
    depth: int
    flips: tuple[tuple[int, int], ...]
    cut: int


RECIPES = st.builds(
    Recipe,
    mutation=st.integers(0, 10**6),
    field=st.integers(0, 10**6),
    value=st.integers(0, 10**6),
    other=st.integers(0, 10**6),
    noise=st.binary(max_size=2048),
    depth=st.sampled_from((33, 200)),
    flips=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4
    ).map(tuple),
    cut=st.integers(0, 10**6),
)
Mutation = Callable[[Recipe, Template, dict[str, Template]], bytes]


def pick(items: Sequence[T], index: int) -> T:
    return items[index % len(items)]


def random_bytes(r: Recipe, _t: Template, _all: dict[str, Template]) -> bytes:
    return r.noise


def valid(_r: Recipe, t: Template, _all: dict[str, Template]) -> bytes:
    return encoded(t.doc, t.form)


def wrong_value(r: Recipe, t: Template, _all: dict[str, Template]) -> bytes:
    value = pick(WRONG_VALUES, r.value)
    return encoded(replaced(t.doc, pick(paths(t.doc), r.field), value), t.form)


def plausible_value(r: Recipe, t: Template, _all: dict[str, Template]) -> bytes:
    """A value of the right kind that names something else: another game, an unknown model, an
    endless search, another node, job or kind."""
    path = pick(paths(t.doc), r.field)
    value = pick(PLAUSIBLE_BY_FIELD.get(str(path[-1]), PLAUSIBLE), r.value)
    return encoded(replaced(t.doc, path, value), t.form)


def other_name(r: Recipe, t: Template, every: dict[str, Template]) -> bytes:
    """A field that names something (a game, a model, a job...) naming something else."""
    named = [p for p in paths(t.doc) if str(p[-1]) in PLAUSIBLE_BY_FIELD]
    if not named:
        return plausible_value(r, t, every)
    path = pick(named, r.field)
    return encoded(replaced(t.doc, path, pick(PLAUSIBLE_BY_FIELD[str(path[-1])], r.value)), t.form)


def missing_field(r: Recipe, t: Template, _all: dict[str, Template]) -> bytes:
    return encoded(replaced(t.doc, pick(paths(t.doc), r.field), _DELETE), t.form)


def extra_field(r: Recipe, t: Template, _all: dict[str, Template]) -> bytes:
    return encoded({**t.doc, "fuzz": pick(WRONG_VALUES, r.value)}, t.form)


def another_type(r: Recipe, _t: Template, every: dict[str, Template]) -> bytes:
    other = every[pick(sorted(every), r.other)]
    return encoded(other.doc, other.form)


def swapped_codec(_r: Recipe, t: Template, _all: dict[str, Template]) -> bytes:
    return encoded(t.doc, "json" if t.form == "msgpack" else "msgpack")


def deep_nesting(r: Recipe, t: Template, _all: dict[str, Template]) -> bytes:
    doc: Any = t.doc
    for _ in range(r.depth):
        doc = [doc]
    return encoded(doc, t.form)


def flipped_bytes(r: Recipe, t: Template, _all: dict[str, Template]) -> bytes:
    data = bytearray(encoded(t.doc, t.form))
    for at, byte in r.flips:
        data[at % len(data)] = byte
    return bytes(data[: 1 + r.cut % len(data)])


MUTATIONS: tuple[Mutation, ...] = (
    random_bytes,
    valid,
    wrong_value,
    wrong_value,
    plausible_value,
    other_name,
    other_name,
    missing_field,
    extra_field,
    another_type,
    swapped_codec,
    deep_nesting,
    flipped_bytes,
)
SCHEMALESS: tuple[Mutation, ...] = (random_bytes, another_type)  # anything, or some message


def payload(recipe: Recipe, kind: str, every: dict[str, Template]) -> bytes:
    template = every.get(kind)
    if template is None:
        return pick(SCHEMALESS, recipe.mutation)(recipe, Template({}), every)
    return pick(MUTATIONS, recipe.mutation)(recipe, template, every)


def draw_recipes(count: int) -> list[Recipe]:
    """`count` recipes drawn by hypothesis, the same ones on every run."""
    drawn: list[Recipe] = []

    @settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(RECIPES)
    def collect(recipe: Recipe) -> None:
        drawn.append(recipe)

    collect()
    return drawn


# Extra turns for the kinds whose consumers do the most with what they read.
WEIGHTS = {
    "selfplay_job": 12,
    "train_job": 12,
    "eval_job": 8,
    "game": 8,
    "object_meta": 8,
    "model_meta": 4,
    "node_status": 4,
    "model_event": 3,
    "result": 3,
    "progress": 2,
}


def rotation(chosen: list[Target]) -> list[Target]:
    """Every target once, then the weighted ones again, each up to its weight."""
    most = max(WEIGHTS.values())
    extra = [t for turn in range(2, most + 1) for t in chosen if WEIGHTS.get(t.kind, 1) >= turn]
    return [*chosen, *extra]


def draw_sends(chosen: list[Target], every: dict[str, Template], count: int) -> list[Send]:
    """`count` sends: the targets in turns, each with the payload of the next drawn recipe."""
    recipes = draw_recipes(count)
    turns = itertools.cycle(rotation(chosen))
    return [
        Send(target, payload(recipe, target.kind, every))
        for target, recipe in zip(turns, recipes, strict=False)
    ]


# -- the cluster -------------------------------------------------------------------------------


@dataclass
class Cluster:
    up: subprocess.Popen[bytes]
    url: str
    data: Path
    out: Path

    @property
    def auth(self) -> Path:
        return self.data / "auth"

    def seed(self, identity: str) -> Path:
        if identity.startswith("node "):
            return node_seed_path(self.auth, identity.removeprefix("node "))
        role = next(r for r in ROLES if r == identity)
        return seed_path(self.auth, role)


def start(processes: Processes, tmp_path: Path) -> Cluster:
    port = free_port()
    data, out = tmp_path / "data", tmp_path / "up.out"
    argv = [sys.executable, "-m", "shared.cli.main", "up", "--game", GAME, "--data-dir", str(data)]
    up = processes.spawn([*argv, "--nats-port", str(port), "--selfplay-workers", "1"], out)
    return Cluster(up, f"nats://127.0.0.1:{port}", data, out)


async def best_sha(admin: Bus) -> str | None:
    entry = await admin.last(names.REGISTRY_BUCKET, names.best_key(GAME))
    return decode(entry.value, BestPointer).sha256 if entry.value else None


def service_pids(up_pid: int) -> dict[str, int]:
    """Each child process of `conclave up`, by the service it runs (or `nats-server`)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == up_pid:
                argv = (stat.parent / "cmdline").read_bytes().decode().split("\0")
                found[process_name(argv)] = int(stat.parent.name)
    return found


def process_name(argv: list[str]) -> str:
    if "--process" in argv:
        process: dict[str, Any] = json.loads(argv[argv.index("--process") + 1])
        return str(process["service"])
    return Path(argv[0]).name


# -- sending -----------------------------------------------------------------------------------


async def connect_all(cluster: Cluster, who: set[str]) -> dict[str, Bus]:
    return {i: await hostile.connect(cluster.url, cluster.seed(i)) for i in sorted(who)}


async def publish(bus: Bus, subject: str, payload: bytes) -> int | None:
    """A durable publish where a stream keeps `subject` (its sequence), else a core one."""
    if stored(subject):
        return int((await bus.js.publish(subject, payload, timeout=5.0)).seq)
    await bus.nc.publish(subject, payload)
    return None


async def send_all(buses: dict[str, Bus], sends: list[Send]) -> list[str]:
    """Publish every send; returns what the server refused (nothing should be)."""
    refused = []
    for send in sends:
        try:
            await publish(buses[send.target.identity], send.target.subject, send.payload)
        except (nats.errors.Error, TimeoutError) as e:
            refused.append(f"{send.target}: {e!r}")
    for bus in buses.values():
        await bus.flush()
    return refused


@dataclass(frozen=True)
class Sentinel:
    """An unreadable message sent after the fuzz, and where its consumer dead-letters it."""

    identity: str
    subject: str
    letters: str  # DLQ subject filter
    consumer: str


SENTINELS = (
    Sentinel(
        "selfplay",
        names.games_subject(GAME),
        names.dlq_subject("records", names.ANY, "rejected"),
        "trainer",
    ),
    Sentinel(
        "trainer",
        names.model_event_subject("candidate"),
        names.dlq_subject("model", names.ANY, "candidate"),
        "syncer",
    ),
    *(
        Sentinel(
            "coordinator",
            names.job_subject(kind, GAME, f"s{k}", lane),
            names.dlq_subject(kind, names.ANY, f"s{k}"),
            f"{kind} {lane}".strip(),
        )
        for k, (kind, lane) in enumerate(
            [("selfplay", ""), ("train", ""), *(("eval", lane) for lane in names.EVAL_LANES)]
        )
    ),
)


async def send_sentinels(buses: dict[str, Bus]) -> dict[Sentinel, int]:
    sent = {}
    for sentinel in SENTINELS:
        seq = await publish(buses[sentinel.identity], sentinel.subject, SENTINEL)
        assert seq is not None, sentinel
        sent[sentinel] = seq
    return sent


async def unprocessed(admin: Bus, sent: dict[Sentinel, int]) -> list[str]:
    """The sentinels not yet dead-lettered with the field at fault."""
    left = []
    for sentinel, seq in sent.items():
        letters = await admin.read_all(names.DLQ_STREAM, sentinel.letters)
        if not any(names_the_field(m.data, seq) for m in letters):
            left.append(f"{sentinel.consumer} behind {sentinel.subject} #{seq}")
    return left


def names_the_field(letter: bytes, seq: int) -> bool:
    """Whether `letter` dead-letters message #`seq` naming a field (the DLQ holds fuzz too)."""
    try:
        dead = decode(letter, DeadLetter)
    except BadMessage:
        return False
    return dead.stream_seq == seq and "field $" in dead.reason


async def undelivered(admin: Bus) -> list[str]:
    """Durable consumers (but the job queues, which the scheduler refills) still holding fuzz."""
    left = []
    for durable in durables():
        if durable.stream != names.JOBS_STREAM:
            info = await admin.js.consumer_info(durable.stream, durable.name)
            if info.num_pending:
                left.append(f"{durable.name}: {info.num_pending} pending")
    return left


# -- what must still hold ----------------------------------------------------------------------


def restarts(cluster: Cluster, before: dict[str, int]) -> list[str]:
    """Services whose process is not the one that was running before the fuzz, and every
    supervisor restart line, with the end of the service's log."""
    now = service_pids(cluster.up.pid)
    changed = [name for name, pid in before.items() if now.get(name) != pid]
    lines = [line for line in cluster.out.read_text().splitlines() if "; restarting" in line]
    return [*(f"{name}: {log_tail(cluster, name)}" for name in changed), *lines]


def log_tail(cluster: Cluster, service: str, chars: int = 3000) -> str:
    path = cluster.data / "logs" / f"{NODE}-{service}.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@dataclass(frozen=True)
class Mark:
    """Where the loop's durable products stand once the fuzz is sent, to see what the cluster
    makes after it."""

    trainings: int  # trainings the scheduler started
    jobs: int  # the jobs stream's last sequence
    checkpoints: int  # objects in the models store
    games: int  # the games stream's last sequence
    results: int  # the results stream's last sequence


async def mark(admin: Bus) -> Mark:
    last = {
        stream: (await admin.js.stream_info(stream)).state.last_seq
        for stream in (names.JOBS_STREAM, names.GAMES_STREAM, names.RESULTS_STREAM)
    }
    record, _ = await read_termed(admin, names.LOOP_BUCKET, STATE_KEY, LoopRecord)
    return Mark(
        record.state.game(GAME).trainings if record else 0,
        last[names.JOBS_STREAM],
        len(await admin.subject_counts(MODELS_STREAM, EVERY_OBJECT_META)),
        last[names.GAMES_STREAM],
        last[names.RESULTS_STREAM],
    )


async def evaluated_since(admin: Bus, after: int) -> bool:
    """Whether an evaluator stored a result after stream sequence `after` (its results carry
    their job's message id; the fuzz's carry none)."""
    for msg in await admin.read_all(names.RESULTS_STREAM, "results.>"):
        if msg.seq > after and "Nats-Msg-Id" in msg.headers:
            return True
    return False


async def assert_the_loop_goes_on(admin: Bus, before: Mark) -> None:
    """After the fuzz the leader still holds its lease, schedules jobs and starts a training
    (once self-play has stored a generation's games), the trainer stores a checkpoint and an
    evaluator a result."""
    holder = await current_holder(admin)
    assert holder is not None and holder.node == NODE, f"lease: {holder}"

    async def moved_on() -> bool:
        now = await mark(admin)
        made = now.trainings > before.trainings and now.jobs > before.jobs
        made = made and now.checkpoints > before.checkpoints and now.games > before.games
        return made and await evaluated_since(admin, before.results)

    await eventually(moved_on, LOOP_S, 1.0, f"the loop to move on from {before}")


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("node_roles", [(), tuple(r for r in ROLES if r != "admin")])
def test_every_grant_of_every_identity_is_fuzzed(node_roles: NodeRoles) -> None:
    chosen = targets(FAKE_SHA, node_roles)
    assert not uncovered_grants(chosen, node_roles)
    assert {t.identity for t in chosen} == set(identities(node_roles))
    assert not [t for t in chosen if trusted_state(t.subject)]
    assert len(rotation(chosen)) <= EXAMPLES, "every target gets its turns"


async def test_no_service_crashes_or_wedges_on_hostile_messages_from_any_identity(
    processes: Processes, tmp_path: Path
) -> None:
    watch = Stopwatch()
    cluster = start(processes, tmp_path)
    admin = await hostile.connect(cluster.url, cluster.auth / "admin.nk")
    buses: dict[str, Bus] = {}
    try:
        best = await eventually(lambda: best_sha(admin), STARTUP_S, 0.5, "the first promotion")
        await eventually(
            lambda: len(service_pids(cluster.up.pid)) == len(SERVICES) + 1,
            STARTUP_S,
            what="every service running",
        )
        before = service_pids(cluster.up.pid)
        watch.lap("startup")
        chosen = targets(best, node_roles_of(cluster.auth))
        sends = draw_sends(chosen, templates(best), EXAMPLES)
        buses = await connect_all(cluster, {t.identity for t in chosen})
        assert not await send_all(buses, sends)
        sent = await send_sentinels(buses)
        after_fuzz = await mark(admin)
        watch.lap("fuzz")
        await eventually(lambda: not_left(admin, sent), SETTLE_S, 1.0, "consumers to get past it")
        assert not restarts(cluster, before)
        assert cluster.up.poll() is None, "conclave up exited"
        watch.lap("consumers")
        await assert_the_loop_goes_on(admin, after_fuzz)
        assert not restarts(cluster, before)
        watch.lap("loop")
        print(f"{len(sends)} sends to {len(chosen)} targets, {watch}: no crash, the loop goes on")
    finally:
        for bus in [*buses.values(), admin]:
            await bus.close()
        cluster.up.send_signal(signal.SIGTERM)
        cluster.up.wait(60)


class Stopwatch:
    def __init__(self) -> None:
        self.at = time.monotonic()
        self.laps: list[str] = []

    def lap(self, what: str) -> None:
        now = time.monotonic()
        self.laps.append(f"{what} {now - self.at:.1f}s")
        self.at = now

    def __str__(self) -> str:
        return ", ".join(self.laps)


async def not_left(admin: Bus, sent: dict[Sentinel, int]) -> bool:
    left = [*await unprocessed(admin, sent), *await undelivered(admin)]
    if left:
        print("waiting for:", "; ".join(left))
    return not left
