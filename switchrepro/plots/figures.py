"""The reproduction's figures, drawn from the runner's DataFrames (see `switchrepro.experiments.claims`).

Every function writes a PNG and an SVG to `out_dir` (named `<prefix>_<figure>.png/.svg`) and returns
the written paths. Titles give the scale and say that the values are ours, not the paper's.
Only `matplotlib.figure.Figure` is used, never pyplot: the figures render with Agg, and the caller's
global backend is left alone.
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

from switchrepro.experiments.claims import mean_curve, table_summary

Loads = Mapping[str, Mapping[str, Sequence[float]]]  # {row: {layer name: [fraction of tokens per expert]}}


# ------------------------------------------------------------------------------------------- helpers


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def _title(ax_or_fig, what: str, prefix: str, scale: Optional[str]) -> None:
    text = f"{prefix}: {what}\nours at {scale or 'unknown'} scale, not the paper's numbers"
    (ax_or_fig.suptitle if isinstance(ax_or_fig, Figure) else ax_or_fig.set_title)(text, fontsize=10)


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    # A fixed hash salt and no date, so that a redrawn SVG only differs when the data do.
    with matplotlib.rc_context({"svg.hashsalt": "switchrepro"}):
        fig.savefig(paths[0], dpi=120, bbox_inches="tight")
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    return paths


def _scale(frame: Optional[pd.DataFrame], scale: Optional[str]) -> Optional[str]:
    if scale is None and frame is not None and "scale" in frame and len(frame):
        return str(frame["scale"].iloc[0])
    return scale


def _rows(curves: pd.DataFrame, rows: Optional[Sequence[str]]) -> list[str]:
    present = list(dict.fromkeys(curves["row"]))
    return present if rows is None else [r for r in rows if r in present]


def _num_experts(row: str) -> Optional[int]:
    match = re.fullmatch(r"Switch (\d+)e", row)
    return int(match.group(1)) if match else None


# ------------------------------------------------------------------------------------ scaling figures


def quality_vs_params(summary: pd.DataFrame, out_dir: Path, *, prefix: str = "scaling",
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
    _title(ax, "quality vs parameters (Figure 4 left)", prefix, _scale(summary, scale))
    return _save(fig, out_dir, f"{prefix}_quality_vs_params")


def _draw_curves(ax, curves: pd.DataFrame, rows: Sequence[str], x: str) -> None:
    """One line per row (mean over seeds), with a ±1 std band where there are several seeds."""
    for row in rows:
        c = mean_curve(curves, row).dropna(subset=["nlp"])
        (line,) = ax.plot(c[x], c["nlp"], label=row, lw=1.5)
        band = c[c["n"] >= 2]
        if len(band):
            ax.fill_between(band[x], band["nlp"] - band["nlp_std"], band["nlp"] + band["nlp_std"],
                            color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("training step" if x == "step" else "wall-clock seconds")
    ax.set_ylabel("held-out NLP (nats, higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def quality_vs_step(curves: pd.DataFrame, out_dir: Path, rows: Optional[Sequence[str]] = None, *,
                    prefix: str = "scaling", scale: Optional[str] = None) -> list[Path]:
    """Figure 4 right: NLP against training step, one curve per row (mean over seeds)."""
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    _draw_curves(ax, curves, _rows(curves, rows), "step")
    _title(ax, "quality vs training step (Figure 4 right)", prefix, scale)
    return _save(fig, out_dir, f"{prefix}_quality_vs_step")


def quality_vs_time(curves: pd.DataFrame, out_dir: Path, rows: Optional[Sequence[str]] = None, *,
                    prefix: str = "scaling", scale: Optional[str] = None) -> list[Path]:
    """Figure 5: NLP against wall-clock training time, one curve per row (mean over seeds)."""
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    _draw_curves(ax, curves, _rows(curves, rows), "wall_seconds")
    _title(ax, "quality vs wall-clock time (Figure 5)", prefix, scale)
    return _save(fig, out_dir, f"{prefix}_quality_vs_time")


def largest_switch(rows: Sequence[str]) -> Optional[str]:
    """'Switch 64e' if present (the paper's Figure 6 model), else the Switch row with the most experts."""
    switch = [r for r in rows if _num_experts(r)]
    if "Switch 64e" in switch:
        return "Switch 64e"
    return max(switch, key=_num_experts, default=None)


def vs_larger_dense(curves: pd.DataFrame, out_dir: Path, *, prefix: str = "scaling",
                    scale: Optional[str] = None) -> list[Path]:
    """Figure 6: the largest Switch row (64e if run) against T5-Base and T5-Large, by step and by time."""
    present = _rows(curves, None)
    rows = [r for r in (largest_switch(present), "T5-Base", "T5-Large") if r in present]
    if not rows:
        return []
    fig = Figure(figsize=(11, 4.2))
    for i, x in enumerate(("step", "wall_seconds")):
        _draw_curves(fig.add_subplot(1, 2, i + 1), curves, rows, x)
    _title(fig, "Switch vs the FLOP-matched and the larger dense model (Figure 6)", prefix, scale)
    return _save(fig, out_dir, f"{prefix}_vs_larger_dense")


# ------------------------------------------------------------------------------------- table figures


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


def speed_quality(summary: pd.DataFrame, out_dir: Path, *, prefix: str = "table1",
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
    front = s.loc[pareto_front(s)]
    ax.plot(front["examples_per_sec"], front["nlp_mean"], "--o", color="tab:red", mfc="none", ms=10,
            label="Pareto front")
    ax.set_xlabel("training speed (examples/sec, higher is better)")
    ax.set_ylabel("final held-out NLP (nats, higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _title(ax, "speed vs quality (Table 1)", prefix, _scale(summary, scale))
    return _save(fig, out_dir, f"{prefix}_speed_quality")


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
    _title(ax, "final quality", prefix, _scale(summary, scale))
    return _save(fig, out_dir, f"{prefix}_final_quality")


def expert_load_heatmaps(loads: Loads, out_dir: Path, *, prefix: str = "table1",
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
        _title(ax, f"expert load of {row}", prefix, scale)
        paths += _save(fig, out_dir, f"{prefix}_expert_load_{_slug(row)}")
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
    _title(fig, "fine-tuning score vs step", prefix, scale)
    return _save(fig, out_dir, f"{prefix}_score_vs_step")


def gain_vs_compression(summary: pd.DataFrame, out_dir: Path, *, dense: str = "T5-Base", prefix: str = "table7",
                        scale: Optional[str] = None, paper: Optional[pd.DataFrame] = None) -> list[Path]:
    """Table 7: the share of the teacher's gain each distilled student keeps against the compression
    1 - student params / teacher params, ours (error bars: the seed std of the student's NLP, as a share
    of the gain) beside the paper's points."""
    from switchrepro.experiments.claims import gain_kept

    points = []
    for row in summary.index:
        teacher = summary.at[row, "teacher_row"] if "teacher_row" in summary else None
        if not isinstance(teacher, str) or not teacher or teacher not in summary.index:
            continue
        share = gain_kept(summary, row, dense)
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
    _title(ax, "distillation: gain kept vs compression (Table 7)", prefix, _scale(summary, scale))
    return _save(fig, out_dir, f"{prefix}_gain_vs_compression")


# ------------------------------------------------------------------------------------ multilingual figures


def language_gains(gains: pd.DataFrame, out_dir: Path, *, mc4: frozenset = frozenset(), prefix: str = "multilingual",
                   scale: Optional[str] = None, name: str = "language_gains") -> list[Path]:
    """Figure 7: each language's mean paired gain of mSwitch over mT5 (final NLP), sorted, with its 95%
    interval; one bar per language, labelled by code (mC4 languages in blue, the others grey)."""
    if gains is None or gains.empty:
        return []
    g = gains.sort_values("gain", ascending=False).reset_index(drop=True)
    width = max(8.0, 0.11 * len(g))
    fig = Figure(figsize=(width, 4.6))
    ax = fig.add_subplot()
    colors = ["tab:blue" if lang in mc4 else "tab:gray" for lang in g["lang"]]
    err = np.vstack([g["gain"] - g["low"], g["high"] - g["gain"]])
    ax.bar(np.arange(len(g)), g["gain"], color=colors, yerr=np.nan_to_num(err), error_kw={"lw": 0.5}, width=0.8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(g)))
    ax.set_xticklabels(g["lang"], rotation=90, fontsize=max(3, min(7, 600 / max(len(g), 1))))
    ax.set_xlim(-0.7, len(g) - 0.3)
    ax.set_ylabel("NLP gain of mSwitch over mT5 (nats)")
    improved = int((g["gain"] > 0).sum())
    ax.text(0.99, 0.97, f"{improved}/{len(g)} languages improved in mean; bars: 95% interval over paired seeds"
            + ("; blue = mC4 language" if mc4 else ""), transform=ax.transAxes, ha="right", va="top", fontsize=8)
    _title(ax, "per-language quality gain, sorted (Figure 7)", prefix, scale)
    return _save(fig, out_dir, f"{prefix}_{name}")


def speedup_histogram(speedups: pd.DataFrame, out_dir: Path, *, fast: float = 4.0, prefix: str = "multilingual",
                      scale: Optional[str] = None, name: str = "speedup_histogram") -> list[Path]:
    """Figure 8: histogram of the per-language step speedups of mSwitch over mT5; languages that never reach
    mT5's final NLP are counted in a separate bar."""
    if speedups is None or speedups.empty:
        return []
    reached = speedups.loc[speedups["reached"], "speedup"].to_numpy(float)
    never = int((~speedups["reached"]).sum())
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    top = max(float(reached.max()) if reached.size else 1.0, fast) * 1.05
    bins = np.linspace(0.0, top, 25)
    ax.hist(reached, bins=bins, color="tab:blue", edgecolor="white", label=f"reached ({reached.size})")
    if never:
        ax.bar([-0.06 * top], [never], width=0.05 * top, color="tab:red", label=f"never reached ({never})")
    ax.axvline(fast, color="black", ls="--", lw=0.8, label=f"{fast:g}x (paper: 91% of languages at or above)")
    ax.axvline(1.0, color="tab:gray", ls=":", lw=0.8)
    mean = float(reached.mean()) if reached.size else math.nan
    ax.set_xlabel(f"step speedup over mT5-Base (mean over reached: {mean:.2f}x; paper: 5x)")
    ax.set_ylabel("languages")
    ax.legend(fontsize=8)
    _title(ax, "per-language step speedup (Figure 8)", prefix, scale)
    return _save(fig, out_dir, f"{prefix}_{name}")


# ---------------------------------------------------------------------------------------- dispatcher


_HEADS_ROW = re.compile(r"^(?P<family>.*?)\s*H(?P<heads>\d+)$")  # "Switch Selective H1" -> ("Switch Selective", 1)


def quality_vs_heads(summary: pd.DataFrame, out_dir: Path, *, prefix: str = "selective_attention",
                     scale: Optional[str] = None) -> list[Path]:
    """Final NLP (seed mean, std bars) against the number of attention heads, one line per attention kind
    (rows named "<kind> H<heads>")."""
    points = []
    for row in summary.index:
        m = _HEADS_ROW.match(str(row))
        if m:
            points.append((m["family"], int(m["heads"]), summary.at[row, "nlp_mean"], summary.at[row, "nlp_std"]))
    if not points:
        return []
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    frame = pd.DataFrame(points, columns=["family", "heads", "nlp", "std"])
    for family, part in frame.groupby("family", sort=False):
        part = part.sort_values("heads")
        ax.errorbar(part["heads"], part["nlp"], yerr=part["std"].fillna(0), marker="o", capsize=4, label=family,
                    linestyle="--" if "Selective" in family else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(frame["heads"].unique()), [str(h) for h in sorted(frame["heads"].unique())])
    ax.set_xlabel("attention heads (each of the same width)")
    ax.set_ylabel("final held-out NLP (nats, higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _title(ax, "quality vs heads", prefix, _scale(summary, scale))
    return _save(fig, out_dir, f"{prefix}_quality_vs_heads")


def quality_vs_budget(pruning: pd.DataFrame, out_dir: Path, *, prefix: str = "selective_attention",
                      scale: Optional[str] = None) -> list[Path]:
    """Held-out NLP (seed mean) against the attention-memory budget (keys kept per layer), one panel per
    context length, one line per row; the dotted lines are the standard rows without pruning."""
    contexts = sorted(pruning["context"].unique())
    if not contexts:
        return []
    fig = Figure(figsize=(5 * len(contexts), 4.4))
    mean = pruning.groupby(["context", "row", "budget"], sort=False)["nlp"].mean().reset_index()
    rows = list(dict.fromkeys(pruning["row"]))
    colors = {row: f"C{i % 10}" for i, row in enumerate(rows)}
    for i, context in enumerate(contexts):
        ax = fig.add_subplot(1, len(contexts), i + 1)
        part = mean[mean["context"] == context]
        for row in rows:
            line = part[part["row"] == row].sort_values("budget")
            if line.empty:
                continue
            selective = "Selective" in row
            ax.plot(line["budget"], line["nlp"], marker="o" if selective else ".", color=colors[row],
                    linestyle="-" if selective else "--", label=row)
            if not selective:
                ax.axhline(line["nlp"].iloc[-1], color=colors[row], linestyle=":", linewidth=0.8)
        ax.set_xscale("log", base=2)
        budgets = sorted(part["budget"].unique())
        ax.set_xticks(budgets, [str(b) for b in budgets], fontsize=7)
        ax.set_xlabel(f"attention memory: keys kept per layer (context {context})")
        ax.set_ylabel("held-out NLP (nats, higher is better)")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    _title(fig, "quality vs attention-memory budget (context pruning)", prefix, scale)
    return _save(fig, out_dir, f"{prefix}_quality_vs_budget")


def plot_table(table: str, results: pd.DataFrame, curves: Optional[pd.DataFrame], loads: Optional[Loads],
               out_dir: Path, *, threshold: Optional[float] = None,
               languages: Optional[pd.DataFrame] = None, pruning: Optional[pd.DataFrame] = None) -> list[Path]:
    """Every figure of `table`:
    - scaling: Figures 4 left and right, 5 and 6;
    - table1: the speed-quality plane, quality vs step and the expert-load heatmaps;
    - table4, table5, table8 (fine-tuning): validation score vs step, one panel per task;
    - table7: the share of the teacher's gain kept against the compression, beside the paper's;
    - multilingual (with its per-language frame): Figures 7 (sorted gains) and 8 (speedup histogram), on the
      mC4 languages and on all;
    - selective_attention: quality vs heads, and (with its pruning frame) quality vs attention-memory budget
      per context;
    - the other tables: quality vs step and a bar chart of final NLP.
    """
    summary = table_summary(table, results, curves, threshold)
    scale = _scale(summary, None)
    if curves is not None and "table" in curves:
        curves = curves[curves["table"] == table]
    has_curves = curves is not None and not curves.empty
    kw = {"prefix": table, "scale": scale}
    paths: list[Path] = []
    if table == "scaling":
        paths += quality_vs_params(summary, out_dir, **kw)
        if has_curves:
            paths += quality_vs_step(curves, out_dir, **kw)
            paths += quality_vs_time(curves, out_dir, **kw)
            paths += vs_larger_dense(curves, out_dir, **kw)
        return paths
    if table == "table1":
        paths += speed_quality(summary, out_dir, **kw)
        paths += quality_vs_step(curves, out_dir, **kw) if has_curves else []
        paths += expert_load_heatmaps(loads, out_dir, **kw) if loads else []
        return paths
    if table in ("table4", "table5", "table8"):
        return score_vs_step(curves, out_dir, **kw) if has_curves else []
    if table == "multilingual" and languages is not None and not languages.empty:
        from switchrepro.experiments import claims as C
        from switchrepro.experiments import multilingual as ML

        mc4 = ML.mc4_language_set()
        frame = languages[languages["row"].isin([C.ML_DENSE, C.ML_SWITCH])]
        for subset, part in (("mc4", frame[frame["lang"].isin(mc4)]), ("all", frame)):
            if part.empty:
                continue
            paths += language_gains(ML.paired_gains(part, C.ML_DENSE, C.ML_SWITCH), out_dir, mc4=mc4,
                                    name=f"language_gains_{subset}", **kw)
            paths += speedup_histogram(ML.language_speedups(part, C.ML_DENSE, C.ML_SWITCH), out_dir, fast=ML.FAST,
                                       name=f"speedup_histogram_{subset}", **kw)
    if table == "selective_attention":
        paths += quality_vs_heads(summary, out_dir, **kw)
        if pruning is not None and "table" in pruning:
            pruning = pruning[pruning["table"] == table]
        paths += quality_vs_budget(pruning, out_dir, **kw) if pruning is not None and len(pruning) else []
    if table == "table7":
        from switchrepro.experiments.paper import load_paper_table

        paths += gain_vs_compression(summary, out_dir, paper=load_paper_table("table7"), **kw)
    paths += quality_vs_step(curves, out_dir, **kw) if has_curves else []
    paths += final_quality_bars(summary, out_dir, **kw)
    return paths
