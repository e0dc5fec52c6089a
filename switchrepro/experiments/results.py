"""A table's results as a library: load what `run` saved, judge it, print it, plot it, and write REPORT.md.

This is the seam the CLI and the notebook API code against: `switchrepro run` collects and then calls
`evaluate`, `write_extras` and `console_text`; `switchrepro plot` calls `plot`; `switchrepro report` calls
`write_report`. Everything table-specific comes from the registry (switchrepro.experiments.tables); REPORT.md is
generated from the saved results, the notes under results/<scale>/notes/ and the calibration regimes alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional

import pandas as pd

from switchrepro.experiments import report as R
from switchrepro.experiments import store, tables
from switchrepro.experiments.paper import load_paper_table
from switchrepro.plots import figures as F

if TYPE_CHECKING:
    from switchrepro.config.tables import TableSpec


class ResultsError(ValueError):
    """Results that cannot be loaded or judged; the message is one line that says what to do."""


@dataclass(frozen=True, eq=False)
class LoadedTable:
    """One table's saved results and what follows from them (see `evaluate`)."""

    name: str
    scale: str
    results: pd.DataFrame  # one line per (row, seed) run
    curves: Optional[pd.DataFrame]  # one line per evaluation
    loads: Optional[Mapping]  # {row: {layer: [fraction of tokens per expert]}}
    meta: Mapping[str, object]  # what `run` recorded (command, seeds, train_seconds_total, ...)
    languages: Optional[pd.DataFrame]  # per-language evaluations (tables that have them)
    pruning: Optional[pd.DataFrame]  # quality per context and attention-memory budget (tables that have it)
    threshold: Optional[float]  # the table's time-to-quality threshold at this scale (None: its default)
    summary: pd.DataFrame  # one line per row: stats.summarize
    verdicts: list  # list[claims.Verdict], one per claim


def evaluate(spec: TableSpec, scale: str, results: pd.DataFrame, curves: Optional[pd.DataFrame],
             loads=None, meta=None, languages: Optional[pd.DataFrame] = None,
             pruning: Optional[pd.DataFrame] = None) -> LoadedTable:
    """The table's summary and verdicts from collected frames. ResultsError when a claim of the table names
    a row that its gin spec lacks."""
    table = _table(spec.name)
    try:
        table.check_rows([r.name for r in spec.rows])
    except ValueError as e:
        raise ResultsError(str(e)) from None
    threshold = (spec.threshold or {}).get(scale)
    if results.empty:
        summary, verdicts = pd.DataFrame(), []
    else:
        summary = table.summary(results, curves, threshold)
        verdicts = table.evaluate(results, curves, threshold, languages, pruning)
    return LoadedTable(spec.name, scale, results, curves, loads, dict(meta or {}), languages, pruning, threshold,
                       summary, verdicts)


def load_table(spec: TableSpec, scale: str, results_dir: Path) -> LoadedTable:
    """What `run` saved for the table under results_dir/scale, judged (see `evaluate`)."""
    results_dir = Path(results_dir)
    try:
        saved = store.load_saved(results_dir, scale, spec.name)
        if saved is None:
            raise ResultsError(f"no results for {spec.name} at scale {scale} in {results_dir}: run "
                               f"`switchrepro run {spec.name} --scale {scale}` first")
        languages = store.load_languages(results_dir, scale, spec.name)
        pruning = store.load_pruning(results_dir, scale, spec.name)
    except store.ResultsError as e:
        raise ResultsError(str(e)) from None
    results, curves, loads, meta = saved
    return evaluate(spec, scale, results, curves, loads, meta, languages, pruning)


def console_text(t: LoadedTable) -> str:
    """What `run` prints after collecting: the table beside the paper's, one line per verdict, then the
    table's sections (e.g. per language); "" when nothing has finished."""
    if t.results.empty:
        return ""
    table = _table(t.name)
    out = R.format_console(table, t.summary, load_paper_table(t.name), t.verdicts, curves=t.curves) + "\n"
    return out + "".join(text + "\n" for _, text in table.sections(t.languages, t.pruning))


def write_extras(t: LoadedTable, results_dir: Path) -> list[Path]:
    """The table-specific files written beside the saved table after collection (e.g. the per-language CSV)."""
    return _table(t.name).extras(t.languages, Path(results_dir) / t.scale, t.name)


def plot(what: str, spec: TableSpec, scale: str, results_dir: Path) -> list[Path]:
    """`switchrepro plot WHAT`: every figure of a table, or one named figure (tables.PLOT_ALIASES), as PNG and
    SVG under results_dir/scale/plots/. `spec` is the table's (tables.plot_target(what))."""
    table = _table(spec.name)
    t = load_table(spec, scale, results_dir)
    out_dir = Path(results_dir) / scale / "plots"
    data = table.plot_data(t.results, t.curves, t.loads, t.threshold, t.languages, t.pruning)
    if what in tables.PLOT_ALIASES:
        return table.figures[tables.PLOT_ALIASES[what][1]](data._replace(scale=scale), out_dir)
    return table.plots(data, out_dir)


def write_report(scale: str, results_dir: Path, specs: Mapping[str, TableSpec],
                 render: bool = True) -> tuple[Path, list[str]]:
    """`switchrepro report`: results_dir/scale/REPORT.md, with every table of `specs` that has results (in the
    paper's order), its verdicts and plots (drawn under results_dir/scale/plots/ unless `render` is False;
    linked either way). Returns the path and the tables written; ResultsError when no table has results.

    Hand-written context is read from results/<scale>/notes/ when present: `_preface.md` (how the runs were
    made), `<table>.md` (shown under the table) and `<table>.json` ({claim id: why it does not reproduce}).
    Calibration regimes, results/<scale>/calibration/<regime>/ (each the --results-dir of a `run` of a table's
    control rows), get a section of their own."""
    root = Path(results_dir) / scale
    reports = {}
    for name in [n for n in tables.REPORT_ORDER if n in specs] + [n for n in specs if n not in tables.REPORT_ORDER]:
        try:
            t = load_table(specs[name], scale, results_dir)
        except ResultsError:
            if not (root / f"{name}.csv").exists():
                continue  # not run at this scale
            raise
        table = _table(name)
        plots = _plots(table, t, root / "plots", render)
        meta = {**t.meta, "threshold": t.threshold, "wall_seconds": t.meta.get("train_seconds_total")}
        notes = root / "notes"
        if (notes / f"{name}.md").exists():
            meta["notes"] = (notes / f"{name}.md").read_text()
        if (notes / f"{name}.json").exists():
            try:
                meta["explanations"] = json.loads((notes / f"{name}.json").read_text())
            except ValueError as e:
                raise ResultsError(f"{notes / f'{name}.json'} is not valid JSON ({e}); fix or remove it") from None
        reports[name] = R.TableReport(table, t.results, t.curves, t.loads, t.verdicts, plots, meta,
                                      table.sections(t.languages, t.pruning))
    if not reports:
        raise ResultsError(f"no results at scale {scale} in {results_dir}: run `switchrepro run TABLE --scale {scale}`")
    preface = root / "notes" / "_preface.md"
    path = R.write_report(scale, reports, root / "REPORT.md", preface=preface.read_text() if preface.exists() else None,
                          calibration=_calibration(root / "calibration", scale), verdict_rule=tables.VERDICT_RULE)
    return path, list(reports)


def _table(name: str):
    try:
        return tables.get(name)
    except ValueError as e:
        raise ResultsError(str(e)) from None


def _plots(table, t: LoadedTable, out_dir: Path, render: bool) -> list[Path]:
    """The table's figures under `out_dir`; without `render`, only the paths a render would write."""
    out_dir = Path(out_dir) if render else F.Unrendered(out_dir)
    return table.plot(t.results, t.curves, t.loads, out_dir, threshold=t.threshold, languages=t.languages,
                      pruning=t.pruning)


def _calibration(regimes: Path, scale: str) -> list[R.Calibration]:
    """Each regime's saved control run, for the tables a regime may hold (tables.calibrated())."""
    out = []
    for regime in sorted(p for p in regimes.iterdir() if p.is_dir()) if regimes.is_dir() else []:
        for table in tables.calibrated():
            try:
                saved = store.load_saved(regime, scale, table.name)
            except store.ResultsError as e:
                raise ResultsError(str(e)) from None
            if saved is not None:
                commands = regime / "command.txt"
                out.append(R.Calibration(regime.name, table, saved[0], saved[1], saved[3],
                                         commands.read_text() if commands.is_file() else None))
    return out
