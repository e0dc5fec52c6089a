"""Table 1: Switch versus top-2 MoE across capacity factors, at equal FLOPs, on quality, speed and the time
to a quality threshold. The rows are gin/tables/table1.gin; the published numbers experiments/paper/table1.csv.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import pandas as pd
from matplotlib.figure import Figure

from switchrepro.experiments import claims as C
from switchrepro.experiments import report as R
from switchrepro.experiments import stats
from switchrepro.experiments.paper import PAPER_THRESHOLD
from switchrepro.experiments.tabledef import Column, PlotData, TableDef
from switchrepro.plots import figures as F

NAME = "table1"
TITLE = "Table 1: Switch versus MoE across capacity factors"

SPARSE = ("Switch-Base cf1.0", "MoE-Base cf2.0", "Switch-Base cf2.0", "MoE-Base cf1.25", "Switch-Base cf1.25",
          "MoE-Base cf1.0", "Switch-Base+ cf1.0")

CLAIMS = (
    C.larger_dense_control("t1"),
    C.beats("Switch-Base cf1.25", "T5-Base", claim_id="t1-switch-cf1.25-beats-dense",
            text="Switch-Base cf1.25 beats the FLOP-matched dense T5-Base"),
    C.beats("Switch-Base cf1.0", "T5-Base", claim_id="t1-switch-cf1.0-beats-dense",
            text="Switch-Base cf1.0 beats the FLOP-matched dense T5-Base"),
    C.beats("Switch-Base cf1.0", "MoE-Base cf1.0", claim_id="t1-switch-beats-moe-cf1.0",
            text="Switch beats top-2 MoE at capacity factor 1.0"),
    C.beats("Switch-Base cf1.25", "MoE-Base cf1.25", claim_id="t1-switch-beats-moe-cf1.25",
            text="Switch beats top-2 MoE at capacity factor 1.25"),
    C.beats("Switch-Base cf1.0", "MoE-Base cf1.0", metric="examples_per_sec", claim_id="t1-switch-faster-moe-cf1.0",
            text="Switch is faster than top-2 MoE at capacity factor 1.0"),
    C.best_of(SPARSE, "time_to_threshold", claim_id="t1-switch-cf1.0-fastest-to-threshold",
              text="Switch-Base cf1.0 reaches the quality threshold fastest among the sparse models"),
    C.beats("Switch-Base+ cf1.0", "MoE-Base cf2.0", claim_id="t1-switch-plus-beats-best-moe",
            text="Switch-Base+ (speed-matched to MoE) beats the best MoE (cf2.0)"),
)


def _paper_hours(s: Optional[pd.Series], p: Optional[pd.Series]) -> str:
    """The hours to the paper's threshold, or its note ("Not achieved")."""
    if p is not None and pd.isna(p["time_to_threshold_hours"]):
        return R.paper_cell(p, "time_to_threshold_note")
    return R.paper_cell(p, "time_to_threshold_hours", 1)


def columns(summary: pd.DataFrame, curves: Optional[pd.DataFrame]) -> list[Column]:
    thr = summary["threshold"].iloc[0] if "threshold" in summary and len(summary) else math.nan
    at = f"{thr:.4f}" if not R.isnan(thr) else "threshold"
    return [
        ("capacity factor", lambda s, p: R.paper_cell(p, "capacity_factor", 2)),
        *R.nlp_columns(),
        (f"ours: steps to {at}", R.ours(lambda s: R.ours_threshold(s, "steps_to_threshold", 0))),
        (f"ours: seconds to {at}", R.ours(lambda s: R.ours_threshold(s, "time_to_threshold", 1))),
        (f"paper: hours to {PAPER_THRESHOLD:.2f}", _paper_hours),
        *R.speed_columns(),
    ]


def speed_quality(summary: pd.DataFrame, out_dir: Path, *, prefix: str = NAME,
                  scale: Optional[str] = None) -> list[Path]:
    """The Table 1 plane: examples/sec against final NLP, with the Pareto front drawn."""
    s = summary.dropna(subset=["examples_per_sec", "nlp_mean"])
    xerr = s["examples_per_sec_std"].fillna(0) if "examples_per_sec_std" in s else None
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    ax.errorbar(s["examples_per_sec"], s["nlp_mean"], xerr=xerr, yerr=s["nlp_std"].fillna(0), fmt="o", capsize=3)
    for row, r in s.iterrows():
        ax.annotate(row, (r["examples_per_sec"], r["nlp_mean"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    front = s.loc[F.pareto_front(s)]
    ax.plot(front["examples_per_sec"], front["nlp_mean"], "--o", color="tab:red", mfc="none", ms=10,
            label="Pareto front")
    ax.set_xlabel("training speed (examples/sec, higher is better)")
    ax.set_ylabel("final held-out NLP (nats, higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    F.title(ax, "speed vs quality (Table 1)", prefix, F.scale_of(summary, scale))
    return F.save(fig, out_dir, f"{prefix}_speed_quality")


def speed_quality_figure(d: PlotData, out_dir: Path) -> list[Path]:
    return speed_quality(d.summary, out_dir, **d.kw)


def plots(d: PlotData, out_dir: Path) -> list[Path]:
    """The speed-quality plane, quality vs step and the expert-load heatmaps."""
    paths = speed_quality(d.summary, out_dir, **d.kw)
    paths += F.quality_vs_step(stats.mean_curves(d.curves), out_dir, **d.kw) if d.has_curves else []
    paths += F.expert_load_heatmaps(d.loads, out_dir, **d.kw) if d.loads else []
    return paths


TABLE = TableDef(NAME, TITLE, CLAIMS, columns, plots, figures={"speed-quality": speed_quality_figure},
                 threshold_rows=SPARSE, calibrated=True)
