"""The report skeleton: our tables beside the paper's, for the console (`format_console`) and for REPORT.md
(`write_report`). Generic: each table's columns and sections come from its TableDef (see
`switchrepro.experiments.tabledef`), built from the cell helpers here.

Our cells read "mean ± std (n=k)" over the seeds that did not diverge (see `claims.summarize`). The paper's
cells come from `experiments/paper/*.csv`, shown at the precision the paper prints. A row that we did not
run reads "not run"; a cell the paper leaves empty reads "—".
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

from switchrepro.experiments import claims as C
from switchrepro.experiments import stats
from switchrepro.experiments.paper import load_paper_table
from switchrepro.experiments.tabledef import Cell, Column, TableDef

DASH = "—"
NOT_RUN = "not run"


class TableReport(NamedTuple):
    """Everything the report shows for one table. A plain tuple in this order works too."""

    table: TableDef
    results: pd.DataFrame
    curves: Optional[pd.DataFrame]
    loads: Optional[Mapping[str, Mapping[str, Sequence[float]]]]
    verdicts: Sequence[C.Verdict]
    plots: Sequence[Path]
    # command, wall_seconds, scale, seeds, steps, tokens_per_step, epochs, threshold; optional `notes` (text
    # shown under the table) and `explanations` ({claim id: why it does not reproduce}).
    meta: Mapping[str, object]
    sections: Sequence[tuple[str, str]] = ()  # (heading, markdown) blocks under the table: TableDef.sections


# ------------------------------------------------------------------------------------------ cells


def isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def mean_std(mean: float, std: float, n: int, digits: int) -> str:
    if isnan(mean):
        return DASH
    text = f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if n >= 2 and not isnan(std) else "")


def ours_nlp(s: pd.Series) -> str:
    """'-2.7213 ± 0.0100 (n=3)', with divergences noted."""
    n, ok, k = int(s["n_seeds"]), int(s["n_ok"]), int(s["n_diverged"])
    if ok == 0:
        first = s.get("first_diverged_at", math.nan)
        at = f", first at step {first:.0f}" if not isnan(first) else ""
        return f"diverged ({k}/{n}{at})"
    extra = f", {k} diverged" if k else ""
    return f"{mean_std(s['nlp_mean'], s['nlp_std'], ok, 4)} (n={ok}{extra})"


def ours_threshold(s: pd.Series, metric: str, digits: int) -> str:
    if "n_reached" not in s:
        return DASH
    reached, n = int(s["n_reached"]), int(s["n_seeds"])
    if reached == 0:
        return "not reached"
    text = mean_std(s[f"{metric}_mean"], s[f"{metric}_std"], reached, digits)
    return text + (f" ({reached}/{n} reached)" if reached < n else "")


def ours_speed(s: pd.Series) -> str:
    if "examples_per_sec" not in s:
        return DASH
    return mean_std(s["examples_per_sec"], s.get("examples_per_sec_std", math.nan), int(s["n_seeds"]), 1)


def human(n: float) -> str:
    if isnan(n):
        return DASH
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def paper_cell(p: Optional[pd.Series], col: str, digits: int = 3) -> str:
    """A paper cell at the paper's precision; DASH where the paper gives no number."""
    if p is None or col not in p.index or pd.isna(p[col]):
        return DASH
    value = p[col]
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    return value if isinstance(value, str) else f"{value:.{digits}f}"


def ours(fn: Callable[[pd.Series], str]) -> Cell:
    return lambda s, p: NOT_RUN if s is None else fn(s)


def nlp_columns(digits: int = 3) -> list[Column]:
    """Our NLP beside the paper's, printed at `digits` as the paper prints it."""
    return [("ours: NLP", ours(ours_nlp)), ("paper: NLP", lambda s, p: paper_cell(p, "nlp", digits))]


def speed_columns() -> list[Column]:
    return [("ours: examples/sec", ours(ours_speed)),
            ("paper: examples/sec", lambda s, p: paper_cell(p, "examples_per_sec", 0))]


def params_columns() -> list[Column]:
    return [("ours: params", ours(lambda s: human(s.get("params", math.nan)))),
            ("paper: params", lambda s, p: paper_cell(p, "params_label"))]


def finetune_columns() -> list[Column]:
    """Fine-tuning tables: each row's task, its held-out NLP and its peak validation score beside the paper's."""
    task = lambda s: s.get("task", DASH) if s.get("stage") != "pretrain" else "pre-training"  # noqa: E731
    return [("ours: task", ours(task)), ("ours: held-out NLP", ours(ours_nlp)),
            ("ours: peak score", ours(ours_score)), ("paper: score", lambda s, p: paper_cell(p, "score", 1)),
            ("paper task", lambda s, p: paper_cell(p, "paper_task"))]


def kept_columns(summary: pd.DataFrame, dense: str, metric: str) -> list[Column]:
    """Distillation tables: the share of its teacher's gain over `dense` each distilled row keeps."""
    return [("ours: gain kept", lambda s, p: kept(summary, s, dense, metric)),
            ("paper: gain kept", lambda s, p: paper_percent(p, "gain_kept_percent"))]


def quality_only(summary: pd.DataFrame, curves: Optional[pd.DataFrame]) -> list[Column]:
    """The columns of a table that shows quality only."""
    return nlp_columns()


def ours_score(s: pd.Series) -> str:
    """'56.4 ± 1.2 (n=3)': the mean over seeds of each run's peak validation score; DASH for pre-training."""
    n = int(s["n_scored"]) if "n_scored" in s and not isnan(s["n_scored"]) else 0
    return DASH if n == 0 else f"{mean_std(s['score_mean'], s['score_std'], n, 1)} (n={n})"


def kept(summary: pd.DataFrame, s: Optional[pd.Series], dense: str, metric: str) -> str:
    """A distilled row's share of its teacher's gain over the table's dense baseline row `dense`."""
    if s is None or not s.get("teacher_row"):
        return DASH
    share = C.gain_kept(summary, s.name, dense, metric)
    return DASH if isnan(share) else f"{100 * share:.0f}%"


def compression(summary: pd.DataFrame, s: Optional[pd.Series]) -> str:
    """1 - student parameters / teacher parameters, for a distilled row."""
    teacher = s.get("teacher_row") if s is not None else None
    if not teacher or teacher not in summary.index or "params" not in summary:
        return DASH
    return f"{100 * (1 - float(s['params']) / float(summary.at[teacher, 'params'])):.0f}%"


def paper_percent(p: Optional[pd.Series], col: str) -> str:
    text = paper_cell(p, col, 0)
    return text if text == DASH else f"{text}%"


def _cells(table: TableDef, summary: pd.DataFrame, paper_df: Optional[pd.DataFrame],
           curves: Optional[pd.DataFrame]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the paper's rows in the paper's order, then any rows only we have."""
    paper_rows = list(paper_df.index) if paper_df is not None else []
    rows = paper_rows + [r for r in summary.index if r not in paper_rows]
    columns = table.columns(summary, curves)
    body = []
    for row in rows:
        s = summary.loc[row] if row in summary.index else None
        p = paper_df.loc[row] if paper_df is not None and row in paper_df.index else None
        body.append([row] + [cell(s, p) for _, cell in columns])
    return ["row"] + [h for h, _ in columns], body


def table_markdown(table: TableDef, summary: pd.DataFrame, paper_df: Optional[pd.DataFrame],
                   curves: Optional[pd.DataFrame] = None) -> str:
    """The table in the paper's layout with our values beside the paper's, as a markdown table.
    `summary` comes from `TableDef.summary` (threshold columns give steps/time to threshold); some tables'
    columns read `curves` too (step speedups)."""
    header, body = _cells(table, summary, paper_df, curves)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def _plain_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def format_console(table: TableDef, summary: pd.DataFrame, paper_df: Optional[pd.DataFrame],
                   verdicts: Sequence[C.Verdict], curves: Optional[pd.DataFrame] = None) -> str:
    """Plain text for the CLI: the table beside the paper's, then one line per verdict."""
    header, body = _cells(table, summary, paper_df, curves)
    out = [f"{table.name}: {table.title}", _plain_table(header, body), "", "Verdicts:"]
    for v in verdicts:
        out.append(f"  [{v.status:>14}] {v.text}")
        out.append(f"      margin {C.num(v.margin)}, spread {C.num(v.spread)}: {v.detail}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------- REPORT.md


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def _listing(values) -> str:
    values = [v for v in values if not isnan(v)]
    unique = list(dict.fromkeys(int(v) if float(v).is_integer() else v for v in values))
    return ", ".join(str(v) for v in unique) if unique else DASH


def _hosts(results: pd.DataFrame) -> list:
    """The distinct CPU and thread layouts the runs recorded, in order of appearance."""
    return list(dict.fromkeys(results["host"].dropna())) if "host" in results else []


def _meta_lines(meta: Mapping[str, object], results: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The run's facts: from `meta` where given, else from the results."""
    wall = meta.get("wall_seconds")
    if wall is None and "wall_seconds" in results:
        wall_text = f"{_duration(results['wall_seconds'].sum())} (sum over runs)"
    else:
        wall_text = _duration(float(wall)) if wall is not None else DASH
    threshold = meta.get("threshold", summary["threshold"].iloc[0] if "threshold" in summary and len(summary) else None)
    facts = [
        ("Command", f"`{meta['command']}`" if meta.get("command") else DASH),
        ("Wall time", wall_text),
        ("Scale", meta.get("scale") or (", ".join(dict.fromkeys(results["scale"].astype(str))) if "scale" in results
                                        else DASH)),
        ("Seeds", meta.get("seeds") or _listing(results["seed"])),
        ("Steps", meta.get("steps") or (_listing(results["steps"]) if "steps" in results else DASH)),
        ("Tokens per step", meta.get("tokens_per_step") or DASH),
        ("Epochs", meta.get("epochs") or (f"{results['epochs'].max():.3g} (max over runs)" if "epochs" in results
                                          else DASH)),
    ]
    if threshold is not None and not isnan(threshold):
        facts.append(("Quality threshold (NLP)", f"{float(threshold):.4f}"))
    hosts = _hosts(results)
    facts.append(("CPU and threads", "; ".join(map(str, hosts)) if hosts else
                  "not recorded (runs made before switchrepro recorded the host)"))
    known = {"command", "wall_seconds", "scale", "seeds", "steps", "tokens_per_step", "epochs", "threshold", "notes",
             "explanations", "languages", "pruning"}
    facts += [(k, v) for k, v in meta.items() if k not in known]
    return [f"- {k}: {v}" for k, v in facts]


def _verdict_table(verdicts: Sequence[C.Verdict]) -> str:
    lines = ["| Status | Claim | Margin | Spread | Detail |", "|---|---|---|---|---|"]
    lines += [f"| **{v.status}** | {v.text} | {C.num(v.margin)} | {C.num(v.spread)} | {v.detail} |"
              for v in verdicts]
    return "\n".join(lines) + "\n"


def _image_links(plots: Sequence[Path], base: Path) -> list[str]:
    """Markdown images for the PNGs, each with a link to its SVG when there is one."""
    links = []
    names = {Path(p).name for p in plots}
    for p in plots:
        p = Path(p)
        if p.suffix != ".png":
            continue
        rel = Path(os.path.relpath(p, base)).as_posix()
        svg = f" ([SVG]({rel[:-4]}.svg))" if f"{p.stem}.svg" in names else ""
        links.append(f"![{p.stem}]({rel}){svg}")
    return links


def _why(v: C.Verdict) -> str:
    """A one-line reason for a verdict that is not "reproduced"."""
    if v.status == C.REGIME_INVALID:
        return ("the table's positive control (the change that must win here: see its verdict) did not reproduce, "
                "so this regime cannot show what the compared change buys")
    if v.detail.startswith("rows missing"):
        return "the rows it needs were not run"
    if "more seeds needed" in v.detail:
        return "too few usable seeds to measure a spread"
    if v.status == C.NOT_REPRODUCED:
        return "the result goes against the paper by more than twice the seed spread"
    if "failing pairs" in v.detail:
        return "at least one consecutive pair does not improve, or the end-to-end margin is within the noise"
    return "the margin is within twice the seed spread (or the evidence is mixed)"


def _control_by_step(table: TableDef, curves: Optional[pd.DataFrame]) -> list:
    """For a table whose positive control has both rows' curves: its margin at every evaluation."""
    control = table.two_row_control()
    if control is None or curves is None or curves.empty or not set(control.rows) <= set(curves["row"]):
        return []
    by_step = C.margin_by_step(curves, *control.rows)
    if by_step.empty:
        return []
    return ["", "### Positive control by step", "",
            f"{control.rows[0]} minus {control.rows[1]}, mean over seeds at each evaluation; the verdict is the "
            "beats rule applied at that step.", "",
            by_step.to_markdown(index=False, floatfmt=".4f"), ""]


class Calibration(NamedTuple):
    """One calibration regime: a `switchrepro run TABLE --rows <its control rows> --gin ...` saved under
    results/<scale>/calibration/<name>/ (that directory is the run's --results-dir)."""

    name: str
    table: TableDef
    results: pd.DataFrame
    curves: Optional[pd.DataFrame]
    meta: Mapping[str, object]
    command_file: Optional[str] = None  # calibration/<name>/command.txt: every command that made the regime


def calibration_markdown(regimes: Sequence[Calibration]) -> list[str]:
    """The positive control of each calibration regime side by side (final verdict by the beats rule),
    then each regime's margin at every evaluation."""
    if not regimes:
        return []
    lines = ["## Calibration: the positive control per regime", "",
             "Each regime is a `switchrepro run` (or several, with the same bindings) of a table's "
             "positive-control rows; its runs' configs and metrics are under `calibration/<regime>/`. The regime "
             "for the tables is chosen on this control alone.", "",
             "| Regime | Control | Seeds | Steps | Tokens per step | Epochs | Larger | Base | Margin | 2x spread "
             "| Verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    by_step = []
    for r in regimes:
        control = r.table.two_row_control()
        if control is None:
            raise ValueError(f"calibration {r.name}: table {r.table.name} has no two-row positive control")
        summary = r.table.summary(r.results, r.curves)
        (verdict,) = r.table.evaluate(r.results, r.curves, claims=[control])
        a, b = control.rows
        cell = {row: mean_std(*summary.loc[row, ["nlp_mean", "nlp_std"]], int(summary.loc[row, "n_ok"]), 4)
                if row in summary.index else NOT_RUN for row in (a, b)}
        seeds = ", ".join(f"{int(summary.loc[row, 'n_seeds'])}" if row in summary.index else "0" for row in (a, b))
        steps = _listing(r.results["steps"]) if "steps" in r.results else DASH
        epochs = f"{r.results['epochs'].max():.3g}" if "epochs" in r.results else DASH
        lines.append(f"| {r.name} | {a} beats {b} | {seeds} | {steps} | {r.meta.get('tokens_per_step', DASH)} | "
                     f"{epochs} | {cell[a]} | {cell[b]} | {C.num(verdict.margin)} | {C.num(2 * verdict.spread)} | "
                     f"**{verdict.status}** |")
        table = C.margin_by_step(r.curves, a, b) if r.curves is not None and not r.curves.empty else pd.DataFrame()
        by_step += [f"### Calibration {r.name}", ""]
        if r.command_file:  # the full record (several invocations, notes) beats the last invocation's meta
            by_step += [f"- Commands (`calibration/{r.name}/command.txt`):", "", "```", r.command_file.strip(),
                        "```", ""]
        else:
            by_step += [f"- Command: `{r.meta['command']}`" if r.meta.get("command") else "- Command: " + DASH]
        hosts = _hosts(r.results)
        by_step += [f"- CPU and threads: {'; '.join(map(str, hosts)) if hosts else DASH}", ""]
        if not table.empty:
            by_step += [table.to_markdown(index=False, floatfmt=".4f"), ""]
    return lines + [""] + by_step


def write_report(scale: str, tables: Mapping[str, TableReport | tuple], out_path: Path,
                 preface: Optional[str] = None, calibration: Sequence[Calibration] = (),
                 verdict_rule: str = C.VERDICT_RULE) -> Path:
    """Write REPORT.md: an overall verdict summary, then each table beside the paper's (in the order of
    `tables`), with its verdicts, plots (relative links) and run facts, and finally what does not reproduce
    and why. `verdict_rule` (markdown) says how verdicts are decided; `preface` (markdown, e.g. how the runs
    were made and calibrated) goes after it, and then `calibration`."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tables = {name: TableReport(*value) for name, value in tables.items()}
    order = list(tables)

    lines = [f"# Switch Transformer reproduction: {scale} scale", "",
             "This report sets our runs of the paper's pre-training experiments beside the published numbers "
             "(Fedus, Zoph and Shazeer, *Switch Transformers*, JMLR 2022; the published numbers are in "
             "`experiments/paper/`). Columns marked \"ours\" come from this reproduction, and columns marked "
             "\"paper\" are the published numbers. NLP is held-out negative log perplexity in nats per token "
             "(higher is better).", "",
             "## Verdict summary", "",
             "| Experiment | " + " | ".join(C.STATUSES) + " |", "|---|" + "---|" * len(C.STATUSES)]
    totals = dict.fromkeys(C.STATUSES, 0)
    for name in order:
        counts = C.count_statuses(tables[name].verdicts)
        totals = {s: totals[s] + counts[s] for s in C.STATUSES}
        lines.append(f"| {name} | " + " | ".join(str(counts[s]) for s in C.STATUSES) + " |")
    lines += ["| **all** | " + " | ".join(f"**{totals[s]}**" for s in C.STATUSES) + " |", ""]
    lines += [f"- {name}: **{v.status}**: {v.text}" for name in order for v in tables[name].verdicts]
    lines += ["", "## How verdicts are decided", "", verdict_rule, ""]
    if preface:
        lines += [preface.strip(), ""]
    lines += calibration_markdown(calibration)

    for name in order:
        t = tables[name]
        summary = t.table.summary(t.results, t.curves, t.meta.get("threshold"))
        paper_df = load_paper_table(name)
        curves = stats.for_table(t.curves, name)
        lines += [f"## {name}: {t.table.title}", "", *_meta_lines(t.meta, t.results, summary), ""]
        if t.meta.get("notes"):
            lines += [str(t.meta["notes"]), ""]
        lines += [table_markdown(t.table, summary, paper_df, curves)]
        for heading, text in t.sections:
            lines += [f"### {heading}", "", text, ""]
        lines += ["### Verdicts", "", _verdict_table(t.verdicts)]
        lines += _control_by_step(t.table, curves)
        images = _image_links(t.plots, out_path.parent)
        lines += ["### Plots", "", *(f"{img}\n" for img in images)] if images else []

    lines += ["## What does not reproduce and why", ""]
    # Claims that go against the paper first, then the undecided ones.
    failed = [(name, v) for status in (C.NOT_REPRODUCED, C.INCONCLUSIVE, C.REGIME_INVALID) for name in order
              for v in tables[name].verdicts if v.status == status]
    if not failed:
        lines.append("Every claim tested here reproduces.")
    for name, v in failed:
        explained = tables[name].meta.get("explanations") or {}
        why = explained.get(v.claim_id, _why(v))
        lines.append(f"- **{name}, {v.status}**: {v.text}. {v.detail}. Why: {why}.")
    out_path.write_text("\n".join(lines).rstrip() + "\n")
    return out_path
