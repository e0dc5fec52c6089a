"""Per-language analysis of the multilingual table (paper figures 7 and 8): each language's quality gain
from Switch, with a confidence interval from paired seeds, and its step speedup.

Inputs are long-form DataFrames the runner will write, one row per evaluation of one language:

    curves: lang, row, seed, step, nlp    (held-out negative log perplexity of that language, higher is better)

The final value of a run is its last evaluation. With about five held-out articles per language, one
language's NLP is noisy, so gains are paired: seed s of Switch against seed s of the dense model (they see
the same batches), and each language gets the mean paired difference with a Student-t interval over seeds.

    paired_gains(curves, dense, switch)          per language: mean gain, its interval, improved / worse
    language_speedups(curves, dense, switch)     per language: the step speedup of footnote 9, or "never"
    summarize_languages(gains, speedups, langs)  the paper's three summary numbers over a set of languages
    per_language_table(curves, dense, switch)    one row per language: names, final NLPs, gain, interval, speedup
    mc4_language_set()                           the codes that count as mC4 languages
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from switchrepro.data.multilingual import MC4_LANGUAGES, load_manifest, mc4_codes
from switchrepro.experiments.stats import array_speedup

CONFIDENCE = 0.95
FAST = 4.0  # the paper's figure 8 threshold: 91% of languages reach at least a 4x speedup


def mc4_language_set() -> frozenset:
    """The UDHR version codes standing in for mC4 languages (the embedded manifest's choices), and mC4's own
    codes (the paper-scale task's languages)."""
    return frozenset(mc4_codes()) | frozenset(MC4_LANGUAGES)


def final_values(curves: pd.DataFrame) -> pd.DataFrame:
    """lang, row, seed, nlp at each run's last evaluated step."""
    last = curves.sort_values("step").groupby(["lang", "row", "seed"], sort=False).tail(1)
    return last[["lang", "row", "seed", "nlp"]].reset_index(drop=True)


def paired_gains(curves: pd.DataFrame, dense: str, switch: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per language: `gain` = mean over paired seeds of (Switch NLP - dense NLP) at the end,
    `std` (ddof=1), `n` seeds, the two-sided Student-t interval `low`..`high`, and `improved` / `worse`
    when the interval lies wholly above / below zero. Languages with one paired seed get no interval
    (NaN) and are neither improved nor worse."""
    final = final_values(curves)
    a = final[final["row"] == switch].set_index(["lang", "seed"])["nlp"]
    b = final[final["row"] == dense].set_index(["lang", "seed"])["nlp"]
    diff = (a - b).dropna().rename("diff").reset_index()
    records = []
    for lang, group in diff.groupby("lang", sort=True):
        d = group["diff"].to_numpy(float)
        n = d.size
        mean = float(d.mean())
        std = float(d.std(ddof=1)) if n > 1 else math.nan
        half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
        low, high = mean - half, mean + half
        records.append({"lang": lang, "gain": mean, "std": std, "n": n, "low": low, "high": high,
                        "improved": bool(n > 1 and low > 0), "worse": bool(n > 1 and high < 0)})
    return pd.DataFrame(records, columns=["lang", "gain", "std", "n", "low", "high", "improved", "worse"])


def language_speedups(curves: pd.DataFrame, dense: str, switch: str) -> pd.DataFrame:
    """One row per language: the steps the dense model needs to reach its own final seed-mean NLP on that
    language, divided by the steps Switch needs to reach it (curves averaged over seeds at each step,
    crossings interpolated linearly). `reached` is False, and `speedup` NaN, for a language Switch never
    brings to the dense model's final quality."""
    # Seed-mean curves of every (language, row) at once: one groupby, not one frame per language.
    mean = curves[curves["row"].isin([dense, switch])].groupby(["lang", "row", "step"], sort=True)["nlp"].mean()
    runs = {key: (part.index.get_level_values("step").to_numpy(float), part.to_numpy(float))
            for key, part in mean.groupby(level=["lang", "row"], sort=False)}
    records = []
    for lang in sorted(set(curves["lang"])):
        if (lang, dense) not in runs or (lang, switch) not in runs:
            continue
        s = array_speedup(*runs[(lang, dense)], *runs[(lang, switch)])
        records.append({"lang": lang, "speedup": s.speedup, "target": s.target, "dense_steps": s.baseline_x,
                        "switch_steps": s.row_x, "reached": not math.isnan(s.row_x)})
    return pd.DataFrame(records, columns=["lang", "speedup", "target", "dense_steps", "switch_steps", "reached"])


def per_language_table(curves: pd.DataFrame, dense: str, switch: str) -> pd.DataFrame:
    """One row per language, sorted by gain: its code, name and mC4 code where the embedded corpus knows them,
    both rows' final seed-mean NLP, the paired gain with its interval, and the step speedup (`reached` False:
    Switch never gets to the dense model's final NLP)."""
    final = final_values(curves).groupby(["lang", "row"])["nlp"].mean().unstack("row")
    out = paired_gains(curves, dense, switch).merge(language_speedups(curves, dense, switch), on="lang", how="outer")
    out.insert(1, f"nlp {dense}", out["lang"].map(final[dense]) if dense in final else math.nan)
    out.insert(2, f"nlp {switch}", out["lang"].map(final[switch]) if switch in final else math.nan)
    try:
        known = {lang["code"]: lang for lang in load_manifest()["languages"]}
    except (OSError, ValueError):
        known = {}
    out.insert(1, "name", out["lang"].map(lambda c: known.get(c, {}).get("name", "")))
    out.insert(2, "mc4", out["lang"].map(lambda c: known.get(c, {}).get("mc4") or ""))
    return out.sort_values("gain", ascending=False).reset_index(drop=True)


def summarize_languages(gains: pd.DataFrame, speedups: pd.DataFrame,
                        languages: Optional[Iterable[str]] = None) -> dict:
    """The paper's summary numbers over `languages` (default: every language in `gains`):

    languages, improved (point estimate: mean gain > 0), improved_significantly / worse_significantly
    (interval above / below zero), their fractions, mean_speedup over the languages Switch brings to the
    dense model's final quality, never_reached, and fast_fraction: the share of all the languages with a
    speedup of at least FAST (a language never reached counts as not fast)."""
    wanted = set(gains["lang"]) if languages is None else set(languages)
    g = gains[gains["lang"].isin(wanted)]
    s = speedups[speedups["lang"].isin(wanted)]
    n = len(g)
    reached = s[s["reached"]]
    frac = lambda k: k / n if n else math.nan
    return {
        "languages": n,
        "improved": int((g["gain"] > 0).sum()), "improved_fraction": frac(int((g["gain"] > 0).sum())),
        "improved_significantly": int(g["improved"].sum()), "worse_significantly": int(g["worse"].sum()),
        "mean_gain": float(g["gain"].mean()) if n else math.nan,
        "mean_speedup": float(np.mean(reached["speedup"])) if len(reached) else math.nan,
        "never_reached": int((~s["reached"]).sum()),
        "fast_fraction": (int((reached["speedup"] >= FAST).sum()) / len(s)) if len(s) else math.nan,
    }
