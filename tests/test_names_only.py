"""schemas/names.py is the only place bus names are built (docs/architecture.md, issue 15).

Every string literal and f-string under shared/, services/ and schemas/ is checked against the
names that schemas/names.py itself makes, so the check grows with it. A literal is a bus name if:
- it has the shape of one of names.py's names: its builders' outputs on sample arguments, with
  each argument a token (an f-string's `{...}` counts as one): `{game}.best`, `eval-workers`;
- it starts with the root of such a name or a generic one (`jobs.`, `$KV.`, `KV_`, `$JS.`, ...);
- it is subject-shaped with a wildcard token (`*` or `>` between dots: `_INBOX.>`);
- it equals one of names.py's names that no ordinary word spells (`JOBS`, `dead-letters`);
- it is any literal where the code wants a bus name: a bus parameter (`bucket`, `stream`,
  `subject`, `key`, `durable`, ...) of a Bus port method called on a bus (`bus.last(...)`,
  `self.bus.write(...)`; not `sys.stderr.write`), or a variable named like one
  (`STATE_KEY`, `..._BUCKET`, `stream`, ...);
- it equals one of names.py's names (`nodes`, `leader`, `>`) given by keyword as a bus
  parameter of any other call.
Docstrings, and single tokens handed to a names.py builder (its inputs), are not names.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas import names

ROOT = Path(__file__).resolve().parents[1]
SCOPE = ("shared", "services", "schemas")
NAMES_FILE = ROOT / "schemas" / "names.py"
PORTS_FILE = ROOT / "shared" / "bus" / "ports.py"

# Literals that equal or look like a bus name but are not one: (file, literal) -> why.
NOT_BUS_NAMES: dict[tuple[str, str], str] = {
    ("schemas/jobs.py", "conclave.model.v1"): "a message type tag (`conclave.<type>.v<n>`)",
    ("services/scheduler.py", "dead-letters"): "an asyncio task name",
}

GENERIC_ROOTS = ("jobs.", "games.", "models.", "results.", "$KV.", "$O.", "$JS.", "KV_", "OBJ_")
WILDCARDS = ("*", ">")
BUS_PARAMS = {"bucket", "stream", "store", "subject", "subjects", "durable", "consumer", "key"}
BUS_VARIABLE = re.compile(r"(^|_)(bucket|stream|store|subjects?|durable|consumer)s?$|_keys?$", re.I)
HOLE = "\x00"  # an f-string's formatted value, rendered as one token
TOKEN = r"(?:[A-Za-z0-9_*>\x00][A-Za-z0-9_*>\x00-]*)?"  # as check_token, or none
PLAIN = re.compile(r"^([a-z]*|[*>])$")  # a name an ordinary word (or a lone wildcard) also spells

# Sample arguments: a placeholder token per parameter, or every value names.py allows for it.
STR_MARK, INT_MARK = "Zq{}q", 987654
CHOICES: dict[str, tuple[object, ...]] = {
    "lane": ("", None, *names.EVAL_LANES),
    "register": names.LEASE_REGISTERS,
}


@dataclass(frozen=True)
class Names:
    exact: frozenset[str]  # every name names.py spells in full
    shapes: tuple[re.Pattern[str], ...]  # its builders' outputs, arguments as tokens
    roots: tuple[str, ...]  # how those outputs begin


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    literal: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.literal!r} ({self.why})"


def _samples(fn: Callable[..., object]) -> Iterator[tuple[object, ...]]:
    params = list(inspect.signature(fn).parameters.values())
    options: list[tuple[object, ...]] = []
    for i, p in enumerate(params):
        if p.name == "kind":
            options.append((*names.JOB_KINDS, STR_MARK.format(i)))
        elif p.name in CHOICES:
            options.append(CHOICES[p.name])
        elif p.annotation in ("int", int):
            options.append((INT_MARK,))
        else:
            options.append((STR_MARK.format(i),))
    yield from itertools.product(*options)


def _outputs(fn: Callable[..., object]) -> Iterator[str]:
    for args in _samples(fn):
        try:
            out = fn(*args)
        except ValueError:  # BadName, or an argument a parser cannot split
            continue
        values = out if isinstance(out, list | tuple) else [out]
        yield from (v for v in values if isinstance(v, str))


def _builders() -> Iterator[Callable[..., object]]:
    for attr, value in vars(names).items():
        if attr.startswith("_") or not inspect.isfunction(value):
            continue
        if value.__module__ == names.__name__:
            yield value


def _constants() -> Iterator[str]:
    for attr, value in vars(names).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, str):
            yield value
        elif isinstance(value, tuple):
            yield from (v for v in value if isinstance(v, str))


def _marks() -> re.Pattern[str]:
    return re.compile(r"Zq\w*?q|" + str(INT_MARK))


def _shape(output: str) -> tuple[re.Pattern[str], str] | None:
    """The pattern of a builder's output with its arguments as tokens, and its fixed start; None
    when its fixed text says nothing (`{game}`, `{a}-{b}`)."""
    parts = _marks().split(output)
    if len(parts) == 1 or not any(re.search(r"[A-Za-z$]", p) for p in parts):
        return None
    return re.compile(TOKEN.join(re.escape(p) for p in parts)), parts[0]


def _root(start: str) -> str | None:
    """`jobs.selfplay.` -> `jobs.`; `election-` stays whole; None without a fixed start."""
    cut = re.search(r"[._]", start)
    root = start[: cut.end()] if cut else start
    return root if re.search(r"[A-Za-z$]", root) else None


def known_names() -> Names:
    exact = set(_constants())
    shapes: list[re.Pattern[str]] = []
    roots = set(GENERIC_ROOTS)
    for fn in _builders():
        for output in _outputs(fn):
            shape = _shape(output)
            if shape is None:
                if not _marks().search(output):
                    exact.add(output)
                continue
            shapes.append(shape[0])
            if root := _root(shape[1]):
                roots.add(root)
    return Names(frozenset(exact), tuple(dict.fromkeys(shapes)), tuple(sorted(roots)))


def port_params() -> dict[str, list[str]]:
    """Each Bus port method's positional parameters (without self), from shared/bus/ports.py."""
    params: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(PORTS_FILE.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            params[node.name] = [a.arg for a in node.args.args[1:]]
    return params


def _render(node: ast.Constant | ast.JoinedStr) -> str | None:
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    pieces = [v.value if isinstance(v, ast.Constant) else HOLE for v in node.values]
    return "".join(str(p) for p in pieces)


def _subject_with_wildcard(text: str) -> bool:
    """A wildcard token after a dot (`_INBOX.>`, `dlq.*.x`); not a file glob (`*.json`)."""
    return any(t in WILDCARDS for t in text.split(".")[1:])


def shaped_like_name(text: str, known: Names) -> str | None:
    """Why `text` is a bus name whatever its place in the code, or None."""
    if any(shape.fullmatch(text) for shape in known.shapes):
        return "has the shape of a names.py name"
    if root := next((r for r in known.roots if text.startswith(r)), None):
        return f"starts with {root!r}"
    if _subject_with_wildcard(text):
        return "a subject with a wildcard"
    if text in known.exact and not PLAIN.match(text):
        return "a names.py name"
    return None


class _Scan(ast.NodeVisitor):
    def __init__(self, path: str, known: Names, ports: dict[str, list[str]]) -> None:
        self.path, self.known, self.ports = path, known, ports
        self.found: list[Violation] = []
        self.skip: set[int] = set()  # ids of literals that are not names (docstrings, inputs)
        self.bus_place: set[int] = set()  # ids of literals where a bus name goes
        self.known_place: set[int] = set()  # ids of literals where one of names.py's names is one

    def flag(self, node: ast.expr, text: str, why: str) -> None:
        if (self.path, text) not in NOT_BUS_NAMES:
            self.found.append(Violation(self.path, node.lineno, text.replace(HOLE, "{}"), why))

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant):
            self.skip.add(id(node.value))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and _is_names(func.value):
            self.skip.update(id(a) for a in node.args if _single_token(a))
        elif isinstance(func, ast.Attribute) and func.attr in self.ports and _is_bus(func.value):
            params = self.ports[func.attr]
            for param, arg in zip(params, node.args, strict=False):
                if param in BUS_PARAMS:
                    self.bus_place.add(id(arg))
            self.bus_place.update(id(k.value) for k in node.keywords if k.arg in BUS_PARAMS)
        self.known_place.update(id(k.value) for k in node.keywords if k.arg in BUS_PARAMS)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(BUS_VARIABLE.search(_target_name(t)) for t in node.targets):
            self.bus_place.add(id(node.value))
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None and BUS_VARIABLE.search(_target_name(node.target)):
            self.bus_place.add(id(node.value))
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self.check(node)
        for value in node.values:  # its pieces are not literals of their own
            if isinstance(value, ast.FormattedValue):
                self.visit(value)

    def visit_Constant(self, node: ast.Constant) -> None:
        self.check(node)

    def check(self, node: ast.Constant | ast.JoinedStr) -> None:
        text = _render(node)
        if text is None or id(node) in self.skip:
            return
        if why := shaped_like_name(text, self.known):
            self.flag(node, text, why)
        elif id(node) in self.bus_place and text:
            self.flag(node, text, "a literal where a bus name goes")
        elif id(node) in self.known_place and text in self.known.exact:
            self.flag(node, text, "a names.py name where a bus name goes")


def _is_names(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "names"


def _is_bus(node: ast.expr) -> bool:
    return _target_name(node).lower().endswith("bus")


def _single_token(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and "." not in node.value


def _target_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


def scanned_files() -> list[Path]:
    files = (p for top in SCOPE for p in sorted((ROOT / top).rglob("*.py")))
    return [p for p in files if p != NAMES_FILE]


def violations(source: str, path: str, known: Names | None = None) -> list[Violation]:
    scan = _Scan(path, known or known_names(), port_params())
    scan.visit(ast.parse(source))
    return scan.found


def test_only_names_py_builds_bus_names() -> None:
    known = known_names()
    found = [
        v
        for p in scanned_files()
        for v in violations(p.read_text(), str(p.relative_to(ROOT)), known)
    ]
    assert not found, "bus names built outside schemas/names.py:\n" + "\n".join(map(str, found))


def test_every_exception_is_still_needed() -> None:
    """An exception whose literal is gone from its file would silently excuse a new one."""
    for path, literal in NOT_BUS_NAMES:
        assert repr(literal) in (ROOT / path).read_text().replace('"', "'"), (path, literal)


def test_names_are_derived_from_names_py() -> None:
    known = known_names()
    assert {names.JOBS_STREAM, names.NODES_BUCKET, names.DEAD_LETTER_CONSUMER} <= known.exact
    assert names.job_consumer("eval", "match") in known.exact
    assert {"jobs.", "$KV.", "KV_", "OBJ_", "pulse.", "election-"} <= set(known.roots)


@pytest.mark.parametrize(
    "source",
    [
        'x = "jobs.selfplay.foo"',
        'x = f"jobs.eval.{lane}."',
        'x = f"{game}.best"',
        'x = ".model." in key',
        'x = "eval-workers"',
        'x = f"dlq.{kind}.>"',
        'x = "_INBOX.>"',
        'x = "KV_nodes"',
        'x = f"$O.{store}.C.>"',
        'x = "JOBS"',
        'x = "election-2"',
        'async def f(bus): await bus.snapshot("registry")',
        'async def f(bus): await bus.read_all(stream="GAMES", subject=">")',
        'NODES_BUCKET = "nodes"',
        'STATE_KEY = "state"',
        'async def f(bus): await bus.last(names.REGISTRY_BUCKET, "sync.status")',
        'async def f(bus): await bus.write(names.LOOP_BUCKET, key=f"{game}.x", data=b"")',
        'x = decode(data, Status, subject="cluster.protocol")',
    ],
)
def test_a_planted_name_is_found(source: str) -> None:
    assert violations(source, "shared/planted.py"), source


@pytest.mark.parametrize(
    "source",
    [
        'def f():\n    "Reads `jobs.selfplay.>` from the JOBS stream."',
        'x = names.games_subject("*")',
        'x = names.dlq_subject("records", game, "rejected")',
        'ROLE_SERVICES = {"coordinator": ("leader", "scheduler")}',
        'parser.add_argument("--games", nargs="*")',
        'x = f"{key}.best_elo"',
        'x = "conclave.best.v1"',
        'x = "selfplay-2"',
        'sys.stderr.write("your move: ")',
        'x = decode(data, Status, subject="heartbeat")',
        "async def f(bus): await bus.last(names.NODES_BUCKET, node_id)",
        'stream: str = ""',
    ],
)
def test_an_ordinary_literal_is_not_a_name(source: str) -> None:
    assert not violations(source, "shared/planted.py"), source
