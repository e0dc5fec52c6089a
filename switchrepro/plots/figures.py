"""The reproduction's figure primitives and its generic figures, drawn from summaries and curves.

Every figure function writes a PNG and an SVG to `out_dir` (named `<prefix>_<figure>.png/.svg`) and returns
the written paths. Titles give the scale and say that the values are ours, not the paper's. Only
`matplotlib.figure.Figure` is used, never pyplot: the figures render with Agg, and the caller's global
backend is left alone. A table's own figures live in its module (switchrepro/experiments/tables/) and use
`title`, `save` and `draw_curves` from here; this module knows no table and computes no statistics (curve
figures take the seed-mean curves, `switchrepro.experiments.stats.mean_curves`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

Loads = Mapping[str, Mapping[str, Sequence[float]]]  # {row: {layer name: [fraction of tokens per expert]}}
MeanCurves = Mapping[str, pd.DataFrame]  # {row: its seed-mean curve: step, wall_seconds, nlp, nlp_std, n}


# ------------------------------------------------------------------------------------------- helpers


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def title(ax_or_fig, what: str, prefix: str, scale: Optional[str]) -> None:
    text = f"{prefix}: {what}\nours at {scale or 'unknown'} scale, not the paper's numbers"
    (ax_or_fig.suptitle if isinstance(ax_or_fig, Figure) else ax_or_fig.set_title)(text, fontsize=10)


class Unrendered(type(Path())):
    """An output folder whose figures are named but not drawn: `save` returns the paths it would write and
    writes nothing (REPORT.md links its plots without rendering them, e.g. in the test that regenerates it)."""


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """`out_dir`/`name`.png and .svg, written (unless `out_dir` is Unrendered) and returned."""
    if isinstance(out_dir, Unrendered):
        return [Path(out_dir, f"{name}.png"), Path(out_dir, f"{name}.svg")]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    # A fixed hash salt and no date, so that a redrawn SVG only differs when the data do.
    with matplotlib.rc_context({"svg.hashsalt": "switchrepro"}):
        fig.savefig(paths[0], dpi=120, bbox_inches="tight")
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    return paths


def scale_of(frame: Optional[pd.DataFrame], scale: Optional[str]) -> Optional[str]:
    """`scale`, or else the frame's own `scale` column."""
    if scale is None and frame is not None and "scale" in frame and len(frame):
        return str(frame["scale"].iloc[0])
    return scale


def draw_curves(ax, curves: MeanCurves, x: str) -> None:
    """One line per row (its mean over seeds), with a ±1 std band where there are several seeds."""
    for row, c in curves.items():
        c = c.dropna(subset=["nlp"])
        (line,) = ax.plot(c[x], c["nlp"], label=row, lw=1.5)
        band = c[c["n"] >= 2]
        if len(band):
            ax.fill_between(band[x], band["nlp"] - band["nlp_std"], band["nlp"] + band["nlp_std"],
                            color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("training step" if x == "step" else "wall-clock seconds")
    ax.set_ylabel("held-out NLP (nats, higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------- generic figures


def quality_vs_step(curves: MeanCurves, out_dir: Path, *, prefix: str, scale: Optional[str] = None) -> list[Path]:
    """Figure 4 right: NLP against training step, one curve per row (mean over seeds)."""
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    draw_curves(ax, curves, "step")
    title(ax, "quality vs training step (Figure 4 right)", prefix, scale)
    return save(fig, out_dir, f"{prefix}_quality_vs_step")


def quality_vs_time(curves: MeanCurves, out_dir: Path, *, prefix: str, scale: Optional[str] = None) -> list[Path]:
    """Figure 5: NLP against wall-clock training time, one curve per row (mean over seeds)."""
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    draw_curves(ax, curves, "wall_seconds")
    title(ax, "quality vs wall-clock time (Figure 5)", prefix, scale)
    return save(fig, out_dir, f"{prefix}_quality_vs_time")


def pareto_front(summary: pd.DataFrame, x: str = "examples_per_sec", y: str = "nlp_mean") -> list[str]:
    """Rows not dominated by another row (one that is at least as good on both x and y and better on
    one; higher is better on both), ordered by x."""
    s = summary.dropna(subset=[x, y])
    front = []
    for row, p in s.iterrows():
        dominated = ((s[x] >= p[x]) & (s[y] >= p[y]) & ((s[x] > p[x]) | (s[y] > p[y]))).any()
        if not dominated:
            front.append(row)
    return sorted(front, key=lambda r: s.at[r, x])



def final_quality_bars(summary: pd.DataFrame, out_dir: Path, *, prefix: str,
                       scale: Optional[str] = None) -> list[Path]:
    """Final NLP per row as bars with seed-std error bars; a row that diverged in every seed is marked."""
    nlp, std = summary["nlp_mean"], summary["nlp_std"].fillna(0)
    # Bars rise from just below the worst value: NLP is negative, and differences are small against it.
    low = (nlp - std).min()
    floor = low - 0.1 * max((nlp + std).max() - low, 1e-3) if nlp.notna().any() else 0.0
    fig = Figure(figsize=(max(4.0, 1.1 * len(summary)), 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(summary))
    ax.bar(x, (nlp - floor).fillna(0), bottom=floor, yerr=std, capsize=4, color="tab:blue", alpha=0.8)
    for i, row in enumerate(summary.index):
        if math.isnan(nlp[row]):
            ax.annotate("diverged", (i, floor), textcoords="offset points", xytext=(0, 4), ha="center",
                        fontsize=8, color="tab:red")
    ax.set_xticks(x, summary.index, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("final held-out NLP (nats, higher is better)")
    ax.grid(alpha=0.3, axis="y")
    title(ax, "final quality", prefix, scale_of(summary, scale))
    return save(fig, out_dir, f"{prefix}_final_quality")


def expert_load_heatmaps(loads: Loads, out_dir: Path, *, prefix: str,
                         scale: Optional[str] = None) -> list[Path]:
    """One heatmap per row: MoE layers x experts, colour = fraction of the layer's tokens sent to the expert."""
    paths: list[Path] = []
    for row, layers in loads.items():
        if not layers:
            continue
        width = max(len(v) for v in layers.values())
        grid = np.full((len(layers), width), np.nan)
        for i, fractions in enumerate(layers.values()):
            grid[i, : len(fractions)] = fractions
        fig = Figure(figsize=(max(5.0, 0.12 * width + 3), max(2.5, 0.35 * len(layers) + 1.5)))
        ax = fig.add_subplot()
        image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="fraction of tokens")
        ax.set_yticks(range(len(layers)), list(layers), fontsize=7)
        ax.set_xlabel(f"expert (uniform load = 1/{width} = {1 / width:.3f})")
        title(ax, f"expert load of {row}", prefix, scale)
        paths += save(fig, out_dir, f"{prefix}_expert_load_{slug(row)}")
    return paths


# ------------------------------------------------------------------------ fine-tuning and distillation


def score_vs_step(curves: pd.DataFrame, out_dir: Path, *, prefix: str, scale: Optional[str] = None) -> list[Path]:
    """Fine-tuning: validation score against fine-tuning step, one panel per task (rows named
    "<model> / <task>"), one curve per row (mean over seeds, ±1 std band); the paper reports each curve's peak."""
    if "score" not in curves or curves["score"].isna().all():
        return []
    scored = curves.dropna(subset=["score"])
    tasks = list(dict.fromkeys(row.rsplit(" / ", 1)[-1] for row in scored["row"]))
    fig = Figure(figsize=(5.0 * len(tasks), 4.2))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        for row in dict.fromkeys(r for r in scored["row"] if r.rsplit(" / ", 1)[-1] == task):
            g = scored[scored["row"] == row].groupby("step")["score"]
            mean, std, n = g.mean(), g.std(ddof=1), g.count()
            (line,) = ax.plot(mean.index, mean.values, label=row.rsplit(" / ", 1)[0], lw=1.5)
            band = n >= 2
            if band.any():
                ax.fill_between(mean.index[band], (mean - std)[band], (mean + std)[band], color=line.get_color(),
                                alpha=0.15, lw=0)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel(f"{task}: validation score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    title(fig, "fine-tuning score vs step", prefix, scale)
    return save(fig, out_dir, f"{prefix}_score_vs_step")
