"""How much memory a process holds: what pulses report and the memory guard watches."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc), None if it is gone or cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def own_rss_bytes() -> int:
    """This process's resident memory; where /proc is missing (macOS), its peak instead."""
    current = rss_bytes(os.getpid())
    if current is not None:
        return current
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
