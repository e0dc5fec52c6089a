"""The verdict rules: how a claim of the paper is judged on our runs. Generic: each table's claims are
built from these rules in its own module under `switchrepro.experiments.tables`.

A claim is judged on `Evidence`: the row summary of `switchrepro.experiments.stats.summarize` (mean and
sample std over the seeds that did not diverge), the curves, and for some tables their extra frames
(per-language evaluations, context pruning). Each `Claim` turns that evidence into a `Verdict`.

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

from switchrepro.experiments import stats

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, REGIME_INVALID, TEACHER_NOT_AHEAD = STATUSES = (
    "reproduced", "not reproduced", "inconclusive", "regime invalid", "teacher not ahead")
MIN_SEEDS = 2
MIN_SEEDS_VARIANCE = 3

# The generic rule, for the report and the CLI.
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
    "A claim whose rows were not run is inconclusive."
)

# The rule for distillation claims; the registry (`switchrepro.experiments.tables.verdict_rule`) puts each
# table's own rules (positive controls, per-language and pruning claims) between the two.
TEACHER_RULE = (
    "**Teacher not ahead.** A distillation claim is judged only when its teacher beats the dense model; "
    "otherwise it reads **teacher not ahead**, not a failed distillation."
)


def margin_by_step(curves: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """How `a`'s lead over `b` grows with training: one row per step both were evaluated at, with each
    row's mean and std NLP over seeds, the margin (a - b), twice the larger std, and the verdict the beats
    rule would give at that step: the evidence for choosing a regime's length on the control alone."""
    ma, mb = stats.mean_curve(curves, a), stats.mean_curve(curves, b)
    m = ma.merge(mb, on="step", suffixes=("_a", "_b"))
    out = pd.DataFrame({"step": m["step"], f"{a} NLP": m["nlp_a"], f"{a} std": m["nlp_std_a"],
                        f"{b} NLP": m["nlp_b"], f"{b} std": m["nlp_std_b"], "seeds": m[["n_a", "n_b"]].min(axis=1)})
    out["margin"] = m["nlp_a"] - m["nlp_b"]
    spread = m[["nlp_std_a", "nlp_std_b"]].max(axis=1, skipna=False)
    out["2x spread"] = 2 * spread
    out["verdict"] = [INCONCLUSIVE if n < MIN_SEEDS else compare(mg, sp)
                      for mg, sp, n in zip(out["margin"], spread, out["seeds"], strict=True)]
    return out


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


def row_stats(ev: Evidence, row: str, metric: str) -> Stats:
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


def describe(row: str, st: Stats) -> str:
    return f"{row} {num(st.mean)} ± {num(st.std, like=st.mean)} (n={st.n})"


def spread_of(*stds: float) -> float:
    return math.nan if any(math.isnan(s) for s in stds) else max(stds)


def compare(margin: float, spread: float) -> str:
    if margin > 0 and margin > 2 * spread:
        return REPRODUCED
    if margin < 0 and -margin > 2 * spread:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def few_seeds(named: dict[str, Stats], need: int = MIN_SEEDS) -> str:
    """'' if every row has enough seeds, else the reason the verdict must be inconclusive."""
    short = [f"{r} has {st.n}" for r, st in named.items() if st.n < need]
    return f"more seeds needed (>= {need} usable per row; {', '.join(short)})" if short else ""


def margin_text(margin: float, spread: float) -> str:
    return f"margin {num(margin)}, 2×spread {num(2 * spread)}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def beats(a: str, b: str, metric: str = "nlp", claim_id: Optional[str] = None, control: bool = False,
          text: Optional[str] = None) -> Claim:
    """Row `a` is better than row `b` on `metric` (a key of METRICS)."""
    m = METRICS[metric]
    text = text or f"{a} beats {b} ({m.label})"

    def check(ev: Evidence) -> Outcome:
        sa, sb = row_stats(ev, a, metric), row_stats(ev, b, metric)
        sign = 1 if m.higher_is_better else -1
        margin, spread = sign * (sa.mean - sb.mean), spread_of(sa.std, sb.std)
        detail = f"{m.label}: {describe(a, sa)} vs {describe(b, sb)}; {margin_text(margin, spread)}"
        detail += _divergence_note(ev, (a, b)) if metric == "nlp" else ""
        short = few_seeds({a: sa, b: sb})
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        return Outcome(compare(margin, spread), margin, spread, detail)

    return Claim(claim_id or slug(text), text, (a, b), check, control=control)


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
        by_row = {r: row_stats(ev, r, metric) for r in rows}
        threshold = f"threshold NLP {num(ev.threshold)}; " if ev.threshold is not None else ""
        detail = threshold + "; ".join(describe(r, st) for r, st in by_row.items())
        sign = 1 if m.higher_is_better else -1
        rivals = {r: st for r, st in by_row.items() if r != winner and not math.isnan(st.mean)}
        best = by_row[winner]
        if math.isnan(best.mean):
            status = NOT_REPRODUCED if rivals else INCONCLUSIVE
            return Outcome(status, math.nan, math.nan, f"{detail}; {winner} has no value (e.g. never reached)")
        if not rivals:  # only the winner has a value, e.g. the only row to reach the threshold
            short = few_seeds({winner: best})
            return Outcome(INCONCLUSIVE if short else REPRODUCED, math.inf, best.std,
                           f"{detail}; only {winner} has a value" + (f"; {short}" if short else ""))
        rival = max(rivals, key=lambda r: sign * rivals[r].mean)
        margin, spread = sign * (best.mean - rivals[rival].mean), spread_of(best.std, rivals[rival].std)
        detail += f"; vs runner-up {rival}: {margin_text(margin, spread)}"
        short = few_seeds({winner: best, rival: rivals[rival]})
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        return Outcome(compare(margin, spread), margin, spread, detail)

    return Claim(claim_id or slug(text), text, rows, check)


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
        by_row = {r: row_stats(ev, r, metric) for r in present}
        sign = 1 if m.higher_is_better else -1
        pairs = list(itertools.pairwise(present))
        failing = [f"{x} → {y} ({num(sign * (by_row[y].mean - by_row[x].mean))})" for x, y in pairs
                   if not sign * (by_row[y].mean - by_row[x].mean) > 0]
        first, last = by_row[present[0]], by_row[present[-1]]
        margin, spread = sign * (last.mean - first.mean), spread_of(first.std, last.std)
        detail = "; ".join(describe(r, st) for r, st in by_row.items())
        detail += f"; {present[-1]} vs {present[0]}: {margin_text(margin, spread)}"
        detail += f"; failing pairs: {', '.join(failing)}" if failing else "; every consecutive pair improves"
        detail += f"; not run: {', '.join(skipped)}" if skipped else ""
        short = few_seeds(by_row)
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        status = compare(margin, spread)
        if status == REPRODUCED and failing:
            status = INCONCLUSIVE
        return Outcome(status, margin, spread, detail)

    return Claim(claim_id or slug(text), text, () if available_only else rows, check)


def matches(a: str, b: str, metric: str = "nlp", claim_id: Optional[str] = None,
            text: Optional[str] = None) -> Claim:
    """Rows `a` and `b` are equal on `metric` within the seed noise: |margin| <= 2 x spread."""
    m = METRICS[metric]
    text = text or f"{a} matches {b} ({m.label})"

    def check(ev: Evidence) -> Outcome:
        sa, sb = row_stats(ev, a, metric), row_stats(ev, b, metric)
        margin, spread = sa.mean - sb.mean, spread_of(sa.std, sb.std)
        detail = f"{m.label}: {describe(a, sa)} vs {describe(b, sb)}; {margin_text(margin, spread)}"
        short = few_seeds({a: sa, b: sb})
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        return Outcome(REPRODUCED if abs(margin) <= 2 * spread else NOT_REPRODUCED, margin, spread, detail)

    return Claim(claim_id or slug(text), text, (a, b), check)


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

    return Claim(claim_id or slug(text), text, (row,), check)


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
        sa, sb = row_stats(ev, a, "nlp"), row_stats(ev, b, "nlp")
        margin, spread = sb.std - sa.std, sa.std
        ratio = sb.std / sa.std if sa.std > 0 else (math.inf if sb.std > 0 else math.nan)
        detail = f"NLP std: {a} {num(sa.std)} (n={sa.n}) vs {b} {num(sb.std)} (n={sb.n}); ratio {num(ratio)}"
        short = few_seeds({a: sa, b: sb}, MIN_SEEDS_VARIANCE)
        if short:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; {short}")
        reverse = sa.std / sb.std if sb.std > 0 else (math.inf if sa.std > 0 else math.nan)
        status = REPRODUCED if ratio > 2 else NOT_REPRODUCED if reverse > 2 else INCONCLUSIVE
        return Outcome(status, margin, spread, detail)

    return Claim(claim_id or slug(text), text, (a, b), check)


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
        sp = stats.curve_speedup(stats.mean_curve(curves, baseline), stats.mean_curve(curves, row), x)
        per_seed = [s for s in stats.per_seed_speedups(curves, baseline, row, x) if not math.isnan(s)]
        spread = float(np.std(per_seed, ddof=1)) if len(per_seed) >= 2 else math.nan
        margin = sp.speedup - min_speedup
        using = "" if row == candidates[0] else f" (using {row}, the largest available)"
        unit = "step" if basis == "step" else "second"
        detail = (f"{row} reaches {baseline}'s final mean NLP {num(sp.target)} at {unit} {num(sp.row_x)} vs "
                  f"{num(sp.baseline_x)}: {sp.speedup:.2f}x{using}; per-seed speedups "
                  f"[{', '.join(f'{s:.2f}' for s in per_seed)}]; {margin_text(margin, spread)}")
        seeds_run = min(curves.loc[curves["row"] == r, "seed"].nunique() for r in (baseline, row))
        if math.isnan(sp.speedup):
            # Never reaching the target is a result once enough seeds ran, not a reason for more seeds.
            detail = f"{row} never reaches {baseline}'s final mean NLP {num(sp.target)}{using}"
            status = NOT_REPRODUCED if seeds_run >= MIN_SEEDS else INCONCLUSIVE
            more = "" if seeds_run >= MIN_SEEDS else f"; more seeds needed (>= {MIN_SEEDS} paired)"
            return Outcome(status, margin, spread, f"{detail} ({seeds_run} seeds){more}")
        if len(per_seed) < MIN_SEEDS:
            return Outcome(INCONCLUSIVE, margin, spread, f"{detail}; more seeds needed (>= {MIN_SEEDS} paired)")
        return Outcome(compare(margin, spread), margin, spread, detail)

    return Claim(claim_id or slug(text), text, (baseline,), check)


# ------------------------------------------------------------------------------------ the paper's claims



def gain_kept(summary: pd.DataFrame, row: str, dense: str, metric: str = "nlp") -> float:
    """stats.gain_retained of a distilled `row` of `summary`, its teacher being its `teacher_row`; NaN if
    missing."""
    col = METRICS[metric].mean
    teacher = summary.at[row, "teacher_row"] if "teacher_row" in summary and row in summary.index else None
    if not teacher or teacher not in summary.index or dense not in summary.index or col not in summary:
        return math.nan
    return stats.gain_retained(*(float(summary.at[r, col]) for r in (row, dense, teacher)))


def distillation_keeps_gain(student: str, dense: str, teacher: str, teacher_claim: str,
                            claim_id: Optional[str] = None, text: Optional[str] = None, metric: str = "nlp") -> Claim:
    """The distilled `student` beats the `dense` model trained without the teacher (the beats rule on
    `metric`); the detail adds the share of the teacher's gain it keeps. Judged only when `teacher_claim`
    (the teacher beats the dense model) is reproduced; otherwise "teacher not ahead"."""
    text = text or f"{student} keeps part of {teacher}'s gain over {dense}"
    inner = beats(student, dense, metric=metric, text=text)

    def check(ev: Evidence) -> Outcome:
        out = inner.check(ev)
        ss, sd, st = (row_stats(ev, r, metric) for r in (student, dense, teacher))
        share = stats.gain_retained(ss.mean, sd.mean, st.mean)
        kept = "nan" if math.isnan(share) else f"{100 * share:.0f}%"
        return out._replace(detail=f"{out.detail}; share of the teacher's gain kept: {kept} "
                                   f"(teacher {describe(teacher, st)})")

    return Claim(claim_id or slug(text), text, (student, dense, teacher), check, teacher_claim=teacher_claim)


def pretrained_control(prefix: str, switch: str = "Switch-Base", dense: str = "T5-Base") -> Claim:
    """Fine-tuning tables: the pre-trained Switch model beats its FLOP-matched dense model on the
    pre-training task. Without that, whether the gain survives fine-tuning cannot be asked."""
    return beats(switch, dense, claim_id=f"{prefix}-control-{slug(switch)}-pretrained-ahead",
                 text=f"Positive control: pre-trained {switch} beats {dense} (pre-training NLP)", control=True)


def larger_dense_control(prefix: str, large: str = "T5-Large", base: str = "T5-Base") -> Claim:
    """Pre-training tables: the larger dense model beats the base one. Without that, the regime cannot show
    what parameters buy."""
    return beats(large, base, claim_id=f"{prefix}-control-larger-dense",
                 text=f"Positive control: the larger dense {large} beats {base}", control=True)


# ------------------------------------------------------------------------------------------ evaluation


def control_claims(claims: Sequence[Claim]) -> list[Claim]:
    """The positive controls among `claims` (control=True), in order."""
    return [c for c in claims if c.control]


def control_rows(claims: Sequence[Claim]) -> list[str]:
    """The rows the positive controls among `claims` need, in claim order, each once."""
    return list(dict.fromkeys(row for c in control_claims(claims) for row in c.rows))


def evaluate_claims(table: str, claims: Sequence[Claim], results: pd.DataFrame,
                    curves: Optional[pd.DataFrame] = None, threshold: Optional[float] = None,
                    languages: Optional[pd.DataFrame] = None, pruning: Optional[pd.DataFrame] = None,
                    threshold_rows: Sequence[str] = ()) -> list[Verdict]:
    """A verdict for each of `claims`, from the lines of `table` in the frames (and its per-language
    evaluations or context pruning, where the table has them). Without `threshold`, the threshold columns
    come from `threshold_rows` (stats.default_threshold)."""
    summary = stats.table_summary(table, results, curves, threshold, threshold_rows)
    threshold = summary["threshold"].iloc[0] if "threshold" in summary and len(summary) else None
    evidence = Evidence(summary, stats.for_table(curves, table), threshold, stats.for_table(languages, table),
                        stats.for_table(pruning, table))
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
