"""Replay simulated runs from their seeds: `python -m shared.sim --seed 79 [--count N]`."""

from __future__ import annotations

import argparse
import sys

from shared.sim.schedules import schedule
from shared.sim.services import scheduler_service
from shared.sim.world import simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.sim", description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="the first schedule's seed")
    parser.add_argument("--count", type=int, default=1, help="how many seeds from --seed")
    args = parser.parse_args(argv)
    broken = 0
    for seed in range(args.seed, args.seed + args.count):
        report = simulate(schedule(seed), (scheduler_service(),))
        print(f"seed {seed}: {report.schedule}")
        print(
            f"  terms {report.terms}, loop writes {report.loop_writes}, restarts "
            f"{report.restarts}: {report.violation or 'every invariant held'}"
        )
        broken += report.violation is not None
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
