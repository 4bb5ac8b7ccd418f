"""Curves of a finished `conclave up` run: Elo, gauntlet scores and solver mistake rates of every
promoted generation against the time it was promoted.

    .venv/bin/python bench/run_curves.py --data DIR --game connect4 --out docs/connect4-run

Reads the run's own JetStream store (started read-only on a free port): promotion events, the
ratings pool and gauntlet results. Mistake rates come from bench/strength.py's labelled positions
(Connect Four only). Writes `<out>.json`, `<out>.md` and `<out>.svg`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import names
from schemas.codec import decode
from schemas.control import LeaderEvent
from schemas.jobs import EvalResult, ModelEvent
from shared.bus.client import BusConfig, NatsBus
from shared.bus.ports import Bus
from shared.bus.server import NatsServer, ServerSpec
from shared.loop.ratingjobs import game_ratings


async def read_run(url: str, game: str) -> dict[str, Any]:
    bus = await NatsBus.connect(BusConfig(servers=[url], name="curves"))
    try:
        elected = await bus.read_all(names.EVENTS_STREAM, names.leader_event_subject("elected"))
        start = min(decode(m.data, LeaderEvent).at for m in elected)
        promoted = [
            decode(m.data, ModelEvent)
            for m in await bus.read_all(names.EVENTS_STREAM, names.model_event_subject("promoted"))
        ]
        ratings, _ = await game_ratings(bus, game)
        gauntlets = {
            e.generation: await gauntlet(bus, game, e.generation)
            for e in promoted
            if e.game == game
        }
    finally:
        await bus.close()
    rows = []
    for event in sorted((e for e in promoted if e.game == game), key=lambda e: e.generation):
        rating = ratings.get(f"gen{event.generation}")
        rows.append(
            {
                "generation": event.generation,
                "sha256": event.sha256,
                "minutes": round((event.at - start) / 60, 1),
                "elo": round(rating.elo, 1) if rating else None,
                "elo_ci": round((rating.hi - rating.lo) / 2, 1) if rating else None,
                "gauntlet": gauntlets.get(event.generation, {}),
            }
        )
    baselines = {
        name: {"elo": round(r.elo, 1), "ci": round((r.hi - r.lo) / 2, 1)}
        for name, r in ratings.items()
        if not name.startswith("gen")
    }
    return {"game": game, "generations": rows, "baselines": baselines}


async def gauntlet(bus: Bus, game: str, generation: int) -> dict[str, dict[str, float]]:
    """Score (wins + draws/2 over games) of a generation against each baseline it met, summed
    over the gauntlet's jobs (it is played in chunks and may stop early)."""
    tally: dict[str, list[int]] = {}
    for msg in await bus.read_all(names.RESULTS_STREAM, names.results_subject(game, names.ANY)):
        r = decode(msg.data, EvalResult)
        if r.kind == "gauntlet" and r.a.name == f"gen{generation}":
            wins, draws, losses = tally.setdefault(r.b.name, [0, 0, 0])
            tally[r.b.name] = [wins + r.wins_a, draws + r.draws, losses + r.wins_b]
    out: dict[str, dict[str, float]] = {}
    for name, (wins, draws, losses) in tally.items():
        games = wins + draws + losses
        out[name] = {
            "games": games,
            "score": round((wins + draws / 2) / games, 3) if games else 0.0,
            "wins": wins,
            "draws": draws,
            "losses": losses,
        }
    return out


def add_mistake_rates(run: dict[str, Any], data: Path, positions: int, sims: int) -> None:
    from bench.strength import cached_positions, report
    from shared.learn.baselines import make_agent
    from shared.learn.games.connect4 import GAME
    from shared.learn.search.agent import checkpoint_agent

    labelled, _ = cached_positions(0, positions, Path.home() / ".cache" / "conclave")
    base = report(labelled, [make_agent("onestep"), make_agent("mcts:200")], 0)
    run["baseline_mistakes"] = base["agents"]
    run["positions"] = len(labelled)
    for row in run["generations"]:
        found = sorted((data / "run" / run["game"]).glob(f"gen{row['generation']:03d}-*.ckpt"))
        if not found:
            continue
        agent = checkpoint_agent(GAME, found[-1], sims)
        row["mistakes"] = next(iter(report(labelled, [agent], 0)["agents"].values()))


def svg(run: dict[str, Any]) -> str:
    """Two small line charts (Elo; overall mistake rate) against minutes, no dependencies."""
    rows = run["generations"]
    width, height, pad = 640, 220, 40
    t_max = max([r["minutes"] for r in rows] + [1.0])

    def chart(values: list[tuple[float, float]], y0: int, label: str, lo: float, hi: float) -> str:
        span = (hi - lo) or 1.0
        pts = " ".join(
            f"{pad + (t / t_max) * (width - 2 * pad):.1f},"
            f"{y0 + height - pad - (v - lo) / span * (height - 2 * pad):.1f}"
            for t, v in values
        )
        return (
            f'<text x="{pad}" y="{y0 + 20}" font-size="14">{label} ({lo:.2f} to {hi:.2f})</text>'
            f'<polyline fill="none" stroke="black" stroke-width="2" points="{pts}"/>'
            f'<line x1="{pad}" y1="{y0 + height - pad}" x2="{width - pad}" '
            f'y2="{y0 + height - pad}" stroke="gray"/>'
            f'<text x="{width - pad}" y="{y0 + height - 10}" font-size="12" '
            f'text-anchor="end">minutes (0 to {t_max:.0f})</text>'
        )

    elo = [(r["minutes"], r["elo"]) for r in rows if r["elo"] is not None]
    miss = [(r["minutes"], r["mistakes"]["overall"]["rate"]) for r in rows if "mistakes" in r]
    parts = []
    if elo:
        parts.append(
            chart(
                elo,
                0,
                "Elo of each promoted generation",
                min(v for _, v in elo),
                max(v for _, v in elo),
            )
        )
    if miss:
        parts.append(
            chart(
                miss,
                height,
                "solver mistake rate",
                min(v for _, v in miss),
                max(v for _, v in miss),
            )
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * height}">'
        + "".join(parts)
        + "</svg>\n"
    )


def markdown(run: dict[str, Any]) -> str:
    lines = [
        f"# {run['game']} run: promoted generations",
        "",
        "| gen | minutes | Elo ± 95% | vs onestep | vs mcts:200 | mistakes: all, ≤14, 15-28, >28 |",
        "|---:|---:|---|---|---|---|",
    ]
    for r in run["generations"]:
        g = r["gauntlet"]
        m = r.get("mistakes")
        rates = (
            " / ".join(str(m[s]["rate"]) for s in ("overall", "<=14", "15-28", ">28")) if m else "-"
        )
        lines.append(
            f"| {r['generation']} | {r['minutes']} | {r['elo']} ± {r['elo_ci']} | "
            f"{g.get('onestep', {}).get('score', '-')} | {g.get('mcts:200', {}).get('score', '-')} "
            f"| {rates} |"
        )
    for name, stages in run.get("baseline_mistakes", {}).items():
        rates = " / ".join(str(stages[s]["rate"]) for s in ("overall", "<=14", "15-28", ">28"))
        lines.append(f"\nBaseline `{name}` mistakes (all / <=14 / 15-28 / >28): {rates}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the run's --data-dir")
    parser.add_argument("--game", default="connect4")
    parser.add_argument("--positions", type=int, default=600)
    parser.add_argument("--sims", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True, help="path prefix for .json/.md/.svg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # A copy of the store, so reading never changes the run's own files.
        store = Path(tmp) / "nats"
        import shutil

        shutil.copytree(args.data / "nats" / "jetstream", store / "jetstream")
        server = NatsServer(ServerSpec("curves", store)).start()
        try:
            run = asyncio.run(read_run(server.url, args.game))
        finally:
            server.stop()
    if args.game == "connect4":
        add_mistake_rates(run, args.data, args.positions, args.sims)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(run, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(run))
    args.out.with_suffix(".svg").write_text(svg(run))
    print(json.dumps({"generations": len(run["generations"]), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
