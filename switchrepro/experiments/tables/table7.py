"""Table 7: distillation compression. Students distilled from teachers with more experts still beat
T5-Base, keeping part of the teacher's gain at ever higher compression. Rows: gin/tables/table7.gin; paper:
experiments/paper/table7.csv.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import pandas as pd
from matplotlib.figure import Figure

from switchrepro.experiments import claims as C
from switchrepro.experiments import report as R
from switchrepro.experiments.paper import load_paper_table
from switchrepro.experiments.tabledef import Column, PlotData, TableDef, quality_figures
from switchrepro.plots import figures as F

NAME = "table7"
TITLE = "Table 7: distillation compression with more experts in the teacher"
DENSE = "T5-Base"  # the dense row a distilled student is compared with (the "gain kept" baseline)
EXPERTS = ("8e", "16e", "32e", "64e")


def _claims() -> tuple[C.Claim, ...]:
    out = []
    for e in EXPERTS:
        teacher = C.beats(f"Switch {e}", DENSE, claim_id=f"t7-teacher-{e}-ahead",
                          text=f"The teacher Switch {e} beats T5-Base")
        out += [teacher, C.distillation_keeps_gain(f"Distilled from {e}", DENSE, f"Switch {e}", teacher.id,
                                                   claim_id=f"t7-student-{e}-keeps-gain",
                                                   text=f"The student distilled from Switch {e} beats T5-Base")]
    return tuple(out)


def columns(summary: pd.DataFrame, curves: Optional[pd.DataFrame]) -> list[Column]:
    return [*R.params_columns(), *R.nlp_columns(), *R.kept_columns(summary, DENSE, "nlp"),
            ("ours: compression", lambda s, p: R.compression(summary, s)),
            ("paper: compression", lambda s, p: R.paper_percent(p, "compression_percent"))]


def gain_vs_compression(summary: pd.DataFrame, out_dir: Path, *, dense: str = DENSE, prefix: str = NAME,
                        scale: Optional[str] = None, paper: Optional[pd.DataFrame] = None) -> list[Path]:
    """The share of the teacher's gain each distilled student keeps against the compression 1 - student
    params / teacher params, ours (error bars: the seed std of the student's NLP, as a share of the gain)
    beside the paper's points."""
    points = []
    for row in summary.index:
        teacher = summary.at[row, "teacher_row"] if "teacher_row" in summary else None
        if not isinstance(teacher, str) or not teacher or teacher not in summary.index:
            continue
        share = C.gain_kept(summary, row, dense)
        gain = summary.at[teacher, "nlp_mean"] - summary.at[dense, "nlp_mean"]
        err = summary.at[row, "nlp_std"] / gain if gain > 0 else math.nan
        points.append((row, 100 * (1 - summary.at[row, "params"] / summary.at[teacher, "params"]), 100 * share,
                       100 * err))
    if not points:
        return []
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    ours = pd.DataFrame(points, columns=["row", "compression", "kept", "err"])
    ax.errorbar(ours["compression"], ours["kept"], yerr=ours["err"].fillna(0), fmt="o", capsize=3, label="ours")
    for _, r in ours.iterrows():
        ax.annotate(r["row"], (r["compression"], r["kept"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if paper is not None and {"compression_percent", "gain_kept_percent"} <= set(paper.columns):
        p = paper.dropna(subset=["compression_percent", "gain_kept_percent"])
        ax.plot(p["compression_percent"], p["gain_kept_percent"], "s--", color="tab:gray", label="paper")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("compression (% of the teacher's parameters removed)")
    ax.set_ylabel("teacher's gain kept by the student (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    F.title(ax, "distillation: gain kept vs compression (Table 7)", prefix, F.scale_of(summary, scale))
    return F.save(fig, out_dir, f"{prefix}_gain_vs_compression")


def plots(d: PlotData, out_dir: Path) -> list[Path]:
    """The gain kept against the compression, beside the paper's; then quality vs step and final NLP."""
    paths = gain_vs_compression(d.summary, out_dir, paper=load_paper_table(NAME), **d.kw)
    return paths + quality_figures(d, out_dir)


TABLE = TableDef(NAME, TITLE, _claims(), columns, plots)
