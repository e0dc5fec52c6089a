"""The statistics behind every table: per-row summaries over seeds, learning curves, thresholds, speedups.

Inputs are the runner's DataFrames:

- `results`: one row per (row, seed) run, with `final_nlp` (held-out negative log perplexity, nats/token,
  higher is better; NaN if the run diverged), `diverged_at`, `examples_per_sec`, `params`, and so on;
- `curves`: long form, one row per evaluation: `row`, `seed`, `step`, `wall_seconds`, `nlp`.

`summarize` reduces `results` to one line per row (mean and sample std over the seeds that did not
diverge); the verdict rules of `switchrepro.experiments.claims` judge that summary and the curves. Nothing
here knows a table: a table module passes its own rows (e.g. the rows that set its default threshold).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

# ----------------------------------------------------------------------------------------- summaries


def diverged(results: pd.DataFrame) -> pd.Series:
    """A run diverged if the runner recorded a step for it, or if it has no final quality."""
    flagged = results["diverged_at"].notna() if "diverged_at" in results else False
    return results["final_nlp"].isna() | flagged


def summarize(results: pd.DataFrame, curves: Optional[pd.DataFrame] = None,
              threshold: Optional[float] = None) -> pd.DataFrame:
    """One line per row (index `row`, in the order of first appearance).

    Columns:
    - `n_seeds`, `n_ok`, `n_diverged`: runs, usable runs, and diverged runs;
    - `nlp_mean`, `nlp_std`: over the seeds that did not diverge (ddof=1, NaN for one seed);
    - `examples_per_sec`, `examples_per_sec_std`: over all seeds;
    - the row's `table`, `scale`, `params`, `flops_per_example`, `num_experts`, `capacity_factor`,
      `steps`, `final_step`, `epochs`, and `first_diverged_at`;
    - `wall_seconds` and `fraction_dropped` (means);
    - for fine-tuned rows (results with `peak_score`): `n_scored`, `score_mean`, `score_std`, over the
      runs' peak validation scores.

    With `curves` and a `threshold` it adds `threshold`, `n_reached`, `steps_to_threshold_mean/std`
    and `time_to_threshold_mean/std` (seconds), each over the seeds that reached the threshold.
    Only `row`, `seed` and `final_nlp` are required; other missing columns are skipped.
    """
    df = results.assign(_diverged=diverged(results))
    df["_ok_nlp"] = df["final_nlp"].where(~df["_diverged"])
    g = df.groupby("row", sort=False)
    out = pd.DataFrame({"n_seeds": g.size()})
    out["n_diverged"] = g["_diverged"].sum().astype(int)
    out["n_ok"] = out["n_seeds"] - out["n_diverged"]
    out["nlp_mean"] = g["_ok_nlp"].mean()
    out["nlp_std"] = g["_ok_nlp"].std(ddof=1)
    if "examples_per_sec" in df:
        out["examples_per_sec"] = g["examples_per_sec"].mean()
        out["examples_per_sec_std"] = g["examples_per_sec"].std(ddof=1)
    for col in ("table", "scale", "params", "flops_per_example", "num_experts", "capacity_factor", "steps",
                "final_step", "epochs", "stage", "task", "teacher_row"):
        if col in df:
            out[col] = g[col].first()
    for col in ("wall_seconds", "fraction_dropped"):
        if col in df:
            out[col] = g[col].mean()
    if "diverged_at" in df:
        out["first_diverged_at"] = g["diverged_at"].min()
    if "peak_score" in df and df["peak_score"].notna().any():  # fine-tuning: peak validation score per run
        out["n_scored"] = g["peak_score"].count()
        out["score_mean"] = g["peak_score"].mean()
        out["score_std"] = g["peak_score"].std(ddof=1)
    if curves is not None and threshold is not None:
        out = out.join(_threshold_summary(curves, threshold))
        out["n_reached"] = out["n_reached"].fillna(0).astype(int)
        out["threshold"] = threshold
    out.index.name = "row"
    return out


def _threshold_summary(curves: pd.DataFrame, threshold: float) -> pd.DataFrame:
    steps = steps_to_threshold(curves, threshold).groupby("row", sort=False)["steps_to_threshold"]
    secs = time_to_threshold(curves, threshold).groupby("row", sort=False)["time_to_threshold"]
    return pd.DataFrame({
        "n_reached": steps.count(),
        "steps_to_threshold_mean": steps.mean(), "steps_to_threshold_std": steps.std(ddof=1),
        "time_to_threshold_mean": secs.mean(), "time_to_threshold_std": secs.std(ddof=1),
    })


def for_table(df: Optional[pd.DataFrame], table: str) -> Optional[pd.DataFrame]:
    """The lines of `df` that belong to `table` (all of them when `df` has no `table` column)."""
    if df is None or "table" not in df:
        return df
    return df[df["table"] == table]


def default_threshold(curves: Optional[pd.DataFrame], rows: Sequence[str]) -> Optional[float]:
    """The quality threshold that every run of `rows` reaches: the lowest best evaluated NLP among those
    runs (None without rows or curves). The paper's -1.50 is meaningless at a small scale."""
    if not rows or curves is None or curves.empty:
        return None
    best = curves[curves["row"].isin(rows)].groupby(["row", "seed"])["nlp"].max().dropna()
    return float(best.min()) if len(best) else None


def table_summary(table: str, results: pd.DataFrame, curves: Optional[pd.DataFrame] = None,
                  threshold: Optional[float] = None, threshold_rows: Sequence[str] = ()) -> pd.DataFrame:
    """`summarize` for one table's lines, with threshold columns at `threshold`, or else at the
    default threshold of `threshold_rows` (see default_threshold)."""
    results, curves = for_table(results, table), for_table(curves, table)
    threshold = threshold if threshold is not None else default_threshold(curves, threshold_rows)
    return summarize(results, curves, threshold)


# ------------------------------------------------------------------------------------------- curves


def first_crossing(x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """The x at which y first reaches `threshold` (y >= threshold), interpolated linearly from the
    evaluation before it; the first evaluation's x if that one already reaches it; NaN if none does.
    x, y: float arrays of shape [evaluations], in step order."""
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    hits = np.flatnonzero(y >= threshold)
    if hits.size == 0:
        return math.nan
    i = hits[0]
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (threshold - y0) * (x1 - x0) / (y1 - y0))


def _crossings(curves: pd.DataFrame, threshold: float, x: str, name: str) -> pd.DataFrame:
    records = []
    for (row, seed), run in curves.groupby(["row", "seed"], sort=False):
        run = run.sort_values("step")
        value = first_crossing(run[x].to_numpy(float), run["nlp"].to_numpy(float), threshold)
        records.append({"row": row, "seed": seed, name: value})
    return pd.DataFrame(records, columns=["row", "seed", name])


def steps_to_threshold(curves: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Columns `row`, `seed`, `steps_to_threshold`: the first step at which held-out NLP >= threshold,
    interpolated linearly between evaluations (NaN if never reached)."""
    return _crossings(curves, threshold, "step", "steps_to_threshold")


def time_to_threshold(curves: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Columns `row`, `seed`, `time_to_threshold`: as `steps_to_threshold`, in wall-clock seconds."""
    return _crossings(curves, threshold, "wall_seconds", "time_to_threshold")


def mean_curve(curves: pd.DataFrame, row: str) -> pd.DataFrame:
    """The row's curve averaged over seeds at each step: `step`, `wall_seconds`, `nlp`, `nlp_std`, `n`.
    NaN evaluations (diverged seeds) are left out of the mean."""
    g = curves[curves["row"] == row].groupby("step", sort=True)
    out = pd.DataFrame({"wall_seconds": g["wall_seconds"].mean(), "nlp": g["nlp"].mean(),
                        "nlp_std": g["nlp"].std(ddof=1), "n": g["nlp"].count()})
    return out.reset_index()


def mean_curves(curves: pd.DataFrame, rows: Optional[Sequence[str]] = None) -> dict[str, pd.DataFrame]:
    """{row: mean_curve} for `rows` that have curves (default: every row, in order of appearance): what the
    curve figures draw."""
    present = list(dict.fromkeys(curves["row"]))
    rows = present if rows is None else [r for r in rows if r in present]
    return {row: mean_curve(curves, row) for row in rows}


class Speedup(NamedTuple):
    speedup: float  # baseline_x / row_x; NaN if the row never reaches the target
    target: float  # the baseline's final mean NLP
    baseline_x: float  # steps (or seconds) the baseline needs to reach the target
    row_x: float  # the same for the row


def curve_speedup(base: pd.DataFrame, other: pd.DataFrame, x: str) -> Speedup:
    """Speedup of the curve `other` over `base` (each with columns x and `nlp`, in step order), as in the
    paper's footnote 9: the x the baseline needs to reach its own final NLP over the x `other` needs."""
    return array_speedup(base[x].to_numpy(float), base["nlp"].to_numpy(float), other[x].to_numpy(float),
                         other["nlp"].to_numpy(float))


def array_speedup(base_x: np.ndarray, base_nlp: np.ndarray, x: np.ndarray, nlp: np.ndarray) -> Speedup:
    """`curve_speedup` on arrays: float arrays of shape [evaluations] each, in step order; NaN evaluations
    are left out. For callers that compute many speedups (one per language) without a frame per curve."""
    keep_base, keep = ~np.isnan(base_nlp), ~np.isnan(nlp)
    base_x, base_nlp, x, nlp = base_x[keep_base], base_nlp[keep_base], x[keep], nlp[keep]
    if base_nlp.size == 0 or nlp.size == 0:
        return Speedup(math.nan, math.nan, math.nan, math.nan)
    target = float(base_nlp[-1])
    bx = first_crossing(base_x, base_nlp, target)
    rx = first_crossing(x, nlp, target)
    ratio = bx / rx if rx > 0 else math.nan
    return Speedup(ratio, target, bx, rx)


def step_speedup(curves: pd.DataFrame, baseline_row: str, row: str) -> float:
    """The steps the baseline needs to reach its final seed-mean NLP, divided by the steps `row` needs
    to reach that NLP (paper footnote 9). NaN if `row` never reaches it."""
    return curve_speedup(mean_curve(curves, baseline_row), mean_curve(curves, row), "step").speedup


def time_speedup(curves: pd.DataFrame, baseline_row: str, row: str) -> float:
    """As `step_speedup`, in wall-clock seconds (Figures 5 and 6 right)."""
    return curve_speedup(mean_curve(curves, baseline_row), mean_curve(curves, row), "wall_seconds").speedup


def per_seed_speedups(curves: pd.DataFrame, baseline_row: str, row: str, x: str) -> list[float]:
    """Speedups of seed s of `row` over seed s of the baseline, for the seeds both rows have."""
    base, other = curves[curves["row"] == baseline_row], curves[curves["row"] == row]
    seeds = sorted(set(base["seed"]) & set(other["seed"]))
    return [curve_speedup(base[base["seed"] == s].sort_values("step"),
                          other[other["seed"] == s].sort_values("step"), x).speedup for s in seeds]


# ------------------------------------------------------------------------------------------ distillation


def gain_retained(student: float, dense: float, teacher: float) -> float:
    """Share of the teacher's gain over the dense model that the student keeps: (student - dense) /
    (teacher - dense), on a higher-is-better metric (paper Table 7: about 0.3). NaN when the teacher is not
    ahead of the dense model."""
    gain = teacher - dense
    return (student - dense) / gain if gain > 0 else math.nan
