"""metrics.jsonl: one JSON object per line, appended as training goes.

A process killed while writing can leave half a line at the end of the file. That torn last line stands
for a step that a resumed run replays, so readers skip it and a resuming run rewrites the file without
it. A line that is not JSON anywhere else is real damage: `MetricsError`, one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from switchrepro.config import DamagedFileError


class MetricsError(DamagedFileError):
    """A metrics.jsonl is damaged beyond a torn last line."""


def _parse(path: Path) -> tuple[List[Dict[str, Any]], List[str], bool]:
    """(rows, their raw lines, whether a torn last line was dropped)."""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    rows, kept = [], []
    for i, ln in enumerate(lines, 1):
        try:
            row = json.loads(ln)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if i == len(lines):
                return rows, kept, True
            raise MetricsError(f"{path} is damaged: line {i} of {len(lines)} is not a JSON object; "
                               "restore it from a copy, or delete the run directory to retrain it") from None
        rows.append(row)
        kept.append(ln)
    return rows, kept, False


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The rows of a metrics.jsonl, without a torn last line."""
    return _parse(Path(path))[0]


class MetricsLog:
    """Append-only JSONL, cut back to `step <= resume_step` when a run resumes (so rows are never doubled),
    which also drops a torn last line."""

    def __init__(self, path: Path, resume_step: int):
        self.path = Path(path)
        self.dropped_torn_line = False
        if self.path.exists():
            rows, lines, self.dropped_torn_line = _parse(self.path)
            kept = [ln for row, ln in zip(rows, lines, strict=True) if row.get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, row: Dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def rows(self) -> List[Dict[str, Any]]:
        return read_metrics(self.path)
