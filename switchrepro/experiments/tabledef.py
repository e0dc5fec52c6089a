"""What a table module gives the registry: `TableDef`, one frozen record per paper table.

A table is its rows (gin/tables/<name>.gin), its published numbers (experiments/paper/<name>.csv) and one
module, switchrepro/experiments/tables/<name>.py, that builds its TableDef: its claims, its report columns
and sections, its figures and any files it writes after collection. Everything here is generic; the
machinery (summaries, verdict rules, the report skeleton, the figure primitives) never asks which table
it is running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import pandas as pd

from switchrepro.experiments import claims as C
from switchrepro.experiments import stats
from switchrepro.plots import figures as F

Cell = Callable[[Optional[pd.Series], Optional[pd.Series]], str]  # (our summary line, paper line) -> text
Column = tuple[str, Cell]  # (header, cell)


class PlotData(NamedTuple):
    """What a table's figures are drawn from: its row summary, its curves (its own lines only), the expert
    loads ({row: {layer: [fraction of tokens per expert]}}) and its extra frames; figures are named
    `<prefix>_<figure>` and titled with `scale`."""

    summary: pd.DataFrame
    curves: Optional[pd.DataFrame]
    loads: Optional[Mapping[str, Mapping[str, Sequence[float]]]]
    languages: Optional[pd.DataFrame]
    pruning: Optional[pd.DataFrame]
    scale: Optional[str]
    prefix: str

    @property
    def has_curves(self) -> bool:
        return self.curves is not None and not self.curves.empty

    @property
    def kw(self) -> dict:
        """The keyword arguments every figure function takes."""
        return {"prefix": self.prefix, "scale": self.scale}


Figures = Callable[[PlotData, Path], list[Path]]
Sections = Callable[[Optional[pd.DataFrame], Optional[pd.DataFrame]], list[tuple[str, str]]]
Extras = Callable[[Optional[pd.DataFrame], Path, str], list[Path]]


def quality_figures(d: PlotData, out_dir: Path) -> list[Path]:
    """Quality vs step (with curves) and a bar chart of final NLP: every table's figures, after its own."""
    paths = F.quality_vs_step(stats.mean_curves(d.curves), out_dir, **d.kw) if d.has_curves else []
    return paths + F.final_quality_bars(d.summary, out_dir, **d.kw)


def no_sections(languages: Optional[pd.DataFrame], pruning: Optional[pd.DataFrame]) -> list[tuple[str, str]]:
    return []


def no_extras(languages: Optional[pd.DataFrame], out_dir: Path, name: str) -> list[Path]:
    return []


@dataclass(frozen=True)
class TableDef:
    """One paper table.

    columns(summary, curves): the report's (header, cell) pairs, ours beside the paper's;
    plots(data, out_dir): every figure, written as PNG and SVG, the written paths returned;
    figures: single figures `switchrepro plot` draws by name (e.g. "speed-quality");
    sections(languages, pruning): extra (heading, markdown) blocks shown under the table;
    extras(languages, out_dir, name): files written beside the saved table after collection;
    threshold_rows: rows whose runs set the default time-to-quality threshold;
    calibrated: calibration regimes (results/<scale>/calibration/<regime>/) may hold this table's control rows.
    """

    name: str
    title: str
    claim_set: tuple[C.Claim, ...]
    columns: Callable[[pd.DataFrame, Optional[pd.DataFrame]], list[Column]]
    plots: Figures = quality_figures
    figures: Mapping[str, Figures] = field(default_factory=dict)
    sections: Sections = no_sections
    extras: Extras = no_extras
    threshold_rows: tuple[str, ...] = ()
    calibrated: bool = False

    def claims(self) -> list[C.Claim]:
        return list(self.claim_set)

    def control_claims(self) -> list[C.Claim]:
        """The table's positive controls (claims with control=True), in claim order."""
        return C.control_claims(self.claim_set)

    def control_rows(self) -> list[str]:
        """The rows the table's positive controls need, in claim order, each once: trained first."""
        return C.control_rows(self.claim_set)

    def two_row_control(self) -> Optional[C.Claim]:
        """The table's positive control of the form "A beats B", if it has one."""
        return next((c for c in self.control_claims() if len(c.rows) == 2), None)

    def row_names_used(self) -> list[str]:
        """Every row a claim or the threshold names, each once."""
        return list(dict.fromkeys([*(r for c in self.claim_set for r in c.rows), *self.threshold_rows]))

    def check_rows(self, row_names: Sequence[str]) -> None:
        """ValueError (one line) when a claim names a row that `row_names` (the gin spec's rows) lacks."""
        known = set(row_names)
        missing = [r for r in self.row_names_used() if r not in known]
        if missing:
            raise ValueError(f"table {self.name}: its claims name rows that gin/tables/{self.name}.gin does not "
                             f"have: {', '.join(missing)}; fix the row names in the table module or the gin file")

    def summary(self, results: pd.DataFrame, curves: Optional[pd.DataFrame] = None,
                threshold: Optional[float] = None) -> pd.DataFrame:
        """stats.table_summary of this table's lines, at `threshold` or the table's default."""
        return stats.table_summary(self.name, results, curves, threshold, self.threshold_rows)

    def evaluate(self, results: pd.DataFrame, curves: Optional[pd.DataFrame] = None,
                 threshold: Optional[float] = None, languages: Optional[pd.DataFrame] = None,
                 pruning: Optional[pd.DataFrame] = None, claims: Optional[Sequence[C.Claim]] = None) -> list[C.Verdict]:
        """A verdict for each claim (the table's, or `claims`)."""
        return C.evaluate_claims(self.name, self.claim_set if claims is None else claims, results, curves,
                                 threshold, languages, pruning, self.threshold_rows)

    def plot_data(self, results: pd.DataFrame, curves: Optional[pd.DataFrame], loads=None,
                  threshold: Optional[float] = None, languages: Optional[pd.DataFrame] = None,
                  pruning: Optional[pd.DataFrame] = None) -> PlotData:
        summary = self.summary(results, curves, threshold)
        scale = str(summary["scale"].iloc[0]) if "scale" in summary and len(summary) else None
        return PlotData(summary, stats.for_table(curves, self.name), loads, languages,
                        stats.for_table(pruning, self.name), scale, self.name)

    def plot(self, results: pd.DataFrame, curves: Optional[pd.DataFrame], loads, out_dir: Path, *,
             threshold: Optional[float] = None, languages: Optional[pd.DataFrame] = None,
             pruning: Optional[pd.DataFrame] = None) -> list[Path]:
        """Every figure of the table, under `out_dir` (an Unrendered folder: named, not drawn)."""
        out_dir = out_dir if isinstance(out_dir, Path) else Path(out_dir)
        return self.plots(self.plot_data(results, curves, loads, threshold, languages, pruning), out_dir)
