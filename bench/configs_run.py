"""Several configurations in one cluster for a while, then how strong each one got.

    .venv/bin/python bench/configs_run.py --config examples/configs/three.toml --minutes 30 \
        --out DIR [--opponent mcts:200] [--data-dir DIR]

Runs `conclave up --config FILE` (a real cluster: NATS and every service as processes), records
`conclave status --json` once a minute (`DIR/status.jsonl`: generation, games and the
self-play allocation of every configuration), stops it after `--minutes`, and then judges the
newest promoted checkpoint of each configuration (`<data>/run/<game>/gen*.ckpt`):

- two players: perfect play, checked against the solver where the game is small enough
  (`shared.learn.solver.small`: tic-tac-toe), else skipped;
- more players: `bench/fair_share.py` against `--opponent` in every other seat (Wald's SPRT on
  games won against 1/P).

It also measures the allocation: each configuration's share of the self-play worker-seconds
added after `--share-after` minutes, beside its mean target share (`--no-judge`: only that;
`examples/configs/allocation-121.toml` has weights 1:2:1 and no learning signal).

Prints one JSON object (also written to `DIR/summary.json`).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fair_share
from shared.learn.games import get_game
from shared.learn.games.base import num_players
from shared.loop.configfile import load

ROOT = Path(__file__).resolve().parents[1]
SOLVABLE_ACTIONS = 9  # boards the exhaustive solver finishes in seconds (tic-tac-toe)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(url: str, creds: Path) -> dict[str, Any] | None:
    command = [sys.executable, "-m", "shared.cli.main", "status", "--nats", url]
    done = subprocess.run(
        [*command, "--creds", str(creds), "--json"], capture_output=True, text=True, timeout=60
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


def brief(report: dict[str, Any], started: float) -> dict[str, Any]:
    games = {
        g["game"]: {
            "generation": g["generation"],
            "games": g["games_total"],
            "best_elo": g["best_elo"],
            "selfplay": g.get("selfplay"),
            "selfplay_seconds": g.get("selfplay_seconds"),
        }
        for g in report.get("games", [])
    }
    return {"minutes": round((time.monotonic() - started) / 60, 2), "games": games}


def run_cluster(args: argparse.Namespace, data: Path, out: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "shared.cli.main", "up", "--config", str(args.config)]
    command += ["--data-dir", str(data), "--nats-port", str(port)]
    with (out / "up.log").open("w") as log:
        up = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        started = time.monotonic()
        try:
            with (out / "status.jsonl").open("w") as lines:
                while time.monotonic() - started < args.minutes * 60 and up.poll() is None:
                    time.sleep(60)
                    report = status(f"nats://127.0.0.1:{port}", data / "auth" / "admin.nk")
                    if report is not None:
                        lines.write(json.dumps(brief(report, started)) + "\n")
                        lines.flush()
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=120)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()


def chart(status_lines: Path, svg: Path) -> None:
    """Per configuration over the run: best Elo, generation, and target vs actual self-play
    share, from `status.jsonl`."""
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in status_lines.read_text().splitlines() if line.strip()]
    games = sorted({g for row in rows for g in row["games"]})
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for game in games:
        seen = [r for r in rows if game in r["games"]]
        minutes = [r["minutes"] for r in seen]
        info = [r["games"][game] for r in seen]
        elo = [i["best_elo"] if i["best_elo"] is not None else float("nan") for i in info]
        (line,) = axes[0].plot(minutes, elo, label=game)
        axes[1].plot(minutes, [i["generation"] for i in info], color=line.get_color())
        shares = [i["selfplay"] or {} for i in info]
        axes[2].plot(
            minutes,
            [s.get("target", float("nan")) for s in shares],
            color=line.get_color(),
            linestyle="--",
        )
        axes[2].plot(
            minutes, [s.get("actual") or float("nan") for s in shares], color=line.get_color()
        )
    axes[0].set_ylabel("best Elo (random = 0)")
    axes[1].set_ylabel("generation")
    axes[2].set_ylabel("self-play share\n(dashed: target)")
    axes[2].set_xlabel("minutes")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(svg)
    plt.close(fig)


def measured_shares(rows: list[dict[str, Any]], after_minutes: float) -> dict[str, Any]:
    """Each configuration's share of the self-play worker-seconds added between the first
    sample at or after `after_minutes` and the last one, beside its mean target share over the
    same samples (the allocation's own measure, `conclave status --json`)."""
    window = [r for r in rows if r["minutes"] >= after_minutes]
    if len(window) < 2:
        return {}
    first, last = window[0]["games"], window[-1]["games"]
    added = {g: worker_seconds(last, g) - worker_seconds(first, g) for g in last}
    total = sum(added.values())
    shares: dict[str, Any] = {}
    for game, seconds in added.items():
        targets = [
            r["games"][game]["selfplay"]["target"]
            for r in window
            if game in r["games"] and r["games"][game].get("selfplay")
        ]
        shares[game] = {
            "worker_seconds": round(seconds, 1),
            "actual": round(seconds / total, 4) if total > 0 else None,
            "mean_target": round(sum(targets) / len(targets), 4) if targets else None,
        }
    minutes = window[-1]["minutes"] - window[0]["minutes"]
    return {"from_minute": window[0]["minutes"], "minutes": round(minutes, 2), "configs": shares}


def worker_seconds(sample: dict[str, Any], game: str) -> float:
    return float(sample.get(game, {}).get("selfplay_seconds") or 0.0)


def newest_checkpoint(data: Path, game: str) -> Path | None:
    found = sorted((data / "run" / game).glob("gen*.ckpt"))
    return found[-1] if found else None


def judge(game_name: str, checkpoint: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    if checkpoint is None:
        return {"checkpoint": None}
    game = get_game(game_name)
    if num_players(game) == 2:
        return {"checkpoint": checkpoint.name, **perfect_play(game_name, checkpoint, args.sims)}
    argv = ["--game", game_name, "--checkpoint", str(checkpoint), "--opponent", args.opponent]
    judged = fair_share.result([*argv, "--sims", str(args.sims)])
    return {"checkpoint": checkpoint.name, **judged}


def perfect_play(game_name: str, checkpoint: Path, sims: int) -> dict[str, Any]:
    from shared.learn.search.agent import checkpoint_agent
    from shared.learn.solver.small import check_perfect_play_batched

    game = get_game(game_name)
    if game.num_actions > SOLVABLE_ACTIONS:
        return {"perfect_play": None, "why": "too big for the solver"}
    agent = checkpoint_agent(game, checkpoint, sims)
    rng = np.random.default_rng(0)
    report = check_perfect_play_batched(game, lambda states: agent.choose_all(game, states, rng))
    return {
        "perfect_play": report.perfect,
        "positions": report.positions,
        "mistakes": len(report.mistakes),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--opponent", default="mcts:200")
    parser.add_argument("--sims", type=int, default=32, help="the models' simulations per move")
    parser.add_argument("--no-judge", action="store_true", help="measure the allocation only")
    parser.add_argument(
        "--share-after", type=float, default=2.0, help="minutes before the shares are measured"
    )
    args = parser.parse_args(argv)
    configs = load(args.config)
    args.out.mkdir(parents=True, exist_ok=True)
    data = (args.data_dir or args.out / "data").absolute()
    run_cluster(args, data, args.out)
    rows = [json.loads(line) for line in (args.out / "status.jsonl").read_text().splitlines()]
    summary = {
        "config": str(args.config),
        "minutes": args.minutes,
        "allocation": measured_shares(rows, args.share_after),
        "configs": {
            g: {"checkpoint": None} if args.no_judge else judge(g, newest_checkpoint(data, g), args)
            for g in configs.presets
        },
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    chart(args.out / "status.jsonl", args.out / "run.svg")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
