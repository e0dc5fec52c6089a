"""Scaling with the number of experts (Figures 4, 5, 6 and 12): at equal steps more experts give better
quality, a step speedup over the FLOP-matched dense model, and Switch 64e beats the larger dense T5-Large.
Rows: gin/tables/scaling.gin; paper: experiments/paper/scaling.csv.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
from matplotlib.figure import Figure

from switchrepro.experiments import claims as C
from switchrepro.experiments import report as R
from switchrepro.experiments import stats
from switchrepro.experiments.tabledef import Column, PlotData, TableDef
from switchrepro.plots import figures as F

NAME = "scaling"
TITLE = "Scaling with the number of experts (Figures 4, 5, 6 and 12; Table 7)"

DENSE = "T5-Base"
EXPERTS = ("Switch 2e", "Switch 4e", "Switch 8e", "Switch 16e", "Switch 32e", "Switch 64e", "Switch 128e")

CLAIMS = (
    C.larger_dense_control(NAME),
    *[C.beats(row, DENSE, claim_id=f"scaling-{row.split()[-1]}-beats-dense",
              text=f"{row} beats the FLOP-matched dense T5-Base at equal steps")
      for row in EXPERTS[:6]],
    C.monotonic((DENSE, *EXPERTS), claim_id="scaling-more-experts-better",
                text="More experts give better quality at equal steps"),
    C.speedup(DENSE, ("Switch 64e", "Switch 128e", *reversed(EXPERTS[:5])),
              claim_id="scaling-64e-step-speedup", text="Switch 64e step speedup over T5-Base > 1"),
    C.beats("Switch 64e", "T5-Large", claim_id="scaling-64e-beats-larger-dense",
            text="Switch 64e beats the larger dense T5-Large at equal steps (Figure 6 left)"),
)


def columns(summary: pd.DataFrame, curves: Optional[pd.DataFrame]) -> list[Column]:
    """Parameters, quality and our step speedup over T5-Base, beside the paper's."""
    speedups = {}
    if curves is not None and (curves["row"] == DENSE).any():
        speedups = {r: stats.step_speedup(curves, DENSE, r) for r in summary.index if r != DENSE}
    return [
        *R.params_columns(),
        *R.nlp_columns(),
        ("ours: step speedup vs T5-Base", lambda s, p: R.DASH if s is None or R.isnan(speedups.get(s.name))
         else f"{speedups[s.name]:.2f}x"),
        ("paper: step speedup vs T5-Base", lambda s, p: R.paper_cell(p, "step_speedup_vs_t5_base", 1)),
        ("ours: examples/sec", R.ours(R.ours_speed)),
    ]


def quality_vs_params(summary: pd.DataFrame, out_dir: Path, *, prefix: str = NAME,
                      scale: Optional[str] = None) -> list[Path]:
    """Figure 4 left: final NLP against parameter count (log x), one point per row, error bars = seed std."""
    if "params" not in summary:
        return []
    s = summary.dropna(subset=["params"])
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    ax.errorbar(s["params"], s["nlp_mean"], yerr=s["nlp_std"].fillna(0), fmt="o", capsize=3)
    for row, r in s.iterrows():
        ax.annotate(row, (r["params"], r["nlp_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("final held-out NLP (nats, higher is better)")
    ax.grid(alpha=0.3)
    F.title(ax, "quality vs parameters (Figure 4 left)", prefix, F.scale_of(summary, scale))
    return F.save(fig, out_dir, f"{prefix}_quality_vs_params")


def _num_experts(row: str) -> Optional[int]:
    match = re.fullmatch(r"Switch (\d+)e", row)
    return int(match.group(1)) if match else None


def largest_switch(rows: Sequence[str]) -> Optional[str]:
    """'Switch 64e' if present (the paper's Figure 6 model), else the Switch row with the most experts."""
    switch = [r for r in rows if _num_experts(r)]
    if "Switch 64e" in switch:
        return "Switch 64e"
    return max(switch, key=_num_experts, default=None)


def vs_larger_dense(curves: pd.DataFrame, out_dir: Path, *, prefix: str = NAME,
                    scale: Optional[str] = None) -> list[Path]:
    """Figure 6: the largest Switch row (64e if run) against T5-Base and T5-Large, by step and by time."""
    present = list(dict.fromkeys(curves["row"]))
    rows = [r for r in (largest_switch(present), DENSE, "T5-Large") if r in present]
    if not rows:
        return []
    fig = Figure(figsize=(11, 4.2))
    mean = stats.mean_curves(curves, rows)
    for i, x in enumerate(("step", "wall_seconds")):
        F.draw_curves(fig.add_subplot(1, 2, i + 1), mean, x)
    F.title(fig, "Switch vs the FLOP-matched and the larger dense model (Figure 6)", prefix, scale)
    return F.save(fig, out_dir, f"{prefix}_vs_larger_dense")


def plots(d: PlotData, out_dir: Path) -> list[Path]:
    """Figures 4 left and right, 5 and 6."""
    paths = quality_vs_params(d.summary, out_dir, **d.kw)
    if d.has_curves:
        mean = stats.mean_curves(d.curves)
        paths += F.quality_vs_step(mean, out_dir, **d.kw)
        paths += F.quality_vs_time(mean, out_dir, **d.kw)
        paths += vs_larger_dense(d.curves, out_dir, **d.kw)
    return paths


TABLE = TableDef(NAME, TITLE, CLAIMS, columns, plots, calibrated=True)
