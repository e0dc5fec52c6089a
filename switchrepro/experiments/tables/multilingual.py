"""Figures 7 and 8: multilingual pre-training. mSwitch-Base beats the FLOP-matched mT5-Base on every
language, with a mean per-language step speedup and most languages at 4x or more. Rows:
gin/tables/multilingual.gin; paper: experiments/paper/multilingual.csv. The per-language statistics are
`switchrepro.experiments.multilingual`; this module holds the table's claims, its per-language section and
figures, and the per-language CSV written after collection.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from switchrepro.experiments import claims as C
from switchrepro.experiments import multilingual as ML
from switchrepro.experiments import report as R
from switchrepro.experiments.tabledef import PlotData, TableDef, quality_figures
from switchrepro.plots import figures as F

NAME = "multilingual"
TITLE = "Figures 7 and 8: multilingual pre-training, mSwitch versus mT5 per language"

# The table's own verdict rules, for the report's "How verdicts are decided".
RULE = (
    "**Multilingual (per language).** \"Every language improves\": reproduced iff each language's 95% "
    "Student-t interval of the paired per-seed gain (seed s of mSwitch minus seed s of mT5) lies above zero; not "
    "reproduced iff any lies below. \"Mean speedup > 1\": the mean of the per-language step speedups, spread = "
    "the std of the per-seed means; reproduced needs fewer than 10% of languages never reaching mT5's final NLP. "
    "\"91% at >= 4x\": reproduced iff the share is at least 91% minus 2 x its per-seed std."
)

ML_DENSE, ML_SWITCH, ML_LARGE = "mT5-Base", "mSwitch-Base", "mT5-Large"
PAPER_FAST_FRACTION = 0.91  # languages with a step speedup of at least 4x (Figure 8)
NEVER_REACHED_LIMIT = 0.10  # a mean speedup over the reached languages only means something if few are missing


def _language_view(ev: C.Evidence, subset: str) -> Optional[pd.DataFrame]:
    """The per-language evaluations of the two rows, restricted to `subset` ("mc4": the languages standing in
    for mC4's, or mC4's own codes; "all"); None if there are none."""
    frame = ev.languages
    if frame is None or frame.empty:
        return None
    frame = frame[frame["row"].isin([ML_DENSE, ML_SWITCH])]
    if subset == "mc4":
        frame = frame[frame["lang"].isin(ML.mc4_language_set())]
    return frame if len(frame) else None


def _subset_label(subset: str) -> str:
    return "the mC4 languages" if subset == "mc4" else "all languages"


def improves_every_language(subset: str) -> C.Claim:
    """mSwitch's paired per-language gain: reproduced iff every language's 95% interval over paired seeds lies
    above zero; not reproduced iff any lies below; margin = the fraction improved in mean."""
    def check(ev: C.Evidence) -> C.Outcome:
        frame = _language_view(ev, subset)
        if frame is None:
            return C.Outcome(C.INCONCLUSIVE, math.nan, math.nan, "no per-language evaluations")
        gains = ML.paired_gains(frame, ML_DENSE, ML_SWITCH)
        n, seeds = len(gains), int(gains["n"].min()) if len(gains) else 0
        if n == 0:
            return C.Outcome(C.INCONCLUSIVE, math.nan, math.nan, "no language has paired seeds")
        improved, sig, worse = int((gains["gain"] > 0).sum()), int(gains["improved"].sum()), int(gains["worse"].sum())
        spread = float(gains["std"].median())
        detail = (f"{improved}/{n} languages improved in mean paired gain ({improved / n:.0%}); {sig} significantly "
                  f"(95% interval over {seeds} paired seeds above zero), {worse} significantly worse; mean gain "
                  f"{gains['gain'].mean():+.4f} nats, median per-language seed std {spread:.4f}")
        if seeds < C.MIN_SEEDS:
            return C.Outcome(C.INCONCLUSIVE, improved / n, spread,
                             f"{detail}; more seeds needed (>= {C.MIN_SEEDS} paired)")
        status = C.NOT_REPRODUCED if worse else C.REPRODUCED if sig == n else C.INCONCLUSIVE
        return C.Outcome(status, improved / n, spread, detail)

    return C.Claim(f"ml-improves-every-language-{subset}",
                 f"mSwitch-Base beats mT5-Base on every language, {_subset_label(subset)} (paper: all 101)",
                 (ML_DENSE, ML_SWITCH), check)


def _language_summaries(ev: C.Evidence, subset: str) -> Optional[tuple[pd.DataFrame, dict, list[dict]]]:
    """The subset's per-language evaluations, multilingual.summarize_languages of them (seed-mean curves), and
    the same summary for each seed the two rows share; None if there are no per-language evaluations."""
    frame = _language_view(ev, subset)
    if frame is None:
        return None
    langs = sorted(set(frame["lang"]))

    def summary(part: pd.DataFrame) -> dict:
        return ML.summarize_languages(ML.paired_gains(part, ML_DENSE, ML_SWITCH),
                                      ML.language_speedups(part, ML_DENSE, ML_SWITCH), langs)

    seeds = sorted(set(frame[frame["row"] == ML_DENSE]["seed"]) & set(frame[frame["row"] == ML_SWITCH]["seed"]))
    return frame, summary(frame), [summary(frame[frame["seed"] == seed]) for seed in seeds]


def mean_language_speedup(subset: str) -> C.Claim:
    """Per-language step speedups from seed-mean curves, averaged over the languages mSwitch brings to mT5's
    final quality; margin = mean - 1, spread = std of the per-seed means. Reproduced by the usual rule only
    when fewer than NEVER_REACHED_LIMIT of the languages are never reached (a mean over the others would flatter
    Switch); not reproduced when more than half are never reached."""
    def check(ev: C.Evidence) -> C.Outcome:
        found = _language_summaries(ev, subset)
        if found is None:
            return C.Outcome(C.INCONCLUSIVE, math.nan, math.nan, "no per-language evaluations")
        _, summary, seeds = found
        per_seed = [s["mean_speedup"] for s in seeds if not math.isnan(s["mean_speedup"])]
        spread = float(np.std(per_seed, ddof=1)) if len(per_seed) >= 2 else math.nan
        mean, never, n = summary["mean_speedup"], summary["never_reached"], summary["languages"]
        margin = mean - 1.0
        detail = (f"mean step speedup {C.num(mean)}x over the {n - never} of {n} languages that reach mT5-Base's final "
                  f"NLP ({never} never do); per-seed means [{', '.join(f'{x:.2f}' for x in per_seed)}]; "
                  f"{C.margin_text(margin, spread)}")
        if len(per_seed) < C.MIN_SEEDS:
            return C.Outcome(C.INCONCLUSIVE, margin, spread, f"{detail}; more seeds needed (>= {C.MIN_SEEDS} paired)")
        if never > n / 2:
            return C.Outcome(C.NOT_REPRODUCED, margin, spread, f"{detail}; most languages never reach it")
        status = C.compare(margin, spread)
        if status == C.REPRODUCED and never > NEVER_REACHED_LIMIT * n:
            status, detail = C.INCONCLUSIVE, f"{detail}; over {NEVER_REACHED_LIMIT:.0%} of languages never reach it"
        return C.Outcome(status, margin, spread, detail)

    return C.Claim(f"ml-mean-speedup-{subset}",
                 f"mSwitch-Base's mean per-language step speedup over mT5-Base is > 1, {_subset_label(subset)} "
                 "(paper: 5x)", (ML_DENSE, ML_SWITCH), check)


def fast_language_fraction(subset: str) -> C.Claim:
    """The share of languages with a step speedup of at least 4x (a language never reached is not fast);
    margin = share - 0.91 (the paper's), spread = std of the per-seed shares. Reproduced iff
    margin >= -2 x spread, else not reproduced."""
    def check(ev: C.Evidence) -> C.Outcome:
        found = _language_summaries(ev, subset)
        if found is None:
            return C.Outcome(C.INCONCLUSIVE, math.nan, math.nan, "no per-language evaluations")
        frame, summary, seeds = found
        per_seed = [s["fast_fraction"] for s in seeds]
        spread = float(np.std(per_seed, ddof=1)) if len(per_seed) >= 2 else math.nan
        share = summary["fast_fraction"]
        margin = share - PAPER_FAST_FRACTION
        steps = sorted(set(frame["step"]))
        ceiling = steps[-1] / steps[0] if steps and steps[0] > 0 else math.nan
        detail = (f"{share:.0%} of {summary['languages']} languages reach mT5-Base's final NLP at least {ML.FAST:g}x "
                  f"sooner (paper {PAPER_FAST_FRACTION:.0%}); per-seed shares "
                  f"[{', '.join(f'{x:.0%}' for x in per_seed)}]; the evaluations resolve speedups up to "
                  f"{C.num(ceiling)}x")
        if len(per_seed) < C.MIN_SEEDS:
            return C.Outcome(C.INCONCLUSIVE, margin, spread, f"{detail}; more seeds needed (>= {C.MIN_SEEDS} paired)")
        status = C.REPRODUCED if margin >= -2 * spread else C.NOT_REPRODUCED
        return C.Outcome(status, margin, spread, detail)

    return C.Claim(f"ml-fast-fraction-{subset}",
                 f"At least 91% of languages get a >= 4x step speedup, {_subset_label(subset)} (paper: 91%)",
                 (ML_DENSE, ML_SWITCH), check)


def _claims() -> tuple[C.Claim, ...]:
    return (
        C.beats(ML_LARGE, ML_DENSE, claim_id="ml-control-larger-dense", control=True,
              text="Positive control: the larger dense mT5-Large beats mT5-Base (all held-out rows pooled)"),
        C.beats(ML_SWITCH, ML_DENSE, claim_id="ml-switch-beats-dense",
              text="mSwitch-Base beats the FLOP-matched mT5-Base (all held-out rows pooled)"),
        *[claim for subset in ("mc4", "all") for claim in (improves_every_language(subset),
                                                           mean_language_speedup(subset),
                                                           fast_language_fraction(subset))],
    )


def language_summary_markdown(languages: pd.DataFrame) -> str:
    """The multilingual table's per-language summary (Figures 7 and 8) on the mC4 languages and on all,
    beside the paper's numbers: a markdown table."""
    frame = languages[languages["row"].isin([ML_DENSE, ML_SWITCH])]
    gains = ML.paired_gains(frame, ML_DENSE, ML_SWITCH)
    speedups = ML.language_speedups(frame, ML_DENSE, ML_SWITCH)
    mc4 = ML.mc4_language_set()
    lines = ["| languages | n | improved in mean | improved (95% interval) | worse (95% interval) | mean gain (nats) | "
             "mean step speedup | never reach mT5's final NLP | share >= 4x |", "|---" * 9 + "|"]
    for label, subset in (("mC4 (ours)", sorted(set(gains["lang"]) & mc4)), ("all (ours)", None)):
        s = ML.summarize_languages(gains, speedups, subset)
        if not s["languages"]:
            lines.append(f"| {label} | 0 | " + " | ".join([R.DASH] * 7) + " |")
            continue
        lines.append(f"| {label} | {s['languages']} | {s['improved']} ({s['improved_fraction']:.0%}) | "
                     f"{s['improved_significantly']} | {s['worse_significantly']} | {s['mean_gain']:+.4f} | "
                     f"{C.num(s['mean_speedup'])}x | {s['never_reached']} | {s['fast_fraction']:.0%} |")
    lines.append("| paper (mC4) | 101 | 101 (100%) | - | - | - | 5x | - | 91% |")
    return "\n".join(lines) + "\n"


def sections(languages: Optional[pd.DataFrame], pruning: Optional[pd.DataFrame]) -> list[tuple[str, str]]:
    """The per-language summary, under the table."""
    return [("Per language", language_summary_markdown(languages))] if languages is not None and len(languages) \
        else []


def extras(languages: Optional[pd.DataFrame], out_dir: Path, name: str) -> list[Path]:
    """<name>_per_language.csv: one row per language (multilingual.per_language_table)."""
    if languages is None or not len(languages):
        return []
    path = Path(out_dir) / f"{name}_per_language.csv"
    ML.per_language_table(languages, ML_DENSE, ML_SWITCH).to_csv(path, index=False)
    return [path]


def language_gains(gains: pd.DataFrame, out_dir: Path, *, mc4: frozenset = frozenset(), prefix: str = NAME,
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
    F.title(ax, "per-language quality gain, sorted (Figure 7)", prefix, scale)
    return F.save(fig, out_dir, f"{prefix}_{name}")


def speedup_histogram(speedups: pd.DataFrame, out_dir: Path, *, fast: float = 4.0, prefix: str = NAME,
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
    F.title(ax, "per-language step speedup (Figure 8)", prefix, scale)
    return F.save(fig, out_dir, f"{prefix}_{name}")



def plots(d: PlotData, out_dir: Path) -> list[Path]:
    """Figures 7 (sorted gains) and 8 (speedup histogram), on the mC4 languages and on all; then quality vs
    step and final NLP."""
    paths: list[Path] = []
    if d.languages is not None and not d.languages.empty:
        mc4 = ML.mc4_language_set()
        frame = d.languages[d.languages["row"].isin([ML_DENSE, ML_SWITCH])]
        for subset, part in (("mc4", frame[frame["lang"].isin(mc4)]), ("all", frame)):
            if part.empty:
                continue
            paths += language_gains(ML.paired_gains(part, ML_DENSE, ML_SWITCH), out_dir, mc4=mc4,
                                    name=f"language_gains_{subset}", **d.kw)
            paths += speedup_histogram(ML.language_speedups(part, ML_DENSE, ML_SWITCH), out_dir, fast=ML.FAST,
                                       name=f"speedup_histogram_{subset}", **d.kw)
    return paths + quality_figures(d, out_dir)


TABLE = TableDef(NAME, TITLE, _claims(), R.quality_only, plots, sections=sections, extras=extras)
