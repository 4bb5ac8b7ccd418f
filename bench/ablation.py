"""The self-play settings' ablation: each setting on alone against all off, same minutes each.

    .venv/bin/python bench/ablation.py --minutes 20 --out docs/ablation-connect4-20min.json
        [--arms baseline,random_openings,...] [--work DIR]

Each arm is one `bench/loop_run.py --game connect4` run of `--minutes` (a fresh data dir, the
preset changed only by the arm's `--tune` settings), then `bench/strength.py` on its final best
(600 positions, 64 simulations, the `onestep` baseline alongside). Arms run one after another,
never side by side, and each arm's result is written to `--out` as soon as it is measured, so
a stopped series resumes with the arms still missing (`--redo` runs them again). The machine's
load average is recorded with every arm: runs on a busy machine are not comparable to runs on
an idle one. Prints the Markdown table of everything in `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Each setting of issue 13's item 2 on its own; `baseline` has them all off (the preset).
ARMS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "playout_cap": ("selfplay.full_search_fraction=0.25", "selfplay.cheap_simulations=16"),
    "progressive_sims": ("effects.selfplay_sims_start=16", "effects.sims_ramp_generations=8"),
    "resign": ("effects.resign=true",),
    "lr_cosine": ("train.lr_schedule=cosine", "train.warmup_steps=50"),
    "random_openings": (
        "selfplay.random_opening_fraction=0.25",
        "selfplay.random_opening_plies=8",
    ),
}


def run_arm(name: str, minutes: float, work: Path) -> dict[str, Any]:
    """One timed run and the strength of its final best."""
    data = work / name
    up = [arg for setting in ARMS[name] for arg in ("--tune", setting)]
    load_before = os.getloadavg()[0]
    run = _json(
        [
            sys.executable,
            str(ROOT / "bench" / "loop_run.py"),
            "--game",
            "connect4",
            "--minutes",
            str(minutes),
            "--data",
            str(data),
            "--json",
            "--",
            *up,
        ]
    )
    load_after = os.getloadavg()[0]
    strength = None
    if run.get("best_checkpoint"):
        strength = _json(
            [
                sys.executable,
                str(ROOT / "bench" / "strength.py"),
                "--checkpoint",
                run["best_checkpoint"],
                "--baselines",
                "onestep",
                "--json",
            ]
        )
    return {
        "arm": name,
        "tune": list(ARMS[name]),
        "minutes": minutes,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        "run": run,
        "strength": strength,
    }


def _json(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(command[1]).name} failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    """The ablation table: one row per arm measured."""
    lines = [
        "| arm | settings | games | promoted (rejected) | mistakes overall | quiet"
        " | <=14 / 15-28 / >28 | load |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for name in [a for a in ARMS if a in results]:
        r = results[name]
        run, agents = r["run"], (r["strength"] or {}).get("agents", {})
        mine = next((v for k, v in agents.items() if k != "onestep"), None)
        stages = " / ".join(_rate(mine, s) for s in ("<=14", "15-28", ">28"))
        settings = ", ".join(f"`{t}`" for t in r["tune"]) or "preset"
        load = " to ".join(f"{x:.1f}" for x in r["load_average_1m"])
        lines.append(
            f"| {name} | {settings} | {run.get('games', '—')}"
            f" | {run['promoted']} ({run['rejected']}) "
            f"| {_rate(mine, 'overall')} | {_rate(mine, 'quiet')} | {stages} | {load} |"
        )
    return "\n".join(lines)


def _rate(rates: dict[str, Any] | None, group: str) -> str:
    return "—" if rates is None else f"{rates[group]['rate']:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument(
        "--out", type=Path, required=True, help="results JSON (read, then added to)"
    )
    parser.add_argument("--arms", default=",".join(ARMS), help=f"of: {', '.join(ARMS)}")
    parser.add_argument("--redo", action="store_true", help="run arms already in --out again")
    parser.add_argument("--work", type=Path, help="where the runs' data dirs go (default: temp)")
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := [a for a in arms if a not in ARMS]:
        parser.error(f"--arms: unknown {', '.join(unknown)}; known: {', '.join(ARMS)}")
    results: dict[str, dict[str, Any]] = (
        json.loads(args.out.read_text()) if args.out.exists() else {}
    )
    if any(r["minutes"] != args.minutes for r in results.values()):
        parser.error(f"{args.out} holds runs of other minutes; use another --out")
    work = args.work or Path(tempfile.mkdtemp(prefix="conclave-ablation-"))
    for name in arms:
        if name in results and not args.redo:
            continue
        results[name] = run_arm(name, args.minutes, work)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
