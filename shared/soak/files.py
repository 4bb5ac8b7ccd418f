"""Writing a soak's record and report files."""

from __future__ import annotations

from pathlib import Path

import msgspec

from shared.soak.plot import svg
from shared.soak.record import SoakRecord
from shared.soak.report import SoakReport, report
from shared.soak.summary import markdown


def write_report(record: SoakRecord, out_dir: Path) -> SoakReport:
    """Write record.json, report.json, report.md and soak.svg into `out_dir`; return the report."""
    rep = report(record)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "record.json").write_bytes(msgspec.json.encode(record))
    (out_dir / "report.json").write_bytes(msgspec.json.format(msgspec.json.encode(rep)) + b"\n")
    (out_dir / "report.md").write_text(markdown(record, rep))
    (out_dir / "soak.svg").write_text(svg(record))
    return rep
