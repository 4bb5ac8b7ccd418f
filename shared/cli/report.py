"""`conclave report --game G --out DIR`: a run's charts as PNG files and a short markdown summary.

The same data as the dashboard (`shared.cli.dashboard.snapshot`), read from the bus: Elo of every
generation with its 95% interval against the baselines, training losses, and every promotion
decision with its SPRT trace. Charts are drawn with matplotlib's Figure (no pyplot, no display).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from matplotlib.figure import Figure

from shared.bus.client import BusConfig, NatsBus
from shared.cli.dashboard import GameHistory, Snapshot, snapshot


class NoSuchGame(ValueError):
    pass


def elo_chart(history: GameHistory, game: str, path: Path) -> None:
    gens = [p for p in history.elo if p.generation is not None]
    baselines = [p for p in history.elo if p.generation is None]
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.subplots()
    if gens:
        xs = [p.generation or 0 for p in gens]
        ys = [p.elo for p in gens]
        errors = [[p.elo - p.lo for p in gens], [p.hi - p.elo for p in gens]]
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label="best models")
    for p in baselines:
        ax.axhline(p.elo, linestyle="--", color="grey", linewidth=0.8)
        ax.annotate(f"{p.name} {p.elo:+.0f}", (0, p.elo), textcoords="offset points", xytext=(4, 3))
    ax.set(title=f"{game}: Elo by generation (95% intervals; random = 0)", xlabel="generation")
    ax.set_ylabel("Elo")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def loss_chart(history: GameHistory, game: str, path: Path) -> None:
    points = [p for p in history.losses if p.policy is not None]
    fig = Figure(figsize=(8, 3.5), dpi=100)
    ax = fig.subplots()
    xs = list(range(len(points)))
    ax.plot(xs, [p.policy or 0.0 for p in points], label="policy loss", color="#c0392b")
    ax.plot(xs, [p.value or 0.0 for p in points], label="value loss", color="#27ae60")
    ax.set(title=f"{game}: training losses by checkpoint", xlabel="checkpoint", ylabel="loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def summary(snap: Snapshot, game: str) -> str:
    history = snap.games[game]
    status = next((g for g in snap.status["games"] if g["game"] == game), None)
    lines = [
        f"# {game}: run report ({time.strftime('%Y-%m-%d %H:%M', time.localtime(snap.at))})",
        "",
    ]
    if status:
        lines += [
            f"- best: generation {status['generation']} ({status['best_sha256'][:12]}), Elo "
            f"{status['best_elo'] if status['best_elo'] is not None else '-'}",
            f"- games: {status['games_total']} ({status['games_per_hour']:.0f}/h)",
        ]
    promoted = sum(d.kind == "promoted" for d in history.decisions)
    lines += [f"- decisions: {promoted} promoted, {len(history.decisions) - promoted} rejected", ""]
    lines += ["![Elo](elo.png)", "", "![losses](losses.png)", "", "| gen | decision | SPRT |"]
    lines += ["|---:|---|---|"]
    lines += [f"| {d.generation} | {d.kind} | {d.detail} |" for d in history.decisions]
    return "\n".join(lines) + "\n"


def write(snap: Snapshot, game: str, out: Path) -> list[Path]:
    if game not in snap.games:
        raise NoSuchGame(
            f"no game {game!r} in this cluster; it has {', '.join(snap.games) or 'none'}"
        )
    out.mkdir(parents=True, exist_ok=True)
    history = snap.games[game]
    elo_chart(history, game, out / "elo.png")
    loss_chart(history, game, out / "losses.png")
    (out / "report.md").write_text(summary(snap, game))
    return [out / "elo.png", out / "losses.png", out / "report.md"]


async def report_main(cfg: BusConfig, game: str, out: Path) -> int:
    bus = await NatsBus.connect(cfg)
    try:
        snap = await snapshot(bus)
    finally:
        await bus.close()
    try:
        written = await asyncio.to_thread(write, snap, game, out)
    except NoSuchGame as e:
        print(f"conclave report: {e}")
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0
