"""Our tables beside the paper's, for the console (`format_console`) and for REPORT.md (`write_report`).

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
from switchrepro.experiments.paper import PAPER_THRESHOLD, TABLES, TITLES, load_paper_table

DASH = "—"
NOT_RUN = "not run"


class TableReport(NamedTuple):
    """Everything the report shows for one table. A plain 6-tuple in this order works too."""

    results: pd.DataFrame
    curves: Optional[pd.DataFrame]
    loads: Optional[Mapping[str, Mapping[str, Sequence[float]]]]
    verdicts: Sequence[C.Verdict]
    plots: Sequence[Path]
    # command, wall_seconds, scale, seeds, steps, tokens_per_step, epochs, threshold; optional `notes` (text
    # shown under the table) and `explanations` ({claim id: why it does not reproduce}).
    meta: Mapping[str, object]


# ------------------------------------------------------------------------------------------ cells


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _mean_std(mean: float, std: float, n: int, digits: int) -> str:
    if _isnan(mean):
        return DASH
    text = f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if n >= 2 and not _isnan(std) else "")


def _ours_nlp(s: pd.Series) -> str:
    """'-2.7213 ± 0.0100 (n=3)', with divergences noted."""
    n, ok, k = int(s["n_seeds"]), int(s["n_ok"]), int(s["n_diverged"])
    if ok == 0:
        first = s.get("first_diverged_at", math.nan)
        at = f", first at step {first:.0f}" if not _isnan(first) else ""
        return f"diverged ({k}/{n}{at})"
    extra = f", {k} diverged" if k else ""
    return f"{_mean_std(s['nlp_mean'], s['nlp_std'], ok, 4)} (n={ok}{extra})"


def _ours_threshold(s: pd.Series, metric: str, digits: int) -> str:
    if "n_reached" not in s:
        return DASH
    reached, n = int(s["n_reached"]), int(s["n_seeds"])
    if reached == 0:
        return "not reached"
    text = _mean_std(s[f"{metric}_mean"], s[f"{metric}_std"], reached, digits)
    return text + (f" ({reached}/{n} reached)" if reached < n else "")


def _ours_speed(s: pd.Series) -> str:
    if "examples_per_sec" not in s:
        return DASH
    return _mean_std(s["examples_per_sec"], s.get("examples_per_sec_std", math.nan), int(s["n_seeds"]), 1)


def _human(n: float) -> str:
    if _isnan(n):
        return DASH
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _paper(p: Optional[pd.Series], col: str, digits: int = 3) -> str:
    """A paper cell at the paper's precision; DASH where the paper gives no number."""
    if p is None or col not in p.index or pd.isna(p[col]):
        return DASH
    value = p[col]
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    return value if isinstance(value, str) else f"{value:.{digits}f}"


def _paper_hours(s: Optional[pd.Series], p: Optional[pd.Series]) -> str:
    """Table 1's hours to the paper's threshold, or its note ("Not achieved")."""
    if p is not None and pd.isna(p["time_to_threshold_hours"]):
        return _paper(p, "time_to_threshold_note")
    return _paper(p, "time_to_threshold_hours", 1)


Cell = Callable[[Optional[pd.Series], Optional[pd.Series]], str]  # (our summary line, paper line) -> text


def _ours(fn: Callable[[pd.Series], str]) -> Cell:
    return lambda s, p: NOT_RUN if s is None else fn(s)


def _columns(table: str, summary: pd.DataFrame, speedups: Mapping[str, float]) -> list[tuple[str, Cell]]:
    """The paper's layout for `table`: (header, cell) pairs, ours beside the paper's."""
    digits = 2 if table == "table3" else 3  # as printed in the paper
    nlp = [("ours: NLP", _ours(_ours_nlp)), ("paper: NLP", lambda s, p: _paper(p, "nlp", digits))]
    speed = [("ours: examples/sec", _ours(_ours_speed)),
             ("paper: examples/sec", lambda s, p: _paper(p, "examples_per_sec", 0))]
    if table == "table1":
        thr = summary["threshold"].iloc[0] if "threshold" in summary and len(summary) else math.nan
        at = f"{thr:.4f}" if not _isnan(thr) else "threshold"
        return [
            ("capacity factor", lambda s, p: _paper(p, "capacity_factor", 2)),
            *nlp,
            (f"ours: steps to {at}", _ours(lambda s: _ours_threshold(s, "steps_to_threshold", 0))),
            (f"ours: seconds to {at}", _ours(lambda s: _ours_threshold(s, "time_to_threshold", 1))),
            (f"paper: hours to {PAPER_THRESHOLD:.2f}", _paper_hours),
            *speed,
        ]
    if table == "table2":
        return [
            *nlp,
            ("ours: diverged", _ours(lambda s: f"{int(s['n_diverged'])}/{int(s['n_seeds'])}")),
            ("paper: diverged", lambda s, p: _paper(p, "diverged")),
            *speed,
        ]
    if table == "table3":
        return [
            ("ours: mean NLP", _ours(lambda s: f"{s['nlp_mean']:.4f}" if s["n_ok"] else _ours_nlp(s))),
            ("paper: mean NLP", lambda s, p: _paper(p, "nlp", 2)),
            ("ours: std", _ours(lambda s: f"{s['nlp_std']:.4f}" if s["n_ok"] >= 2 else DASH)),
            ("paper: std", lambda s, p: _paper(p, "nlp_std", 2)),
            ("ours: seeds (diverged)", _ours(lambda s: f"{int(s['n_seeds'])} ({int(s['n_diverged'])})")),
        ]
    if table == "scaling":
        return [
            ("ours: params", _ours(lambda s: _human(s.get("params", math.nan)))),
            ("paper: params", lambda s, p: _paper(p, "params_label")),
            *nlp,
            ("ours: step speedup vs T5-Base", lambda s, p: DASH if s is None or _isnan(speedups.get(s.name))
             else f"{speedups[s.name]:.2f}x"),
            ("paper: step speedup vs T5-Base", lambda s, p: _paper(p, "step_speedup_vs_t5_base", 1)),
            ("ours: examples/sec", _ours(_ours_speed)),
        ]
    if table in ("table4", "table5", "table8"):
        score = [("ours: peak score", _ours(_ours_score)), ("paper: score", lambda s, p: _paper(p, "score", 1)),
                 ("paper task", lambda s, p: _paper(p, "paper_task"))]
        kept = [("ours: gain kept", lambda s, p: _kept(summary, s, table, "score")),
                ("paper: gain kept", lambda s, p: _paper_percent(p, "gain_kept_percent"))] if table == "table8" else []
        task = lambda s: s.get("task", DASH) if s.get("stage") != "pretrain" else "pre-training"  # noqa: E731
        return [("ours: task", _ours(task)),
                ("ours: held-out NLP", _ours(_ours_nlp)), *score, *kept]
    if table in ("table6", "table7"):
        out = [("ours: params", _ours(lambda s: _human(s.get("params", math.nan)))),
               ("paper: params", lambda s, p: _paper(p, "params_label")), *nlp,
               ("ours: gain kept", lambda s, p: _kept(summary, s, table, "nlp")),
               ("paper: gain kept", lambda s, p: _paper_percent(p, "gain_kept_percent"))]
        if table == "table7":
            out += [("ours: compression", lambda s, p: _compression(summary, s)),
                    ("paper: compression", lambda s, p: _paper_percent(p, "compression_percent"))]
        return out
    return nlp  # table11 and anything else: quality only


def _ours_score(s: pd.Series) -> str:
    """'56.4 ± 1.2 (n=3)': the mean over seeds of each run's peak validation score; DASH for pre-training."""
    n = int(s["n_scored"]) if "n_scored" in s and not _isnan(s["n_scored"]) else 0
    return DASH if n == 0 else f"{_mean_std(s['score_mean'], s['score_std'], n, 1)} (n={n})"


def _kept(summary: pd.DataFrame, s: Optional[pd.Series], table: str, metric: str) -> str:
    """A distilled row's share of its teacher's gain over the table's dense baseline row."""
    if s is None or not s.get("teacher_row"):
        return DASH
    share = C.gain_kept(summary, s.name, C.DISTILLATION_BASELINE[table], metric)
    return DASH if _isnan(share) else f"{100 * share:.0f}%"


def _compression(summary: pd.DataFrame, s: Optional[pd.Series]) -> str:
    """1 - student parameters / teacher parameters, for a distilled row."""
    teacher = s.get("teacher_row") if s is not None else None
    if not teacher or teacher not in summary.index or "params" not in summary:
        return DASH
    return f"{100 * (1 - float(s['params']) / float(summary.at[teacher, 'params'])):.0f}%"


def _paper_percent(p: Optional[pd.Series], col: str) -> str:
    text = _paper(p, col, 0)
    return text if text == DASH else f"{text}%"


def _cells(table: str, summary: pd.DataFrame, paper_df: Optional[pd.DataFrame],
           curves: Optional[pd.DataFrame]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the paper's rows in the paper's order, then any rows only we have."""
    paper_rows = list(paper_df.index) if paper_df is not None else []
    rows = paper_rows + [r for r in summary.index if r not in paper_rows]
    speedups = {}
    if table == "scaling" and curves is not None and (curves["row"] == "T5-Base").any():
        speedups = {r: C.step_speedup(curves, "T5-Base", r) for r in summary.index if r != "T5-Base"}
    columns = _columns(table, summary, speedups)
    body = []
    for row in rows:
        s = summary.loc[row] if row in summary.index else None
        p = paper_df.loc[row] if paper_df is not None and row in paper_df.index else None
        body.append([row] + [cell(s, p) for _, cell in columns])
    return ["row"] + [h for h, _ in columns], body


def table_markdown(table: str, summary: pd.DataFrame, paper_df: Optional[pd.DataFrame],
                   curves: Optional[pd.DataFrame] = None) -> str:
    """The table in the paper's layout with our values beside the paper's, as a markdown table.
    `summary` comes from `claims.table_summary` (threshold columns give table1's steps/time to threshold);
    `curves` adds our step speedups to the scaling table."""
    header, body = _cells(table, summary, paper_df, curves)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def _plain_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def format_console(table: str, summary: pd.DataFrame, paper_df: Optional[pd.DataFrame],
                   verdicts: Sequence[C.Verdict], curves: Optional[pd.DataFrame] = None) -> str:
    """Plain text for the CLI: the table beside the paper's, then one line per verdict."""
    header, body = _cells(table, summary, paper_df, curves)
    out = [f"{table}: {TITLES.get(table, table)}", _plain_table(header, body), "", "Verdicts:"]
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
    values = [v for v in values if not _isnan(v)]
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
    if threshold is not None and not _isnan(threshold):
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


def _two_row_control(table: str) -> Optional[C.Claim]:
    """The table's positive control of the form "A beats B", if it has one."""
    return next((c for c in C.control_claims(table) if len(c.rows) == 2), None)


def _control_by_step(table: str, curves: Optional[pd.DataFrame]) -> list:
    """For a table whose positive control has both rows' curves: its margin at every evaluation."""
    control = _two_row_control(table)
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
    table: str
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
        control = _two_row_control(r.table)
        if control is None:
            raise ValueError(f"calibration {r.name}: table {r.table} has no two-row positive control")
        summary = C.table_summary(r.table, r.results, r.curves)
        (verdict,) = C.evaluate_claims(r.table, r.results, r.curves, claims=[control])
        a, b = control.rows
        cell = {row: _mean_std(*summary.loc[row, ["nlp_mean", "nlp_std"]], int(summary.loc[row, "n_ok"]), 4)
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


def language_summary_markdown(languages: pd.DataFrame) -> str:
    """The multilingual table's per-language summary (Figures 7 and 8) on the mC4 languages and on all,
    beside the paper's numbers: a markdown table."""
    from switchrepro.experiments import multilingual as ML

    frame = languages[languages["row"].isin([C.ML_DENSE, C.ML_SWITCH])]
    gains = ML.paired_gains(frame, C.ML_DENSE, C.ML_SWITCH)
    speedups = ML.language_speedups(frame, C.ML_DENSE, C.ML_SWITCH)
    mc4 = ML.mc4_language_set()
    lines = ["| languages | n | improved in mean | improved (95% interval) | worse (95% interval) | mean gain (nats) | "
             "mean step speedup | never reach mT5's final NLP | share >= 4x |", "|---" * 9 + "|"]
    for label, subset in (("mC4 (ours)", sorted(set(gains["lang"]) & mc4)), ("all (ours)", None)):
        s = ML.summarize_languages(gains, speedups, subset)
        if not s["languages"]:
            lines.append(f"| {label} | 0 | " + " | ".join([DASH] * 7) + " |")
            continue
        lines.append(f"| {label} | {s['languages']} | {s['improved']} ({s['improved_fraction']:.0%}) | "
                     f"{s['improved_significantly']} | {s['worse_significantly']} | {s['mean_gain']:+.4f} | "
                     f"{C.num(s['mean_speedup'])}x | {s['never_reached']} | {s['fast_fraction']:.0%} |")
    lines.append("| paper (mC4) | 101 | 101 (100%) | - | - | - | 5x | - | 91% |")
    return "\n".join(lines) + "\n"


def pruning_markdown(pruning: pd.DataFrame) -> str:
    """Selective attention's context pruning: for each context length, the held-out NLP (seed mean) of each
    row at each attention-memory budget (keys per layer; the context itself is no pruning), then the memory
    ratio of each selective row against the unpruned standard row of the same heads and FFN."""
    mean = pruning.groupby(["context", "row", "budget"], sort=False)["nlp"].mean()
    lines = []
    for context, per_context in pruning.groupby("context"):
        budgets = sorted(per_context["budget"].unique())
        lines += [f"Context {context} (budget = keys kept per layer; {context} is no pruning):", "",
                  "| row | " + " | ".join(str(b) for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
        for row in dict.fromkeys(per_context["row"]):
            cells = [f"{mean[(context, row, b)]:.4f}" if (context, row, b) in mean.index else DASH for b in budgets]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    ratios = C.memory_ratios(pruning)
    if len(ratios):
        lines += ["Attention memory needed to reach the unpruned standard model's NLP (memory ratio = context / "
                  "budget needed, from seed means, then each selective seed against the standard seed mean; "
                  "the paper: 16x, 25x and 47x at contexts 512, 1,024 and 2,048):", "",
                  "| selective row | standard row | context | budget needed | memory ratio | per seed | "
                  "standard row as a sliding window |", "|---|---|---|---|---|---|---|"]
        for r in ratios.itertuples():
            needed = DASH if np.isnan(r.budget) else f"{r.budget:.0f}"
            ratio = "not reached" if np.isnan(r.ratio) else f"{r.ratio:.1f}x"
            seeds = ", ".join("-" if np.isnan(x) else f"{x:.1f}x" for x in r.seed_ratios)
            window = "not reached" if np.isnan(r.window_ratio) else f"{r.window_ratio:.1f}x"
            lines.append(f"| {r.selective} | {r.standard} | {r.context} | {needed} | {ratio} | {seeds} | {window} |")
        lines.append("")
    return "\n".join(lines)


def write_report(scale: str, tables: Mapping[str, TableReport | tuple], out_path: Path,
                 preface: Optional[str] = None, calibration: Sequence[Calibration] = ()) -> Path:
    """Write REPORT.md: an overall verdict summary, then each table beside the paper's, with its verdicts,
    plots (relative links) and run facts, and finally what does not reproduce and why. `preface` (markdown,
    e.g. how the runs were made and calibrated) goes after the verdict rule, and then `calibration`."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tables = {name: TableReport(*value) for name, value in tables.items()}
    order = [t for t in TABLES if t in tables] + [t for t in tables if t not in TABLES]

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
    lines += ["", "## How verdicts are decided", "", C.VERDICT_RULE, ""]
    if preface:
        lines += [preface.strip(), ""]
    lines += calibration_markdown(calibration)

    for name in order:
        t = tables[name]
        summary = C.table_summary(name, t.results, t.curves, t.meta.get("threshold"))
        paper_df = load_paper_table(name) if name in TABLES else None
        curves = t.curves[t.curves["table"] == name] if t.curves is not None and "table" in t.curves else t.curves
        lines += [f"## {name}: {TITLES.get(name, name)}", "", *_meta_lines(t.meta, t.results, summary), ""]
        if t.meta.get("notes"):
            lines += [str(t.meta["notes"]), ""]
        lines += [table_markdown(name, summary, paper_df, curves)]
        if t.meta.get("languages"):
            lines += ["### Per language", "", str(t.meta["languages"]), ""]
        if t.meta.get("pruning"):
            lines += ["### Context pruning", "", str(t.meta["pruning"]), ""]
        lines += ["### Verdicts", "", _verdict_table(t.verdicts)]
        lines += _control_by_step(name, curves)
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
