"""The self-play settings' ablation: each setting on, side by side with all off, same minutes.

    .venv/bin/python bench/ablation.py --minutes 20 --out docs/ablation-connect4-20min.json
        [--arms random_openings,playout_cap,...] [--redo] [--work DIR]

This machine is shared and noisy, so every comparison is measured side by side: a round runs
the baseline (the Connect Four preset, every setting off) and one arm (the preset changed by
that arm's `--tune` settings) at the same time, each a `bench/loop_run.py` run of `--minutes`
pinned to a core of its own (`taskset`; the cores swap every round), then `bench/strength.py`
on each final best (600 positions, 64 simulations, `onestep` alongside), also side by side.
A busy neighbour slows both alike; each round's load average is recorded. Every round is
written to `--out` as soon as it is measured, so a stopped series resumes with the arms still
missing. Prints the Markdown table of everything in `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

BASELINE = "baseline"
# Each setting of issue 13's item 2 on its own, against the preset with all of them off.
ARMS: dict[str, tuple[str, ...]] = {
    BASELINE: (),
    "random_openings": (
        "selfplay.random_opening_fraction=0.25",
        "selfplay.random_opening_plies=8",
    ),
    "playout_cap": ("selfplay.full_search_fraction=0.25", "selfplay.cheap_simulations=16"),
    "progressive_sims": ("effects.selfplay_sims_start=16", "effects.sims_ramp_generations=8"),
    "resign": ("effects.resign=true",),
    "lr_cosine": ("train.lr_schedule=cosine", "train.warmup_steps=50"),
}


def run_round(arm: str, minutes: float, work: Path, cores: tuple[int, int]) -> dict[str, Any]:
    """The baseline and `arm` side by side, each on its own core, and their strength."""
    load = [round(os.getloadavg()[0], 2)]
    names = (BASELINE, arm)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda n, c: timed_run(n, minutes, work / arm / n, c), names, cores))
        load.append(round(os.getloadavg()[0], 2))
        strengths = list(pool.map(strength, [r.get("best_checkpoint") for r in runs], cores))
    return {
        "arm": arm,
        "tune": list(ARMS[arm]),
        "minutes": minutes,
        "cores": {BASELINE: cores[0], arm: cores[1]},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1m": load,
        "runs": dict(zip(names, runs, strict=True)),
        "strength": dict(zip(names, strengths, strict=True)),
    }


def timed_run(arm: str, minutes: float, data: Path, core: int) -> dict[str, Any]:
    data.parent.mkdir(parents=True, exist_ok=True)
    up = [arg for setting in ARMS[arm] for arg in ("--tune", setting)]
    script = ROOT / "bench" / "loop_run.py"
    argv = [str(script), "--game", "connect4", "--minutes", str(minutes), "--data", str(data)]
    return _json(core, [*argv, "--json", "--", *up])


def strength(checkpoint: str | None, core: int) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    script = ROOT / "bench" / "strength.py"
    return _json(
        core, [str(script), "--checkpoint", checkpoint, "--baselines", "onestep", "--json"]
    )


def _json(core: int, argv: list[str]) -> dict[str, Any]:
    command = ["taskset", "-c", str(core), sys.executable, *argv]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rates(strength: dict[str, Any] | None) -> dict[str, Any] | None:
    """The checkpoint's mistake rates in a strength report (the agent that is not `onestep`)."""
    agents = (strength or {}).get("agents", {})
    return next((v for k, v in agents.items() if k != "onestep"), None)


def table(results: dict[str, dict[str, Any]]) -> str:
    """One row per round: the arm against the baseline it ran beside."""
    lines = [
        "| arm | settings | games (baseline / arm) | promoted (baseline / arm)"
        " | mistakes overall (baseline / arm) | quiet (baseline / arm)"
        " | arm <=14 / 15-28 / >28 | load |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for arm in [a for a in ARMS if a in results]:
        r = results[arm]
        base, mine = r["runs"][BASELINE], r["runs"][arm]
        base_rates, arm_rates = rates(r["strength"][BASELINE]), rates(r["strength"][arm])
        stages = " / ".join(_rate(arm_rates, s) for s in ("<=14", "15-28", ">28"))
        settings = ", ".join(f"`{t}`" for t in r["tune"])
        load = " to ".join(f"{x:.1f}" for x in r["load_average_1m"])
        lines.append(
            f"| {arm} | {settings} | {base['games']} / {mine['games']}"
            f" | {base['promoted']} / {mine['promoted']}"
            f" | {_rate(base_rates, 'overall')} / {_rate(arm_rates, 'overall')}"
            f" | {_rate(base_rates, 'quiet')} / {_rate(arm_rates, 'quiet')}"
            f" | {stages} | {load} |"
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
    others = [a for a in ARMS if a != BASELINE]
    parser.add_argument("--arms", default=",".join(others), help=f"of: {', '.join(others)}")
    parser.add_argument("--redo", action="store_true", help="run arms already in --out again")
    parser.add_argument("--work", type=Path, help="where the runs' data dirs go (default: temp)")
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := [a for a in arms if a not in others]:
        parser.error(f"--arms: unknown {', '.join(unknown)}; known: {', '.join(others)}")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        parser.error("side by side needs two cores")
    results: dict[str, dict[str, Any]] = (
        json.loads(args.out.read_text()) if args.out.exists() else {}
    )
    if any(r["minutes"] != args.minutes for r in results.values()):
        parser.error(f"{args.out} holds runs of other minutes; use another --out")
    work = args.work or Path(tempfile.mkdtemp(prefix="conclave-ablation-"))
    for number, arm in enumerate(a for a in arms if args.redo or a not in results):
        pair = (cores[0], cores[1]) if number % 2 == 0 else (cores[1], cores[0])
        results[arm] = run_round(arm, args.minutes, work, pair)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{arm}: done", file=sys.stderr, flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
