"""The paper's claims, judged on our runs.

Inputs are the runner's DataFrames:

- `results`: one row per (row, seed) run, with `final_nlp` (held-out negative log perplexity, nats/token,
  higher is better; NaN if the run diverged), `diverged_at`, `examples_per_sec`, `params`, and so on;
- `curves`: long form, one row per evaluation: `row`, `seed`, `step`, `wall_seconds`, `nlp`;
- `languages` (multilingual table only): one row per evaluation and language: `row`, `seed`, `step`, `lang`, `nlp`.

`summarize` reduces `results` to one line per row (mean and sample std over the seeds that did not
diverge). Each `Claim` turns that summary, plus the curves, into a `Verdict`.

Verdict rule. A claim has a margin and a spread, and its status follows from them:

- "A beats B" (`beats`): margin = mean_A - mean_B, with the sign flipped for lower-is-better metrics, so
  that a positive margin always favours A. Spread = the larger of the two rows' seed standard deviations
  (ddof=1).
  - **reproduced** iff margin > 0 and margin > 2 x spread;
  - **not reproduced** iff margin < 0 and |margin| > 2 x spread;
  - **inconclusive** otherwise.
  - A row with fewer than `MIN_SEEDS` (2) usable seeds makes the claim inconclusive, whatever its
    margin: one seed has no spread. Seeds that diverged are not usable.
- `best_of(rows, metric)`: rows[0] beats the best of the other rows, by the rule above. For a
  time-to-threshold metric, a row that never reaches the threshold is out of the race.
- `monotonic(rows)`: every consecutive pair must improve in mean, and the last row must beat the first
  row by the rule above. If the last row is clearly worse than the first, the claim is not reproduced;
  if only a pair fails, it is inconclusive and the detail names the failing pairs.
- `matches(a, b)`: reproduced iff |margin| <= 2 x spread. Otherwise it is not reproduced.
- `diverges(row)` / `stable(row)`: the row diverged in all or in none of its seeds (at least
  `MIN_SEEDS`). The opposite outcome is "not reproduced", and a mix is "inconclusive". Margin = the
  fraction of seeds that behave as claimed.
- `lower_variance(a, b)`: both rows need at least 3 usable seeds. Margin = std_B - std_A, and
  spread = std_A. Reproduced iff std_B / std_A > 2 (equivalently margin > spread). Not reproduced iff
  std_A / std_B > 2. Inconclusive otherwise.
- `speedup(baseline, rows)`: step speedup (paper footnote 9), taken from the seed-mean curves. It is
  the number of steps the baseline needs to reach its own final mean NLP, divided by the number of
  steps the row needs to reach that same NLP. Margin = speedup - 1. Spread = the std of the per-seed
  speedups (seeds paired by number).

A claim whose rows are missing from the results (the runner may run a subset) is inconclusive, with the
detail "rows missing: ...".

Positive control. A table may mark claims as controls (`control=True`): claims that must hold in any
regime where the table's other claims mean something, such as "a larger dense model beats the base
model". When a control is not reproduced, every other verdict of that table becomes **regime invalid**;
its detail keeps the status it would have had and its numbers.

Teacher not ahead. A distillation claim names its teacher claim ("the teacher beats the dense model",
`teacher_claim`). Unless that claim is reproduced, the distillation verdict reads **teacher not ahead**: a
student cannot keep a gain its teacher does not have. Its detail keeps the status it would have had.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, REGIME_INVALID, TEACHER_NOT_AHEAD = STATUSES = (
    "reproduced", "not reproduced", "inconclusive", "regime invalid", "teacher not ahead")
MIN_SEEDS = 2
MIN_SEEDS_VARIANCE = 3

# The rule in one paragraph, for the report and the CLI.
VERDICT_RULE = (
    "For a claim \"A beats B\", margin = mean(A) - mean(B), signed so that positive favours A, and "
    "spread = the larger of the two rows' seed standard deviations (ddof=1; diverged seeds are excluded).\n"
    "- **reproduced**: margin > 0 and margin > 2 x spread.\n"
    "- **not reproduced**: margin < 0 and |margin| > 2 x spread.\n"
    "- **inconclusive**: anything else, including any row with fewer than 2 usable seeds.\n\n"
    "The other claim types apply the same rule:\n"
    "- \"more experts is better\": every consecutive pair must improve, and the last row must beat the "
    "first.\n"
    "- \"matches\": |margin| <= 2 x spread.\n"
    "- \"diverges\" / \"stable\": the row diverged in all / none of at least 2 seeds.\n"
    "- \"lower variance\": at least 3 seeds per row, and std ratio > 2.\n"
    "- \"step speedup > 1\": the speedup comes from seed-mean curves; spread = the std of the "
    "per-seed speedups.\n\n"
    "A claim whose rows were not run is inconclusive.\n\n"
    "**Positive control.** table1, scaling and multilingual first check that the larger dense model "
    "(T5-Large, mT5-Large) beats the base one; selective_attention, that standard attention with 2 heads beats 1. "
    "If that control is not reproduced, the regime cannot show what "
    "parameters buy, and every other "
    "verdict of the table reads **regime invalid** (its detail keeps what it would have been).\n\n"
    "**Multilingual (per language).** \"Every language improves\": reproduced iff each language's 95% "
    "Student-t interval of the paired per-seed gain (seed s of mSwitch minus seed s of mT5) lies above zero; not "
    "reproduced iff any lies below. \"Mean speedup > 1\": the mean of the per-language step speedups, spread = "
    "the std of the per-seed means; reproduced needs fewer than 10% of languages never reaching mT5's final NLP. "
    "\"91% at >= 4x\": reproduced iff the share is at least 91% minus 2 x its per-seed std.\n\n"
    "**Selective attention.** \"Selective with H heads is at least as good as standard with 2H\": not reproduced "
    "iff it is worse by more than 2 x spread; reproduced otherwise, but only where doubling the standard heads "
    "itself pays beyond the noise (else inconclusive). \"Less attention memory\": with context pruning, the "
    "smallest budget (keys per layer) at which a selective seed reaches the standard row's unpruned seed-mean NLP; "
    "ratio = context / budget; reproduced iff every seed's ratio is at least 2, not reproduced iff none is.\n\n"
    "**Teacher not ahead.** A distillation claim is judged only when its teacher beats the dense model; "
    "otherwise it reads **teacher not ahead**, not a failed distillation."
)


# ----------------------------------------------------------------------------------------- summaries


def _diverged(results: pd.DataFrame) -> pd.Series:
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
    df = results.assign(_diverged=_diverged(results))
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


# ------------------------------------------------------------------------------------------- curves


def _first_crossing(x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """The x at which y first reaches `threshold` (y >= threshold), interpolated linearly from the
    evaluation before it; the first evaluation's x if that one already reaches it; NaN if none does."""
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
        value = _first_crossing(run[x].to_numpy(float), run["nlp"].to_numpy(float), threshold)
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


def margin_by_step(curves: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """How `a`'s lead over `b` grows with training: one row per step both were evaluated at, with each
    row's mean and std NLP over seeds, the margin (a - b), twice the larger std, and the verdict the beats
    rule would give at that step: the evidence for choosing a regime's length on the control alone."""
    ma, mb = mean_curve(curves, a), mean_curve(curves, b)
    m = ma.merge(mb, on="step", suffixes=("_a", "_b"))
    out = pd.DataFrame({"step": m["step"], f"{a} NLP": m["nlp_a"], f"{a} std": m["nlp_std_a"],
                        f"{b} NLP": m["nlp_b"], f"{b} std": m["nlp_std_b"], "seeds": m[["n_a", "n_b"]].min(axis=1)})
    out["margin"] = m["nlp_a"] - m["nlp_b"]
    spread = m[["nlp_std_a", "nlp_std_b"]].max(axis=1, skipna=False)
    out["2x spread"] = 2 * spread
    out["verdict"] = [INCONCLUSIVE if n < MIN_SEEDS else _compare(mg, sp)
                      for mg, sp, n in zip(out["margin"], spread, out["seeds"], strict=True)]
    return out


class Speedup(NamedTuple):
    speedup: float  # baseline_x / row_x; NaN if the row never reaches the target
    target: float  # the baseline's final mean NLP
    baseline_x: float  # steps (or seconds) the baseline needs to reach the target
    row_x: float  # the same for the row


def _speedup(base: pd.DataFrame, other: pd.DataFrame, x: str) -> Speedup:
    """Speedup of the curve `other` over `base` (each with columns x and `nlp`), as in footnote 9."""
    base, other = base.dropna(subset=["nlp"]), other.dropna(subset=["nlp"])
    if base.empty or other.empty:
        return Speedup(math.nan, math.nan, math.nan, math.nan)
    target = float(base["nlp"].iloc[-1])
    bx = _first_crossing(base[x].to_numpy(float), base["nlp"].to_numpy(float), target)
    rx = _first_crossing(other[x].to_numpy(float), other["nlp"].to_numpy(float), target)
    ratio = bx / rx if rx > 0 else math.nan
    return Speedup(ratio, target, bx, rx)


def step_speedup(curves: pd.DataFrame, baseline_row: str, row: str) -> float:
    """The steps the baseline needs to reach its final seed-mean NLP, divided by the steps `row` needs
    to reach that NLP (paper footnote 9). NaN if `row` never reaches it."""
    return _speedup(mean_curve(curves, baseline_row), mean_curve(curves, row), "step").speedup


def time_speedup(curves: pd.DataFrame, baseline_row: str, row: str) -> float:
    """As `step_speedup`, in wall-clock seconds (Figures 5 and 6 right)."""
    return _speedup(mean_curve(curves, baseline_row), mean_curve(curves, row), "wall_seconds").speedup


def _per_seed_speedups(curves: pd.DataFrame, baseline_row: str, row: str, x: str) -> list[float]:
    """Speedups of seed s of `row` over seed s of the baseline, for the seeds both rows have."""
    base, other = curves[curves["row"] == baseline_row], curves[curves["row"] == row]
    seeds = sorted(set(base["seed"]) & set(other["seed"]))
    return [_speedup(base[base["seed"] == s].sort_values("step"),
                     other[other["seed"] == s].sort_values("step"), x).speedup for s in seeds]


# ------------------------------------------------------------------------------------ claims, verdicts


@dataclass(frozen=True)
class Verdict:
    claim_id: str
    text: str
    status: str  # one of STATUSES
    margin: float
    spread: float
    detail: str  # the numbers behind the status


@dataclass(frozen=True, eq=False)
class Evidence:
    """What claims are judged on: the row summary and the curves of one table."""

    summary: pd.DataFrame
    curves: Optional[pd.DataFrame] = None
    threshold: Optional[float] = None
    languages: Optional[pd.DataFrame] = None  # per-language evaluations (multilingual)
    pruning: Optional[pd.DataFrame] = None  # quality per context and attention-memory budget (selective attention)

    def has(self, row: str) -> bool:
        return row in self.summary.index


class Outcome(NamedTuple):
    status: str
    margin: float
    spread: float
    detail: str


@dataclass(frozen=True)
class Claim:
    """A claim of the paper. `rows` are the rows it needs; `check` judges it once they are present."""

    id: str
    text: str
    rows: tuple[str, ...]
    check: Callable[[Evidence], Outcome]
    control: bool = False  # a positive control: when it fails, the table's other verdicts are regime invalid
    # Distillation: the id of the claim "the teacher beats the dense model". A student can only keep a gain
    # its teacher has: unless that claim is reproduced, this verdict reads "teacher not ahead".
    teacher_claim: Optional[str] = None

    def evaluate(self, evidence: Evidence) -> Verdict:
        missing = [r for r in self.rows if not evidence.has(r)]
        if missing:
            return Verdict(self.id, self.text, INCONCLUSIVE, math.nan, math.nan, "rows missing: " + ", ".join(missing))
        return Verdict(self.id, self.text, *self.check(evidence))


@dataclass(frozen=True)
class Metric:
    label: str
    mean: str  # summary columns
    std: str
    count: str  # the summary column that counts the seeds behind the mean
    higher_is_better: bool


METRICS = {
    "nlp": Metric("NLP", "nlp_mean", "nlp_std", "n_ok", True),
    "examples_per_sec": Metric("examples/sec", "examples_per_sec", "examples_per_sec_std", "n_seeds", True),
    "steps_to_threshold": Metric("steps to threshold", "steps_to_threshold_mean", "steps_to_threshold_std",
                                 "n_reached", False),
    "score": Metric("peak validation score", "score_mean", "score_std", "n_scored", True),
    "time_to_threshold": Metric("seconds to threshold", "time_to_threshold_mean", "time_to_threshold_std",
                                "n_reached", False),
}


class Stats(NamedTuple):
    mean: float
    std: float
    n: int


def _stats(ev: Evidence, row: str, metric: str) -> Stats:
    m, s = METRICS[metric], ev.summary
    if m.mean not in s or pd.isna(s.at[row, m.count]):
        return Stats(math.nan, math.nan, 0)
    return Stats(float(s.at[row, m.mean]), float(s.at[row, m.std]), int(s.at[row, m.count]))


def num(x: float, like: Optional[float] = None) -> str:
    """A number at a precision that suits the size of `like` (default: of x itself): NLP to 4 decimals,
    speeds to 1, steps and seconds from 1000 on to units."""
    if x is None or math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    size = abs(x if like is None or math.isnan(like) else like)
    return f"{x:.4f}" if size < 10 else f"{x:.1f}" if size < 1000 else f"{x:.0f}"


def _describe(row: str, st: Stats) -> str:
    return f"{row} {num(st.mean)} ± {num(st.std, like=st.mean)} (n={st.n})"


def _spread(*stds: float) -> float:
    return math.nan if any(math.isnan(s) for s in stds) else max(stds)


def _compare(margin: float, spread: float) -> str:
    if margin > 0 and margin > 2 * spread:
        return REPRODUCED
    if margin < 0 and -margin > 2 * spread:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def _few_seeds(named: dict[str, Stats], need: int = MIN_SEEDS) -> str:
    """'' if every row has enough seeds, else the reason the verdict must be inconclusive."""
    short = [f"{r} has {st.n}" for r, st in named.items() if st.n < need]
    return f"more seeds needed (>= {need} usable per row; {', '.join(short)})" if short else ""


def _margin_text(margin: float, spread: float) -> str:
    return f"margin {num(margin)}, 2×spread {num(2 * spread)}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def beats(a: str, b: str, metric: str = "nlp", claim_id: Optional[str] = None, control: bool = False,
          text: Optional[str] = None) -> Claim:
    """Row `a` is better than row `b` on `metric` (a key of METRICS)."""
    m = METRICS[metric]
    text = text or f"{a} beats {b} ({m.label})"

    def check(ev: Evidence) -> Outcome:
        sa, sb = _stats(ev, a, metric), _stats(ev, b, metric)
        sign = 1 if m.higher_is_better else -1
        margin, spread = sign * (sa.mean - sb.mean), _spread(sa.std, sb.std)
        detail = f"{m.label}: {_describe(a, sa)} vs {_describe(b, sb)}; {_margin_text(margin, spread)}"
        detail += _divergence_note(ev, (a, b)) if metric == "nlp" else ""
        short = _few_seeds({a: sa, b: sb})
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        return Outcome(_compare(margin, spread), margin, spread, detail)

    return Claim(claim_id or _slug(text), text, (a, b), check, control=control)


def _divergence_note(ev: Evidence, rows: Sequence[str]) -> str:
    notes = [f"{r} diverged in {ev.summary.at[r, 'n_diverged']} of {ev.summary.at[r, 'n_seeds']} seeds"
             for r in rows if ev.summary.at[r, "n_diverged"] > 0]
    return "; " + "; ".join(notes) if notes else ""


def best_of(rows: Sequence[str], metric: str, claim_id: Optional[str] = None, text: Optional[str] = None) -> Claim:
    """`rows[0]` is the best of `rows` on `metric`: it beats the best of the others by the beats rule.
    For threshold metrics a row that never reaches the threshold is out of the race."""
    m, rows = METRICS[metric], tuple(rows)
    winner = rows[0]
    text = text or f"{winner} is best on {m.label} among {', '.join(rows)}"

    def check(ev: Evidence) -> Outcome:
        if m.mean not in ev.summary:
            return Outcome(INCONCLUSIVE, math.nan, math.nan, f"no {m.label} (curves or threshold missing)")
        stats = {r: _stats(ev, r, metric) for r in rows}
        threshold = f"threshold NLP {num(ev.threshold)}; " if ev.threshold is not None else ""
        detail = threshold + "; ".join(_describe(r, st) for r, st in stats.items())
        sign = 1 if m.higher_is_better else -1
        rivals = {r: st for r, st in stats.items() if r != winner and not math.isnan(st.mean)}
        best = stats[winner]
        if math.isnan(best.mean):
            status = NOT_REPRODUCED if rivals else INCONCLUSIVE
            return Outcome(status, math.nan, math.nan, f"{detail}; {winner} has no value (e.g. never reached)")
        if not rivals:  # only the winner has a value, e.g. the only row to reach the threshold
            short = _few_seeds({winner: best})
            return Outcome(INCONCLUSIVE if short else REPRODUCED, math.inf, best.std,
                           f"{detail}; only {winner} has a value" + (f"; {short}" if short else ""))
        rival = max(rivals, key=lambda r: sign * rivals[r].mean)
        margin, spread = sign * (best.mean - rivals[rival].mean), _spread(best.std, rivals[rival].std)
        detail += f"; vs runner-up {rival}: {_margin_text(margin, spread)}"
        short = _few_seeds({winner: best, rival: rivals[rival]})
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        return Outcome(_compare(margin, spread), margin, spread, detail)

    return Claim(claim_id or _slug(text), text, rows, check)


def monotonic(rows_in_order: Sequence[str], metric: str = "nlp", claim_id: Optional[str] = None,
              text: Optional[str] = None, available_only: bool = True) -> Claim:
    """Quality improves along `rows_in_order` (e.g. more experts). With `available_only`, rows that were
    not run are skipped (at least two are needed); otherwise they make the claim inconclusive."""
    m, rows = METRICS[metric], tuple(rows_in_order)
    text = text or f"{m.label} improves along {' < '.join(rows)}"

    def check(ev: Evidence) -> Outcome:
        present = [r for r in rows if ev.has(r)]
        skipped = [r for r in rows if not ev.has(r)]
        if len(present) < 2:
            return Outcome(INCONCLUSIVE, math.nan, math.nan, f"rows missing: {', '.join(skipped)} (need two)")
        stats = {r: _stats(ev, r, metric) for r in present}
        sign = 1 if m.higher_is_better else -1
        pairs = list(itertools.pairwise(present))
        failing = [f"{x} → {y} ({num(sign * (stats[y].mean - stats[x].mean))})" for x, y in pairs
                   if not sign * (stats[y].mean - stats[x].mean) > 0]
        first, last = stats[present[0]], stats[present[-1]]
        margin, spread = sign * (last.mean - first.mean), _spread(first.std, last.std)
        detail = "; ".join(_describe(r, st) for r, st in stats.items())
        detail += f"; {present[-1]} vs {present[0]}: {_margin_text(margin, spread)}"
        detail += f"; failing pairs: {', '.join(failing)}" if failing else "; every consecutive pair improves"
        detail += f"; not run: {', '.join(skipped)}" if skipped else ""
        short = _few_seeds(stats)
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        status = _compare(margin, spread)
        if status == REPRODUCED and failing:
            status = INCONCLUSIVE
        return Outcome(status, margin, spread, detail)

    return Claim(claim_id or _slug(text), text, () if available_only else rows, check)


def matches(a: str, b: str, metric: str = "nlp", claim_id: Optional[str] = None,
            text: Optional[str] = None) -> Claim:
    """Rows `a` and `b` are equal on `metric` within the seed noise: |margin| <= 2 x spread."""
    m = METRICS[metric]
    text = text or f"{a} matches {b} ({m.label})"

    def check(ev: Evidence) -> Outcome:
        sa, sb = _stats(ev, a, metric), _stats(ev, b, metric)
        margin, spread = sa.mean - sb.mean, _spread(sa.std, sb.std)
        detail = f"{m.label}: {_describe(a, sa)} vs {_describe(b, sb)}; {_margin_text(margin, spread)}"
        short = _few_seeds({a: sa, b: sb})
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        return Outcome(REPRODUCED if abs(margin) <= 2 * spread else NOT_REPRODUCED, margin, spread, detail)

    return Claim(claim_id or _slug(text), text, (a, b), check)


def _divergence_claim(row: str, expect_diverged: bool, claim_id: Optional[str], text: str) -> Claim:
    def check(ev: Evidence) -> Outcome:
        n, k = int(ev.summary.at[row, "n_seeds"]), int(ev.summary.at[row, "n_diverged"])
        detail = f"{row} diverged in {k} of {n} seeds"
        first = ev.summary.at[row, "first_diverged_at"] if "first_diverged_at" in ev.summary else math.nan
        detail += f" (first at step {float(first):.0f})" if k and not math.isnan(first) else ""
        as_claimed = k if expect_diverged else n - k
        margin = as_claimed / n
        if n < MIN_SEEDS:
            return Outcome(INCONCLUSIVE, margin, math.nan, f"{detail}; more seeds needed (>= {MIN_SEEDS})")
        status = REPRODUCED if as_claimed == n else NOT_REPRODUCED if as_claimed == 0 else INCONCLUSIVE
        return Outcome(status, margin, math.nan, detail)

    return Claim(claim_id or _slug(text), text, (row,), check)


def diverges(row: str, claim_id: Optional[str] = None, text: Optional[str] = None) -> Claim:
    """The row diverged in every seed."""
    return _divergence_claim(row, True, claim_id, text or f"{row} diverges")


def stable(row: str, claim_id: Optional[str] = None, text: Optional[str] = None) -> Claim:
    """The row diverged in no seed."""
    return _divergence_claim(row, False, claim_id, text or f"{row} is stable")


def lower_variance(a: str, b: str, claim_id: Optional[str] = None, text: Optional[str] = None) -> Claim:
    """Row `a` has a lower seed-to-seed std of NLP than row `b`, by more than a factor of 2."""
    text = text or f"{a} has lower seed-to-seed variance than {b}"

    def check(ev: Evidence) -> Outcome:
        sa, sb = _stats(ev, a, "nlp"), _stats(ev, b, "nlp")
        margin, spread = sb.std - sa.std, sa.std
        ratio = sb.std / sa.std if sa.std > 0 else (math.inf if sb.std > 0 else math.nan)
        detail = f"NLP std: {a} {num(sa.std)} (n={sa.n}) vs {b} {num(sb.std)} (n={sb.n}); ratio {num(ratio)}"
        short = _few_seeds({a: sa, b: sb}, MIN_SEEDS_VARIANCE)
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        reverse = sa.std / sb.std if sb.std > 0 else (math.inf if sa.std > 0 else math.nan)
        status = REPRODUCED if ratio > 2 else NOT_REPRODUCED if reverse > 2 else INCONCLUSIVE
        return Outcome(status, margin, spread, detail)

    return Claim(claim_id or _slug(text), text, (a, b), check)


def speedup(baseline: str, candidates: Sequence[str], basis: str = "step", min_speedup: float = 1.0,
            claim_id: Optional[str] = None, text: Optional[str] = None) -> Claim:
    """The first of `candidates` that was run reaches the baseline's final mean NLP more than
    `min_speedup` times sooner (basis "step" or "time"); margin = speedup - min_speedup."""
    x = {"step": "step", "time": "wall_seconds"}[basis]
    candidates = tuple(candidates)
    text = text or f"{candidates[0]} {basis} speedup over {baseline} > {num(min_speedup)}"

    def check(ev: Evidence) -> Outcome:
        curves = ev.curves if ev.curves is not None else pd.DataFrame(columns=["row"])
        row = next((r for r in candidates if ev.has(r) and (curves["row"] == r).any()), None)
        if row is None or not (curves["row"] == baseline).any():
            return Outcome(INCONCLUSIVE, math.nan, math.nan, f"rows missing from curves: {baseline} or any of "
                           + ", ".join(candidates))
        sp = _speedup(mean_curve(curves, baseline), mean_curve(curves, row), x)
        per_seed = [s for s in _per_seed_speedups(curves, baseline, row, x) if not math.isnan(s)]
        spread = float(np.std(per_seed, ddof=1)) if len(per_seed) >= 2 else math.nan
        margin = sp.speedup - min_speedup
        using = "" if row == candidates[0] else f" (using {row}, the largest available)"
        unit = "step" if basis == "step" else "second"
        detail = (f"{row} reaches {baseline}'s final mean NLP {num(sp.target)} at {unit} {num(sp.row_x)} vs "
                  f"{num(sp.baseline_x)}: {sp.speedup:.2f}x{using}; per-seed speedups "
                  f"[{', '.join(f'{s:.2f}' for s in per_seed)}]; {_margin_text(margin, spread)}")
        seeds_run = min(curves.loc[curves["row"] == r, "seed"].nunique() for r in (baseline, row))
        if math.isnan(sp.speedup):
            # Never reaching the target is a result once enough seeds ran, not a reason for more seeds.
            detail = f"{row} never reaches {baseline}'s final mean NLP {num(sp.target)}{using}"
            status = NOT_REPRODUCED if seeds_run >= MIN_SEEDS else INCONCLUSIVE
            more = "" if seeds_run >= MIN_SEEDS else f"; more seeds needed (>= {MIN_SEEDS} paired)"
            return Outcome(status, margin, spread, f"{detail} ({seeds_run} seeds){more}")
        if len(per_seed) < MIN_SEEDS:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; more seeds needed (>= {MIN_SEEDS} paired)")
        return Outcome(_compare(margin, spread), margin, spread, detail)

    return Claim(claim_id or _slug(text), text, (baseline,), check)


# ------------------------------------------------------------------------------------ the paper's claims

TABLE1_SPARSE = ("Switch-Base cf1.0", "MoE-Base cf2.0", "Switch-Base cf2.0", "MoE-Base cf1.25", "Switch-Base cf1.25",
                 "MoE-Base cf1.0", "Switch-Base+ cf1.0")
SCALING_EXPERTS = ("Switch 2e", "Switch 4e", "Switch 8e", "Switch 16e", "Switch 32e", "Switch 64e", "Switch 128e")

# Rows whose runs set the default time-to-quality threshold (see default_threshold).
THRESHOLD_ROWS = {"table1": TABLE1_SPARSE}

def gain_kept(summary: pd.DataFrame, row: str, dense: str, metric: str = "nlp") -> float:
    """gain_retained of a distilled `row` of `summary`, its teacher being its `teacher_row`; NaN if missing."""
    col = METRICS[metric].mean
    teacher = summary.at[row, "teacher_row"] if "teacher_row" in summary and row in summary.index else None
    if not teacher or teacher not in summary.index or dense not in summary.index or col not in summary:
        return math.nan
    return gain_retained(*(float(summary.at[r, col]) for r in (row, dense, teacher)))


def gain_retained(student: float, dense: float, teacher: float) -> float:
    """Share of the teacher's gain over the dense model that the student keeps: (student - dense) /
    (teacher - dense), on a higher-is-better metric (paper Table 7: about 0.3). NaN when the teacher is not
    ahead of the dense model."""
    gain = teacher - dense
    return (student - dense) / gain if gain > 0 else math.nan


def distillation_keeps_gain(student: str, dense: str, teacher: str, teacher_claim: str,
                            claim_id: Optional[str] = None, text: Optional[str] = None, metric: str = "nlp") -> Claim:
    """The distilled `student` beats the `dense` model trained without the teacher (the beats rule on
    `metric`); the detail adds the share of the teacher's gain it keeps. Judged only when `teacher_claim`
    (the teacher beats the dense model) is reproduced; otherwise "teacher not ahead"."""
    text = text or f"{student} keeps part of {teacher}'s gain over {dense}"
    inner = beats(student, dense, metric=metric, text=text)

    def check(ev: Evidence) -> Outcome:
        out = inner.check(ev)
        ss, sd, st = (_stats(ev, r, metric) for r in (student, dense, teacher))
        share = gain_retained(ss.mean, sd.mean, st.mean)
        kept = "nan" if math.isnan(share) else f"{100 * share:.0f}%"
        return out._replace(detail=f"{out.detail}; share of the teacher's gain kept: {kept} "
                                   f"(teacher {_describe(teacher, st)})")

    return Claim(claim_id or _slug(text), text, (student, dense, teacher), check, teacher_claim=teacher_claim)


def pretrained_control(table: str, switch: str = "Switch-Base", dense: str = "T5-Base") -> Claim:
    """Fine-tuning tables: the pre-trained Switch model beats its FLOP-matched dense model on the
    pre-training task. Without that, whether the gain survives fine-tuning cannot be asked."""
    return beats(switch, dense, claim_id=f"{table}-control-{_slug(switch)}-pretrained-ahead",
                 text=f"Positive control: pre-trained {switch} beats {dense} (pre-training NLP)", control=True)


FINETUNE_TASKS = ("sentiment", "spam", "cloze_qa", "wordnet_qa")
# The dense row a distilled student is compared with (the "gain kept" baseline), per distillation table.
DISTILLATION_BASELINE = {"table6": "T5-Base", "table7": "T5-Base", "table8": "T5-Base / sentiment"}
TABLE7_EXPERTS = ("8e", "16e", "32e", "64e")
TABLE6_STUDENTS = ("Distillation", "+ Init. non-expert weights from teacher", "+ 0.75 mix of hard and soft loss")


def _table4_claims() -> list[Claim]:
    out = [pretrained_control("t4")]
    for task in ("sentiment", "cloze_qa"):
        row = lambda label, t=task: f"{label} / {t}"  # noqa: E731
        out += [
            beats(row("Switch-Base (d=0.1)"), row("T5-Base (d=0.1)"), "score", claim_id=f"t4-{task}-switch-beats-t5",
                  text=f"{task}: fine-tuned Switch-Base beats fine-tuned T5-Base (both d=0.1)"),
            beats(row("Switch-Base (d=0.1, ed=0.4)"), row("Switch-Base (d=0.1)"), "score",
                  claim_id=f"t4-{task}-expert-dropout-helps",
                  text=f"{task}: expert dropout 0.4 beats uniform dropout 0.1 for Switch-Base"),
            beats(row("Switch-Base (d=0.1)"), row("Switch-Base (d=0.3)"), "score",
                  claim_id=f"t4-{task}-dropout-0.3-hurts",
                  text=f"{task}: Switch-Base with dropout 0.1 beats dropout 0.3"),
        ]
    return out


def _table5_claims() -> list[Claim]:
    out = [pretrained_control("t5"), pretrained_control("t5", "Switch-Large", "T5-Large"),
           beats("T5-Large", "T5-Base", claim_id="t5-control-larger-dense", control=True,
                 text="Positive control: the larger dense T5-Large beats T5-Base (pre-training NLP)")]
    for task in FINETUNE_TASKS:
        for size in ("Base", "Large"):
            out.append(beats(f"Switch-{size} / {task}", f"T5-{size} / {task}", "score",
                             claim_id=f"t5-{task}-switch-{size.lower()}-beats-t5",
                             text=f"{task}: fine-tuned Switch-{size} beats the FLOP-matched T5-{size}"))
    return out


def _table6_claims() -> list[Claim]:
    teacher = beats("Switch-Base", "T5-Base", claim_id="t6-teacher-ahead",
                    text="The teacher Switch-Base beats T5-Base")
    return [
        teacher,
        *[distillation_keeps_gain(student, DISTILLATION_BASELINE["table6"], "Switch-Base", teacher.id,
                                  claim_id=f"t6-{_slug(student)}-keeps-gain",
                                  text=f"{student.lstrip('+ ')}: the student beats T5-Base")
          for student in TABLE6_STUDENTS],
        dataclasses.replace(beats(TABLE6_STUDENTS[2], "Initialization Baseline (no distillation)",
                                  claim_id="t6-distillation-beats-init-only",
                                  text="The gain comes from distillation: the 0.75-mix student beats the "
                                       "initialisation-only baseline"), teacher_claim=teacher.id),
        dataclasses.replace(beats(TABLE6_STUDENTS[1], TABLE6_STUDENTS[0], claim_id="t6-init-helps",
                                  text="Initialising the student from the teacher's non-expert weights helps "
                                       "distillation"), teacher_claim=teacher.id),
    ]


def _table7_claims() -> list[Claim]:
    out = []
    for e in TABLE7_EXPERTS:
        teacher = beats(f"Switch {e}", "T5-Base", claim_id=f"t7-teacher-{e}-ahead",
                        text=f"The teacher Switch {e} beats T5-Base")
        out += [teacher, distillation_keeps_gain(f"Distilled from {e}", DISTILLATION_BASELINE["table7"],
                                                 f"Switch {e}", teacher.id,
                                                 claim_id=f"t7-student-{e}-keeps-gain",
                                                 text=f"The student distilled from Switch {e} beats T5-Base")]
    return out


def _table8_claims() -> list[Claim]:
    teacher = beats("Switch-Base / sentiment", "T5-Base / sentiment", "score", claim_id="t8-teacher-ahead",
                    text="The fine-tuned teacher Switch-Base beats the fine-tuned T5-Base (sentiment)")
    return [pretrained_control("t8"), teacher,
            distillation_keeps_gain("Distilled T5-Base / sentiment", DISTILLATION_BASELINE["table8"],
                                    "Switch-Base / sentiment", teacher.id, claim_id="t8-distilled-keeps-gain",
                                    metric="score",
                                    text="The distilled T5-Base beats the plainly fine-tuned T5-Base (sentiment)")]


# Multilingual (Figures 7 and 8): per-language claims over the mC4 languages found in the corpus, and over all.
ML_DENSE, ML_SWITCH, ML_LARGE = "mT5-Base", "mSwitch-Base", "mT5-Large"
PAPER_FAST_FRACTION = 0.91  # languages with a step speedup of at least 4x (Figure 8)
NEVER_REACHED_LIMIT = 0.10  # a mean speedup over the reached languages only means something if few are missing


def _language_view(ev: Evidence, subset: str) -> Optional[pd.DataFrame]:
    """The per-language evaluations of the two rows, restricted to `subset` ("mc4": the languages standing in
    for mC4's, or mC4's own codes; "all"); None if there are none."""
    from switchrepro.experiments import multilingual as ML

    frame = ev.languages
    if frame is None or frame.empty:
        return None
    frame = frame[frame["row"].isin([ML_DENSE, ML_SWITCH])]
    if subset == "mc4":
        frame = frame[frame["lang"].isin(ML.mc4_language_set())]
    return frame if len(frame) else None


def _subset_label(subset: str) -> str:
    return "the mC4 languages" if subset == "mc4" else "all languages"


def improves_every_language(subset: str) -> Claim:
    """mSwitch's paired per-language gain: reproduced iff every language's 95% interval over paired seeds lies
    above zero; not reproduced iff any lies below; margin = the fraction improved in mean."""
    def check(ev: Evidence) -> Outcome:
        from switchrepro.experiments import multilingual as ML

        frame = _language_view(ev, subset)
        if frame is None:
            return Outcome(INCONCLUSIVE, math.nan, math.nan, "no per-language evaluations")
        gains = ML.paired_gains(frame, ML_DENSE, ML_SWITCH)
        n, seeds = len(gains), int(gains["n"].min()) if len(gains) else 0
        if n == 0:
            return Outcome(INCONCLUSIVE, math.nan, math.nan, "no language has paired seeds")
        improved, sig, worse = int((gains["gain"] > 0).sum()), int(gains["improved"].sum()), int(gains["worse"].sum())
        spread = float(gains["std"].median())
        detail = (f"{improved}/{n} languages improved in mean paired gain ({improved / n:.0%}); {sig} significantly "
                  f"(95% interval over {seeds} paired seeds above zero), {worse} significantly worse; mean gain "
                  f"{gains['gain'].mean():+.4f} nats, median per-language seed std {spread:.4f}")
        if seeds < MIN_SEEDS:
            return Outcome(INCONCLUSIVE, improved / n, spread, f"{detail}; more seeds needed (>= {MIN_SEEDS} paired)")
        status = NOT_REPRODUCED if worse else REPRODUCED if sig == n else INCONCLUSIVE
        return Outcome(status, improved / n, spread, detail)

    return Claim(f"ml-improves-every-language-{subset}",
                 f"mSwitch-Base beats mT5-Base on every language, {_subset_label(subset)} (paper: all 101)",
                 (ML_DENSE, ML_SWITCH), check)


def _language_summaries(ev: Evidence, subset: str) -> Optional[tuple[pd.DataFrame, dict, list[dict]]]:
    """The subset's per-language evaluations, multilingual.summarize_languages of them (seed-mean curves), and
    the same summary for each seed the two rows share; None if there are no per-language evaluations."""
    from switchrepro.experiments import multilingual as ML

    frame = _language_view(ev, subset)
    if frame is None:
        return None
    langs = sorted(set(frame["lang"]))

    def summary(part: pd.DataFrame) -> dict:
        return ML.summarize_languages(ML.paired_gains(part, ML_DENSE, ML_SWITCH),
                                      ML.language_speedups(part, ML_DENSE, ML_SWITCH), langs)

    seeds = sorted(set(frame[frame["row"] == ML_DENSE]["seed"]) & set(frame[frame["row"] == ML_SWITCH]["seed"]))
    return frame, summary(frame), [summary(frame[frame["seed"] == seed]) for seed in seeds]


def mean_language_speedup(subset: str) -> Claim:
    """Per-language step speedups from seed-mean curves, averaged over the languages mSwitch brings to mT5's
    final quality; margin = mean - 1, spread = std of the per-seed means. Reproduced by the usual rule only
    when fewer than NEVER_REACHED_LIMIT of the languages are never reached (a mean over the others would flatter
    Switch); not reproduced when more than half are never reached."""
    def check(ev: Evidence) -> Outcome:
        found = _language_summaries(ev, subset)
        if found is None:
            return Outcome(INCONCLUSIVE, math.nan, math.nan, "no per-language evaluations")
        _, summary, seeds = found
        per_seed = [s["mean_speedup"] for s in seeds if not math.isnan(s["mean_speedup"])]
        spread = float(np.std(per_seed, ddof=1)) if len(per_seed) >= 2 else math.nan
        mean, never, n = summary["mean_speedup"], summary["never_reached"], summary["languages"]
        margin = mean - 1.0
        detail = (f"mean step speedup {num(mean)}x over the {n - never} of {n} languages that reach mT5-Base's final "
                  f"NLP ({never} never do); per-seed means [{', '.join(f'{x:.2f}' for x in per_seed)}]; "
                  f"{_margin_text(margin, spread)}")
        if len(per_seed) < MIN_SEEDS:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; more seeds needed (>= {MIN_SEEDS} paired)")
        if never > n / 2:
            return Outcome(NOT_REPRODUCED, margin, spread, f"{detail}; most languages never reach it")
        status = _compare(margin, spread)
        if status == REPRODUCED and never > NEVER_REACHED_LIMIT * n:
            status, detail = INCONCLUSIVE, f"{detail}; over {NEVER_REACHED_LIMIT:.0%} of languages never reach it"
        return Outcome(status, margin, spread, detail)

    return Claim(f"ml-mean-speedup-{subset}",
                 f"mSwitch-Base's mean per-language step speedup over mT5-Base is > 1, {_subset_label(subset)} "
                 "(paper: 5x)", (ML_DENSE, ML_SWITCH), check)


def fast_language_fraction(subset: str) -> Claim:
    """The share of languages with a step speedup of at least 4x (a language never reached is not fast);
    margin = share - 0.91 (the paper's), spread = std of the per-seed shares. Reproduced iff
    margin >= -2 x spread, else not reproduced."""
    def check(ev: Evidence) -> Outcome:
        from switchrepro.experiments import multilingual as ML

        found = _language_summaries(ev, subset)
        if found is None:
            return Outcome(INCONCLUSIVE, math.nan, math.nan, "no per-language evaluations")
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
                  f"{num(ceiling)}x")
        if len(per_seed) < MIN_SEEDS:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; more seeds needed (>= {MIN_SEEDS} paired)")
        status = REPRODUCED if margin >= -2 * spread else NOT_REPRODUCED
        return Outcome(status, margin, spread, detail)

    return Claim(f"ml-fast-fraction-{subset}",
                 f"At least 91% of languages get a >= 4x step speedup, {_subset_label(subset)} (paper: 91%)",
                 (ML_DENSE, ML_SWITCH), check)


def _multilingual_claims() -> list[Claim]:
    return [
        beats(ML_LARGE, ML_DENSE, claim_id="ml-control-larger-dense", control=True,
              text="Positive control: the larger dense mT5-Large beats mT5-Base (all held-out rows pooled)"),
        beats(ML_SWITCH, ML_DENSE, claim_id="ml-switch-beats-dense",
              text="mSwitch-Base beats the FLOP-matched mT5-Base (all held-out rows pooled)"),
        *[claim for subset in ("mc4", "all") for claim in (improves_every_language(subset),
                                                           mean_language_speedup(subset),
                                                           fast_language_fraction(subset))],
    ]


# ------------------------------------------------------------------------- selective attention (Leviathan et al.)

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


def at_least(a: str, b: str, doubled_from: str, claim_id: str, text: str) -> Claim:
    """Row `a` is at least as good as row `b` (not worse by more than 2 x spread), where `b` has twice the
    heads of `doubled_from`: the claim means something only if doubling the heads pays here (`b` beats
    `doubled_from` by the beats rule), so without that it is inconclusive."""

    def check(ev: Evidence) -> Outcome:
        sa, sb, sc = (_stats(ev, r, "nlp") for r in (a, b, doubled_from))
        margin, spread = sa.mean - sb.mean, _spread(sa.std, sb.std)
        gain, gain_spread = sb.mean - sc.mean, _spread(sb.std, sc.std)
        detail = (f"NLP: {_describe(a, sa)} vs {_describe(b, sb)}; {_margin_text(margin, spread)}; doubling the heads "
                  f"({doubled_from} {num(sc.mean)} -> {b}) gains {num(gain)} (2×spread {num(2 * gain_spread)})")
        short = _few_seeds({a: sa, b: sb, doubled_from: sc})
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        if margin < 0 and -margin > 2 * spread:
            return Outcome(NOT_REPRODUCED, margin, spread, detail)
        if _compare(gain, gain_spread) != REPRODUCED:
            return Outcome(INCONCLUSIVE, margin, spread,
                           f"{detail}; doubling the heads does not pay beyond the seed noise here, so matching {b} "
                           "shows nothing")
        return Outcome(REPRODUCED, margin, spread, detail)

    return Claim(claim_id, text, (a, b, doubled_from), check)


def _pair_ratios(ev: Evidence, sel: str, std: str) -> pd.DataFrame:
    if ev.pruning is None or ev.pruning.empty:
        return memory_ratios(pd.DataFrame(columns=["row", "seed", "context", "budget", "nlp"]))
    r = memory_ratios(ev.pruning)
    return r[(r["selective"] == sel) & (r["standard"] == std)].sort_values("context")


def _ratio_text(r) -> str:
    seeds = ", ".join("not reached" if math.isnan(x) else f"{x:.1f}x" for x in r.seed_ratios)
    mean = "not reached" if math.isnan(r.ratio) else f"{r.ratio:.1f}x (budget {r.budget:.0f} of {r.context})"
    return f"context {r.context}: {r.selective} reaches {r.standard}'s unpruned NLP {num(r.target)} at {mean}; " \
           f"per seed {seeds}; {r.standard} itself as a sliding window: {r.window_ratio:.1f}x"


def _unreached_as_zero(ratios) -> list[float]:
    """Memory ratios with "not reached" (NaN) as 0: needing more than the whole context."""
    return [0.0 if math.isnan(x) else float(x) for x in ratios]


NO_PRUNING_RESULTS = "no context-pruning results for these rows"


def _ratio_at(ev: Evidence, sel: str, std: str, which: str):
    """(the pair's memory_ratios row at the "shortest" or "longest" context, its per-seed ratios with not
    reached as 0, their std, "" or why there are too few seeds); None without pruning results."""
    ratios = _pair_ratios(ev, sel, std)
    if ratios.empty:
        return None
    r = next((ratios.iloc[[0]] if which == "shortest" else ratios.iloc[[-1]]).itertuples())
    seeds = _unreached_as_zero(r.seed_ratios)
    spread = float(np.std(seeds, ddof=1)) if len(seeds) > 1 else math.nan
    few = f"more seeds needed (>= {MIN_SEEDS} per row)" if min(r.n_selective, r.n_standard) < MIN_SEEDS else ""
    return r, seeds, spread, few


def memory_smaller(sel: str, std: str, which: str, claim_id: str, text: str) -> Claim:
    """With context pruning, every seed of `sel` reaches the unpruned NLP of `std` (seed mean) with at most
    1 / MIN_MEMORY_RATIO of the context's keys, at the `which` ("shortest" or "longest") context measured."""

    def check(ev: Evidence) -> Outcome:
        found = _ratio_at(ev, sel, std, which)
        if found is None:
            return Outcome(INCONCLUSIVE, math.nan, math.nan, NO_PRUNING_RESULTS)
        r, seeds, spread, few = found
        detail = _ratio_text(r) + f"; goal: every seed >= {MIN_MEMORY_RATIO:g}x"
        if few:
            return Outcome(INCONCLUSIVE, r.ratio, spread, f"{detail}; {few}")
        status = (REPRODUCED if min(seeds) >= MIN_MEMORY_RATIO else NOT_REPRODUCED if max(seeds) < MIN_MEMORY_RATIO
                  else INCONCLUSIVE)
        return Outcome(status, r.ratio, spread, detail)

    return Claim(claim_id, text, (sel, std), check)


def memory_beats_window(sel: str, std: str, claim_id: str, text: str) -> Claim:
    """At the longest context, every seed of `sel` with its pruning reaches `std`'s unpruned NLP with fewer
    keys than `std` itself needs as a sliding window (seed mean): the saving is selective attention's, not
    a model that uses little context. Not reproduced iff no seed does better than the window."""

    def check(ev: Evidence) -> Outcome:
        found = _ratio_at(ev, sel, std, "longest")
        if found is None:
            return Outcome(INCONCLUSIVE, math.nan, math.nan, NO_PRUNING_RESULTS)
        r, seeds, spread, few = found
        ratio, window = _unreached_as_zero([r.ratio, r.window_ratio])
        margin = ratio - window
        detail = _ratio_text(r)
        if few:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {few}")
        status = (REPRODUCED if min(seeds) > window else NOT_REPRODUCED if max(seeds) <= window else INCONCLUSIVE)
        return Outcome(status, margin, spread, detail)

    return Claim(claim_id, text, (sel, std), check)


def memory_ratio_grows(sel: str, std: str, claim_id: str, text: str) -> Claim:
    """The memory ratio grows with the context (the paper: 16x, 25x, 47x): reproduced iff the seed-mean ratio
    rises from each context to the next and every seed's ratio at the longest context exceeds every seed's at
    the shortest; not reproduced iff the seed-mean ratio at the longest is at most that at the shortest."""

    def check(ev: Evidence) -> Outcome:
        ratios = _pair_ratios(ev, sel, std)
        if len(ratios) < 2:
            return Outcome(INCONCLUSIVE, math.nan, math.nan, "needs context-pruning results at 2 or more contexts")
        mean = _unreached_as_zero(ratios["ratio"])
        first, last = (_unreached_as_zero(ratios["seed_ratios"].iloc[i]) for i in (0, -1))
        detail = "; ".join(_ratio_text(r) for r in ratios.itertuples())
        margin = mean[-1] - mean[0]
        if min(ratios["n_selective"].min(), ratios["n_standard"].min()) < MIN_SEEDS:
            return Outcome(INCONCLUSIVE, margin, math.nan, f"{detail}; more seeds needed (>= {MIN_SEEDS} per row)")
        if margin <= 0:
            return Outcome(NOT_REPRODUCED, margin, math.nan, detail)
        rising = all(b > a for a, b in zip(mean, mean[1:], strict=False))
        return Outcome(REPRODUCED if rising and min(last) > max(first) else INCONCLUSIVE, margin, math.nan, detail)

    return Claim(claim_id, text, (sel, std), check)


def _selective_attention_claims() -> list[Claim]:
    return [
        beats("Standard H2", "Standard H1", claim_id="sa-control-more-heads", control=True,
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
    ]


def larger_dense_control(table: str) -> Claim:
    return beats("T5-Large", "T5-Base", claim_id=f"{'t1' if table == 'table1' else table}-control-larger-dense",
                 text="Positive control: the larger dense T5-Large beats T5-Base", control=True)


TABLE_CLAIMS: dict[str, list[Claim]] = {
    "table1": [
        larger_dense_control("table1"),
        beats("Switch-Base cf1.25", "T5-Base", claim_id="t1-switch-cf1.25-beats-dense",
              text="Switch-Base cf1.25 beats the FLOP-matched dense T5-Base"),
        beats("Switch-Base cf1.0", "T5-Base", claim_id="t1-switch-cf1.0-beats-dense",
              text="Switch-Base cf1.0 beats the FLOP-matched dense T5-Base"),
        beats("Switch-Base cf1.0", "MoE-Base cf1.0", claim_id="t1-switch-beats-moe-cf1.0",
              text="Switch beats top-2 MoE at capacity factor 1.0"),
        beats("Switch-Base cf1.25", "MoE-Base cf1.25", claim_id="t1-switch-beats-moe-cf1.25",
              text="Switch beats top-2 MoE at capacity factor 1.25"),
        beats("Switch-Base cf1.0", "MoE-Base cf1.0", metric="examples_per_sec", claim_id="t1-switch-faster-moe-cf1.0",
              text="Switch is faster than top-2 MoE at capacity factor 1.0"),
        best_of(TABLE1_SPARSE, "time_to_threshold", claim_id="t1-switch-cf1.0-fastest-to-threshold",
                text="Switch-Base cf1.0 reaches the quality threshold fastest among the sparse models"),
        beats("Switch-Base+ cf1.0", "MoE-Base cf2.0", claim_id="t1-switch-plus-beats-best-moe",
              text="Switch-Base+ (speed-matched to MoE) beats the best MoE (cf2.0)"),
    ],
    "table2": [
        diverges("bfloat16", claim_id="t2-bfloat16-diverges", text="A bfloat16 router diverges"),
        stable("selective", claim_id="t2-selective-stable", text="Selective precision (float32 router) is stable"),
        matches("selective", "float32", claim_id="t2-selective-matches-float32",
                text="Selective precision matches float32 quality"),
        beats("selective", "float32", metric="examples_per_sec", claim_id="t2-selective-faster-float32",
              text="Selective precision is faster than float32"),
    ],
    "table3": [
        beats("init 0.1", "init 1.0", claim_id="t3-small-init-beats",
              text="0.1x initialization gives better quality than 1.0x"),
        lower_variance("init 0.1", "init 1.0", claim_id="t3-small-init-lower-variance",
                       text="0.1x initialization lowers the seed-to-seed variance"),
    ],
    "table11": [
        beats("input_jitter", other, claim_id=f"t11-jitter-beats-{other.replace('_', '-')}",
              text=f"Input jitter beats {other.replace('_', ' ')}")
        for other in ("argmax", "sample_softmax", "input_dropout")
    ],
    "scaling": [
        larger_dense_control("scaling"),
        *[beats(row, "T5-Base", claim_id=f"scaling-{row.split()[-1]}-beats-dense",
                text=f"{row} beats the FLOP-matched dense T5-Base at equal steps")
          for row in SCALING_EXPERTS[:6]],
        monotonic(("T5-Base", *SCALING_EXPERTS), claim_id="scaling-more-experts-better",
                  text="More experts give better quality at equal steps"),
        speedup("T5-Base", ("Switch 64e", "Switch 128e", *reversed(SCALING_EXPERTS[:5])),
                claim_id="scaling-64e-step-speedup", text="Switch 64e step speedup over T5-Base > 1"),
        beats("Switch 64e", "T5-Large", claim_id="scaling-64e-beats-larger-dense",
              text="Switch 64e beats the larger dense T5-Large at equal steps (Figure 6 left)"),
    ],
    "table4": _table4_claims(),
    "table5": _table5_claims(),
    "table6": _table6_claims(),
    "table7": _table7_claims(),
    "table8": _table8_claims(),
    "multilingual": _multilingual_claims(),
    "selective_attention": _selective_attention_claims(),
}


# ------------------------------------------------------------------------------------------ evaluation


def _for_table(df: Optional[pd.DataFrame], table: str) -> Optional[pd.DataFrame]:
    if df is None or "table" not in df:
        return df
    return df[df["table"] == table]


def default_threshold(table: str, curves: Optional[pd.DataFrame]) -> Optional[float]:
    """The quality threshold that every run of the table's THRESHOLD_ROWS reaches: the lowest best
    evaluated NLP among those runs. The paper's -1.50 is meaningless at a small scale."""
    rows = THRESHOLD_ROWS.get(table)
    if not rows or curves is None or curves.empty:
        return None
    best = curves[curves["row"].isin(rows)].groupby(["row", "seed"])["nlp"].max().dropna()
    return float(best.min()) if len(best) else None


def table_summary(table: str, results: pd.DataFrame, curves: Optional[pd.DataFrame] = None,
                  threshold: Optional[float] = None) -> pd.DataFrame:
    """`summarize` for one table, with threshold columns at `threshold` or the table's default."""
    results, curves = _for_table(results, table), _for_table(curves, table)
    threshold = threshold if threshold is not None else default_threshold(table, curves)
    return summarize(results, curves, threshold)


def control_claims(table: str) -> list[Claim]:
    """The table's positive controls (claims with control=True), in TABLE_CLAIMS order."""
    return [c for c in TABLE_CLAIMS.get(table, []) if c.control]


def control_rows(table: str) -> list[str]:
    """The rows the table's positive controls need, in claim order, each once."""
    return list(dict.fromkeys(row for c in control_claims(table) for row in c.rows))


def evaluate_claims(table: str, results: pd.DataFrame, curves: Optional[pd.DataFrame] = None,
                    threshold: Optional[float] = None, claims: Optional[Sequence[Claim]] = None,
                    languages: Optional[pd.DataFrame] = None, pruning: Optional[pd.DataFrame] = None) -> list[Verdict]:
    """A verdict for each claim of `table` (TABLE_CLAIMS, or `claims`), from that table's runs (and, for the
    multilingual table, its per-language evaluations; for selective attention, its context pruning)."""
    summary = table_summary(table, results, curves, threshold)
    threshold = summary["threshold"].iloc[0] if "threshold" in summary and len(summary) else None
    evidence = Evidence(summary, _for_table(curves, table), threshold, _for_table(languages, table),
                        _for_table(pruning, table))
    claims = claims if claims is not None else TABLE_CLAIMS[table]
    return apply_controls(claims, apply_teachers(claims, [claim.evaluate(evidence) for claim in claims]))


def apply_teachers(claims: Sequence[Claim], verdicts: Sequence[Verdict]) -> list[Verdict]:
    """A distillation verdict becomes TEACHER_NOT_AHEAD unless its teacher claim is reproduced: a student
    cannot keep a gain its teacher does not have, so the verdict says nothing about distillation."""
    by_id = {v.claim_id: v for v in verdicts}
    out = []
    for c, v in zip(claims, verdicts, strict=True):
        teacher = by_id.get(c.teacher_claim) if c.teacher_claim else None
        if c.teacher_claim and (teacher is None or teacher.status != REPRODUCED):
            why = f"teacher claim {c.teacher_claim} is {teacher.status if teacher else 'missing'}"
            v = dataclasses.replace(v, status=TEACHER_NOT_AHEAD,
                                    detail=f"{why}; as judged alone: {v.status}; {v.detail}")
        out.append(v)
    return out


def apply_controls(claims: Sequence[Claim], verdicts: Sequence[Verdict]) -> list[Verdict]:
    """Every non-control verdict becomes REGIME_INVALID when a control claim is not reproduced."""
    failed = [v for c, v in zip(claims, verdicts, strict=True) if c.control and v.status != REPRODUCED]
    if not failed:
        return list(verdicts)
    why = "; ".join(f"positive control {v.claim_id} is {v.status}" for v in failed)
    return [v if c.control else dataclasses.replace(v, status=REGIME_INVALID,
                                                    detail=f"{why}; as judged alone: {v.status}; {v.detail}")
            for c, v in zip(claims, verdicts, strict=True)]


def count_statuses(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """{status: count} over STATUSES, in that order."""
    return {s: sum(v.status == s for v in verdicts) for s in STATUSES}
