"""Selective attention (Leviathan et al. 2024): selective attention with H heads is as good as standard
attention with 2H, also with Switch FFNs, and with context pruning it needs several times less attention
memory for standard attention's quality, more so at longer contexts. Rows: gin/tables/selective_attention.gin;
paper: experiments/paper/selective_attention.csv. The context-pruning frame (quality per context and
attention-memory budget) is this table's alone: its claims, its report section and its figure are here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from switchrepro.experiments import claims as C
from switchrepro.experiments import report as R
from switchrepro.experiments.tabledef import PlotData, TableDef, quality_figures
from switchrepro.plots import figures as F

NAME = "selective_attention"
TITLE = "Selective attention (Leviathan et al. 2024): heads, context pruning, Switch FFNs"

# The table's own verdict rules, for the report's "How verdicts are decided".
RULE = (
    "**Selective attention.** \"Selective with H heads is at least as good as standard with 2H\": not reproduced "
    "iff it is worse by more than 2 x spread; reproduced otherwise, but only where doubling the standard heads "
    "itself pays beyond the noise (else inconclusive). \"Less attention memory\": with context pruning, the "
    "smallest budget (keys per layer) at which a selective seed reaches the standard row's unpruned seed-mean NLP; "
    "ratio = context / budget; reproduced iff every seed's ratio is at least 2, not reproduced iff none is."
)

# Each selective row against the standard row of the same heads and FFN: how much attention memory (keys per
# layer) it needs, with context pruning, to reach that standard row's unpruned held-out NLP.
SA_MEMORY_PAIRS = (("Selective H1", "Standard H1"), ("Selective H2", "Standard H2"),
                   ("Switch Selective H1", "Switch Standard H1"))
MIN_MEMORY_RATIO = 2.0  # "several times less memory": every seed needs at most half the context


def budget_needed(curve: pd.DataFrame, target: float) -> float:
    """The smallest `budget` of `curve` (columns budget, nlp) whose nlp reaches `target`; NaN if none does."""
    ok = curve[curve["nlp"] >= target]
    return float(ok["budget"].min()) if len(ok) else math.nan


def memory_ratios(pruning: pd.DataFrame) -> pd.DataFrame:
    """For each pair of SA_MEMORY_PAIRS present and each context: the target (the standard row's unpruned
    seed-mean NLP), the budget the selective row's seed-mean curve needs to reach it, ratio = context /
    that budget (NaN: not reached even unpruned), and the same ratio per selective seed (`seed_ratios`).
    `window_ratio` is the baseline: context / the budget at which the standard row's own seed-mean curve
    (pruned as a sliding window with an attention sink) reaches the same target. A model that uses little
    of its context gets a large ratio from any pruning; selective attention's saving is what it adds to that."""
    out = []
    for sel, std in SA_MEMORY_PAIRS:
        for context in sorted(pruning["context"].unique()) if len(pruning) else ():
            at = pruning[pruning["context"] == context]
            selective = at[at["row"] == sel]
            standard = at[(at["row"] == std) & (at["budget"] == context)]
            if selective.empty or standard.empty:
                continue
            target = float(standard["nlp"].mean())
            needed = budget_needed(selective.groupby("budget", as_index=False)["nlp"].mean(), target)
            per_seed = tuple(context / budget_needed(g, target) for _, g in selective.groupby("seed"))
            window = at[at["row"] == std].groupby("budget", as_index=False)["nlp"].mean()
            out.append({"selective": sel, "standard": std, "context": int(context), "target": target,
                        "standard_std": float(standard["nlp"].std(ddof=1)) if len(standard) > 1 else math.nan,
                        "budget": needed, "ratio": context / needed, "seed_ratios": per_seed,
                        "window_ratio": context / budget_needed(window, target),
                        "n_selective": int(selective["seed"].nunique()), "n_standard": int(standard["seed"].nunique())})
    return pd.DataFrame(out, columns=["selective", "standard", "context", "target", "standard_std", "budget", "ratio",
                                      "seed_ratios", "window_ratio", "n_selective", "n_standard"])


def at_least(a: str, b: str, doubled_from: str, claim_id: str, text: str) -> C.Claim:
    """Row `a` is at least as good as row `b` (not worse by more than 2 x spread), where `b` has twice the
    heads of `doubled_from`: the claim means something only if doubling the heads pays here (`b` beats
    `doubled_from` by the beats rule), so without that it is inconclusive."""

    def check(ev: C.Evidence) -> C.Outcome:
        sa, sb, sc = (C.row_stats(ev, r, "nlp") for r in (a, b, doubled_from))
        margin, spread = sa.mean - sb.mean, C.spread_of(sa.std, sb.std)
        gain, gain_spread = sb.mean - sc.mean, C.spread_of(sb.std, sc.std)
        detail = (f"NLP: {C.describe(a, sa)} vs {C.describe(b, sb)}; {C.margin_text(margin, spread)}; "
                  f"doubling the heads ({doubled_from} {C.num(sc.mean)} -> {b}) gains {C.num(gain)} "
                  f"(2×spread {C.num(2 * gain_spread)})")
        short = C.few_seeds({a: sa, b: sb, doubled_from: sc})
        if short:
            return C.Outcome(C.INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        if margin < 0 and -margin > 2 * spread:
            return C.Outcome(C.NOT_REPRODUCED, margin, spread, detail)
        if C.compare(gain, gain_spread) != C.REPRODUCED:
            return C.Outcome(C.INCONCLUSIVE, margin, spread,
                           f"{detail}; doubling the heads does not pay beyond the seed noise here, so matching {b} "
                           "shows nothing")
        return C.Outcome(C.REPRODUCED, margin, spread, detail)

    return C.Claim(claim_id, text, (a, b, doubled_from), check)


def _pair_ratios(ev: C.Evidence, sel: str, std: str) -> pd.DataFrame:
    if ev.pruning is None or ev.pruning.empty:
        return memory_ratios(pd.DataFrame(columns=["row", "seed", "context", "budget", "nlp"]))
    r = memory_ratios(ev.pruning)
    return r[(r["selective"] == sel) & (r["standard"] == std)].sort_values("context")


def _ratio_text(r) -> str:
    seeds = ", ".join("not reached" if math.isnan(x) else f"{x:.1f}x" for x in r.seed_ratios)
    mean = "not reached" if math.isnan(r.ratio) else f"{r.ratio:.1f}x (budget {r.budget:.0f} of {r.context})"
    return f"context {r.context}: {r.selective} reaches {r.standard}'s unpruned NLP {C.num(r.target)} at {mean}; " \
           f"per seed {seeds}; {r.standard} itself as a sliding window: {r.window_ratio:.1f}x"


def _unreached_as_zero(ratios) -> list[float]:
    """Memory ratios with "not reached" (NaN) as 0: needing more than the whole context."""
    return [0.0 if math.isnan(x) else float(x) for x in ratios]


NO_PRUNING_RESULTS = "no context-pruning results for these rows"


def _ratio_at(ev: C.Evidence, sel: str, std: str, which: str):
    """(the pair's memory_ratios row at the "shortest" or "longest" context, its per-seed ratios with not
    reached as 0, their std, "" or why there are too few seeds); None without pruning results."""
    ratios = _pair_ratios(ev, sel, std)
    if ratios.empty:
        return None
    r = next((ratios.iloc[[0]] if which == "shortest" else ratios.iloc[[-1]]).itertuples())
    seeds = _unreached_as_zero(r.seed_ratios)
    spread = float(np.std(seeds, ddof=1)) if len(seeds) > 1 else math.nan
    few = f"more seeds needed (>= {C.MIN_SEEDS} per row)" if min(r.n_selective, r.n_standard) < C.MIN_SEEDS else ""
    return r, seeds, spread, few


def memory_smaller(sel: str, std: str, which: str, claim_id: str, text: str) -> C.Claim:
    """With context pruning, every seed of `sel` reaches the unpruned NLP of `std` (seed mean) with at most
    1 / MIN_MEMORY_RATIO of the context's keys, at the `which` ("shortest" or "longest") context measured."""

    def check(ev: C.Evidence) -> C.Outcome:
        found = _ratio_at(ev, sel, std, which)
        if found is None:
            return C.Outcome(C.INCONCLUSIVE, math.nan, math.nan, NO_PRUNING_RESULTS)
        r, seeds, spread, few = found
        detail = _ratio_text(r) + f"; goal: every seed >= {MIN_MEMORY_RATIO:g}x"
        if few:
            return C.Outcome(C.INCONCLUSIVE, r.ratio, spread, f"{detail}; {few}")
        status = (C.REPRODUCED if min(seeds) >= MIN_MEMORY_RATIO else C.NOT_REPRODUCED if max(seeds) < MIN_MEMORY_RATIO
                  else C.INCONCLUSIVE)
        return C.Outcome(status, r.ratio, spread, detail)

    return C.Claim(claim_id, text, (sel, std), check)


def memory_beats_window(sel: str, std: str, claim_id: str, text: str) -> C.Claim:
    """At the longest context, every seed of `sel` with its pruning reaches `std`'s unpruned NLP with fewer
    keys than `std` itself needs as a sliding window (seed mean): the saving is selective attention's, not
    a model that uses little context. Not reproduced iff no seed does better than the window."""

    def check(ev: C.Evidence) -> C.Outcome:
        found = _ratio_at(ev, sel, std, "longest")
        if found is None:
            return C.Outcome(C.INCONCLUSIVE, math.nan, math.nan, NO_PRUNING_RESULTS)
        r, seeds, spread, few = found
        ratio, window = _unreached_as_zero([r.ratio, r.window_ratio])
        margin = ratio - window
        detail = _ratio_text(r)
        if few:
            return C.Outcome(C.INCONCLUSIVE, margin, spread, f"{detail}; {few}")
        status = (C.REPRODUCED if min(seeds) > window else C.NOT_REPRODUCED if max(seeds) <= window else C.INCONCLUSIVE)
        return C.Outcome(status, margin, spread, detail)

    return C.Claim(claim_id, text, (sel, std), check)


def memory_ratio_grows(sel: str, std: str, claim_id: str, text: str) -> C.Claim:
    """The memory ratio grows with the context (the paper: 16x, 25x, 47x): reproduced iff the seed-mean ratio
    rises from each context to the next and every seed's ratio at the longest context exceeds every seed's at
    the shortest; not reproduced iff the seed-mean ratio at the longest is at most that at the shortest."""

    def check(ev: C.Evidence) -> C.Outcome:
        ratios = _pair_ratios(ev, sel, std)
        if len(ratios) < 2:
            return C.Outcome(C.INCONCLUSIVE, math.nan, math.nan, "needs context-pruning results at 2 or more contexts")
        mean = _unreached_as_zero(ratios["ratio"])
        first, last = (_unreached_as_zero(ratios["seed_ratios"].iloc[i]) for i in (0, -1))
        detail = "; ".join(_ratio_text(r) for r in ratios.itertuples())
        margin = mean[-1] - mean[0]
        if min(ratios["n_selective"].min(), ratios["n_standard"].min()) < C.MIN_SEEDS:
            return C.Outcome(C.INCONCLUSIVE, margin, math.nan,
                             f"{detail}; more seeds needed (>= {C.MIN_SEEDS} per row)")
        if margin <= 0:
            return C.Outcome(C.NOT_REPRODUCED, margin, math.nan, detail)
        rising = all(b > a for a, b in zip(mean, mean[1:], strict=False))
        status = C.REPRODUCED if rising and min(last) > max(first) else C.INCONCLUSIVE
        return C.Outcome(status, margin, math.nan, detail)

    return C.Claim(claim_id, text, (sel, std), check)


def _claims() -> tuple[C.Claim, ...]:
    return (
        C.beats("Standard H2", "Standard H1", claim_id="sa-control-more-heads", control=True,
              text="Positive control: standard attention with 2 heads beats 1 head"),
        at_least("Selective H1", "Standard H2", "Standard H1", claim_id="sa-selective-h1-matches-standard-h2",
                 text="Selective attention with 1 head is at least as good as standard attention with 2"),
        at_least("Selective H2", "Standard H4", "Standard H2", claim_id="sa-selective-h2-matches-standard-h4",
                 text="Selective attention with 2 heads is at least as good as standard attention with 4"),
        at_least("Switch Selective H1", "Switch Standard H2", "Switch Standard H1",
                 claim_id="sa-switch-selective-h1-matches-standard-h2",
                 text="With Switch FFNs: selective attention with 1 head is at least as good as standard with 2"),
        memory_smaller("Selective H2", "Standard H2", "shortest", claim_id="sa-memory-shortest-context",
                       text=f"Pruned selective attention needs >= {MIN_MEMORY_RATIO:g}x less attention memory for "
                            "standard attention's quality (shortest context)"),
        memory_smaller("Selective H2", "Standard H2", "longest", claim_id="sa-memory-longest-context",
                       text=f"Pruned selective attention needs >= {MIN_MEMORY_RATIO:g}x less attention memory for "
                            "standard attention's quality (longest context)"),
        memory_beats_window("Selective H2", "Standard H2", claim_id="sa-memory-beats-sliding-window",
                            text="Pruned selective attention needs less memory than standard attention pruned as a "
                                 "sliding window, for standard attention's quality (longest context)"),
        memory_ratio_grows("Selective H2", "Standard H2", claim_id="sa-memory-ratio-grows-with-context",
                           text="The memory saving grows with the context length"),
        memory_smaller("Switch Selective H1", "Switch Standard H1", "longest",
                       claim_id="sa-switch-memory-longest-context",
                       text=f"With Switch FFNs: pruned selective attention needs >= {MIN_MEMORY_RATIO:g}x less "
                            "attention memory (longest context)"),
    )


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
            cells = [f"{mean[(context, row, b)]:.4f}" if (context, row, b) in mean.index else R.DASH for b in budgets]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    ratios = memory_ratios(pruning)
    if len(ratios):
        lines += ["Attention memory needed to reach the unpruned standard model's NLP (memory ratio = context / "
                  "budget needed, from seed means, then each selective seed against the standard seed mean; "
                  "the paper: 16x, 25x and 47x at contexts 512, 1,024 and 2,048):", "",
                  "| selective row | standard row | context | budget needed | memory ratio | per seed | "
                  "standard row as a sliding window |", "|---|---|---|---|---|---|---|"]
        for r in ratios.itertuples():
            needed = R.DASH if np.isnan(r.budget) else f"{r.budget:.0f}"
            ratio = "not reached" if np.isnan(r.ratio) else f"{r.ratio:.1f}x"
            seeds = ", ".join("-" if np.isnan(x) else f"{x:.1f}x" for x in r.seed_ratios)
            window = "not reached" if np.isnan(r.window_ratio) else f"{r.window_ratio:.1f}x"
            lines.append(f"| {r.selective} | {r.standard} | {r.context} | {needed} | {ratio} | {seeds} | {window} |")
        lines.append("")
    return "\n".join(lines)


def sections(languages: Optional[pd.DataFrame], pruning: Optional[pd.DataFrame]) -> list[tuple[str, str]]:
    """The context-pruning tables, under the table."""
    return [("Context pruning", pruning_markdown(pruning))] if pruning is not None and len(pruning) else []


_HEADS_ROW = re.compile(r"^(?P<family>.*?)\s*H(?P<heads>\d+)$")  # "Switch Selective H1" -> ("Switch Selective", 1)


def quality_vs_heads(summary: pd.DataFrame, out_dir: Path, *, prefix: str = NAME,
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
    F.title(ax, "quality vs heads", prefix, F.scale_of(summary, scale))
    return F.save(fig, out_dir, f"{prefix}_quality_vs_heads")


def quality_vs_budget(pruning: pd.DataFrame, out_dir: Path, *, prefix: str = NAME,
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
    F.title(fig, "quality vs attention-memory budget (context pruning)", prefix, scale)
    return F.save(fig, out_dir, f"{prefix}_quality_vs_budget")



def plots(d: PlotData, out_dir: Path) -> list[Path]:
    """Quality vs heads and (with pruning) quality vs attention-memory budget per context; then quality vs
    step and final NLP."""
    paths = quality_vs_heads(d.summary, out_dir, **d.kw)
    paths += quality_vs_budget(d.pruning, out_dir, **d.kw) if d.pruning is not None and len(d.pruning) else []
    return paths + quality_figures(d, out_dir)


TABLE = TableDef(NAME, TITLE, _claims(), R.quality_only, plots, sections=sections)
