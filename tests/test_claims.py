"""Claim verdicts, threshold crossings and the paper's CSVs, on literal data (pure pandas, no training)."""

import math

import numpy as np
import pandas as pd
import pytest

from switchrepro.experiments import claims as C
from switchrepro.experiments import stats as S
from switchrepro.experiments import tables as T
from switchrepro.experiments.paper import load_paper_table
from switchrepro.experiments.tables import scaling as SC

TABLE_CLAIMS = {name: T.get(name).claims() for name in T.NAMES}

NAN = math.nan


def results(rows: dict, speeds: dict | None = None) -> pd.DataFrame:
    """One run per value; a None value is a run that diverged (at step 50)."""
    records = []
    for row, values in rows.items():
        for seed, value in enumerate(values):
            records.append({"table": "t", "scale": "smoke", "row": row, "seed": seed,
                            "final_nlp": NAN if value is None else value,
                            "diverged_at": 50.0 if value is None else NAN,
                            "examples_per_sec": (speeds or {}).get(row, [100.0] * len(values))[seed]})
    return pd.DataFrame(records)


def curves(runs: dict) -> pd.DataFrame:
    """{(row, seed): [(step, wall_seconds, nlp), ...]} -> the long curves frame."""
    return pd.DataFrame([{"table": "t", "row": row, "seed": seed, "step": st, "wall_seconds": w, "nlp": n}
                         for (row, seed), points in runs.items() for st, w, n in points])


def verdict(claim: C.Claim, res: pd.DataFrame, cur: pd.DataFrame | None = None, threshold=None) -> C.Verdict:
    (v,) = C.evaluate_claims("t", [claim], res, cur, threshold=threshold)
    return v


# ----------------------------------------------------------------------------------------- summary


def test_summarize_excludes_diverged_seeds_and_uses_sample_std():
    s = S.summarize(results({"a": [-1.0, -1.2, None], "b": [-2.0]}))
    assert list(s.index) == ["a", "b"]
    assert s.at["a", "n_seeds"] == 3 and s.at["a", "n_diverged"] == 1 and s.at["a", "n_ok"] == 2
    assert s.at["a", "nlp_mean"] == pytest.approx(-1.1)
    assert s.at["a", "nlp_std"] == pytest.approx(0.1414213562)  # ddof=1 over -1.0, -1.2
    assert math.isnan(s.at["b", "nlp_std"])  # one seed: no spread


def test_diverged_at_alone_marks_a_run_diverged():
    res = pd.DataFrame({"row": ["a", "a"], "seed": [0, 1], "final_nlp": [-1.0, -9.0], "diverged_at": [NAN, 120.0]})
    s = S.summarize(res)
    assert s.at["a", "n_diverged"] == 1 and s.at["a", "nlp_mean"] == -1.0


# ------------------------------------------------------------------------------------------- beats


def test_beats_reproduced_when_margin_exceeds_twice_the_spread():
    v = verdict(C.beats("A", "B"), results({"A": [-1.0, -1.01, -0.99], "B": [-1.2, -1.21, -1.19]}))
    assert v.status == "reproduced"
    assert v.margin == pytest.approx(0.2) and v.spread == pytest.approx(0.01)
    assert "-1.0000" in v.detail and "-1.2000" in v.detail


def test_beats_not_reproduced_when_reversed():
    v = verdict(C.beats("A", "B"), results({"A": [-1.2, -1.21, -1.19], "B": [-1.0, -1.01, -0.99]}))
    assert v.status == "not reproduced" and v.margin == pytest.approx(-0.2)


def test_beats_inconclusive_when_seeds_overlap():
    v = verdict(C.beats("A", "B"), results({"A": [-1.0, -1.1, -0.9], "B": [-1.05, -1.0, -1.1]}))
    assert v.status == "inconclusive"
    assert v.margin == pytest.approx(0.05) and v.spread == pytest.approx(0.1)


def test_beats_single_seed_is_inconclusive():
    v = verdict(C.beats("A", "B"), results({"A": [-1.0], "B": [-1.2, -1.21]}))
    assert v.status == "inconclusive" and "more seeds needed" in v.detail
    assert v.margin == pytest.approx(0.205)  # -1.0 - mean(-1.2, -1.21)


def test_beats_on_speed():
    res = results({"A": [-1, -1], "B": [-1, -1]}, speeds={"A": [200.0, 202.0], "B": [100.0, 102.0]})
    v = verdict(C.beats("A", "B", metric="examples_per_sec"), res)
    assert v.status == "reproduced" and v.margin == pytest.approx(100.0)


def test_rows_missing_is_inconclusive():
    res = results({"argmax": [-1.5, -1.5], "input_jitter": [-1.4, -1.41]})
    res["table"] = "table11"
    verdicts = {v.claim_id: v for v in T.get("table11").evaluate(res, None)}
    assert verdicts["t11-jitter-beats-argmax"].status == "reproduced"
    missing = verdicts["t11-jitter-beats-sample-softmax"]
    assert missing.status == "inconclusive" and missing.detail == "rows missing: sample_softmax"


# ------------------------------------------------------------------------------ monotonic, matches


def test_monotonic_names_the_failing_pair():
    res = results({"1e": [-2.0, -2.01], "2e": [-1.9, -1.91], "4e": [-1.95, -1.96], "8e": [-1.5, -1.51]})
    v = verdict(C.monotonic(["1e", "2e", "4e", "8e"]), res)
    assert v.status == "inconclusive"
    assert "failing pairs: 2e → 4e (-0.0500)" in v.detail
    assert v.margin == pytest.approx(0.5)


def test_monotonic_reproduced_skips_rows_not_run_and_reverse_is_not_reproduced():
    res = results({"1e": [-2.0, -2.01], "2e": [-1.9, -1.91], "8e": [-1.5, -1.51]})
    v = verdict(C.monotonic(["1e", "2e", "4e", "8e"]), res)
    assert v.status == "reproduced" and "not run: 4e" in v.detail
    assert verdict(C.monotonic(["8e", "2e", "1e"]), res).status == "not reproduced"
    assert verdict(C.monotonic(["1e", "16e", "32e"]), res).status == "inconclusive"  # one row present


def test_matches_within_and_outside_twice_the_spread():
    res = results({"sel": [-1.70, -1.72], "f32": [-1.71, -1.73], "far": [-2.0, -2.02]})
    within = verdict(C.matches("sel", "f32"), res)
    assert within.status == "reproduced" and within.margin == pytest.approx(0.01)
    assert verdict(C.matches("sel", "far"), res).status == "not reproduced"


# -------------------------------------------------------------------------- divergence, variance


def test_diverges_and_stable():
    res = results({"bf16": [None, None], "sel": [-1.7, -1.71], "mixed": [None, -1.7]})
    assert verdict(C.diverges("bf16"), res).status == "reproduced"
    assert "diverged in 2 of 2 seeds (first at step 50)" in verdict(C.diverges("bf16"), res).detail
    assert verdict(C.diverges("sel"), res).status == "not reproduced"
    assert verdict(C.diverges("mixed"), res).status == "inconclusive"
    assert verdict(C.stable("sel"), res).status == "reproduced"
    assert verdict(C.stable("bf16"), res).status == "not reproduced"
    assert verdict(C.stable("sel"), results({"sel": [-1.7]})).status == "inconclusive"  # one seed


def test_lower_variance():
    res = results({"small": [-1.0, -1.01, -0.99], "big": [-1.0, -1.05, -0.95], "mid": [-1.0, -1.015, -0.985],
                   "two": [-1.0, -1.5]})
    v = verdict(C.lower_variance("small", "big"), res)
    assert v.status == "reproduced"
    assert v.margin == pytest.approx(0.04) and v.spread == pytest.approx(0.01) and "ratio 5.0000" in v.detail
    assert verdict(C.lower_variance("small", "mid"), res).status == "inconclusive"  # ratio 1.5
    assert verdict(C.lower_variance("big", "small"), res).status == "not reproduced"
    assert verdict(C.lower_variance("small", "two"), res).status == "inconclusive"  # needs 3 seeds


# ------------------------------------------------------------------------------ threshold, speedup


CURVE = [(100, 10.0, -3.0), (200, 30.0, -2.0), (300, 70.0, -1.0)]


def test_steps_and_time_to_threshold_interpolate_linearly():
    cur = curves({("a", 0): CURVE})
    assert S.steps_to_threshold(cur, -1.5)["steps_to_threshold"].tolist() == [250.0]
    assert S.time_to_threshold(cur, -1.5)["time_to_threshold"].tolist() == [50.0]  # 30 + 0.5 * 40
    assert S.steps_to_threshold(cur, -2.75)["steps_to_threshold"].tolist() == [125.0]
    assert S.steps_to_threshold(cur, -3.5)["steps_to_threshold"].tolist() == [100.0]  # first evaluation
    assert math.isnan(S.steps_to_threshold(cur, -0.5)["steps_to_threshold"].iloc[0])  # never reached


def test_summary_threshold_columns_count_seeds_that_reached():
    cur = curves({("a", 0): CURVE, ("a", 1): [(100, 10.0, -3.0), (200, 30.0, -1.6), (300, 70.0, -1.4)],
                  ("b", 0): [(100, 10.0, -3.0), (300, 70.0, -2.0)]})
    s = S.summarize(results({"a": [-1.0, -1.4], "b": [-2.0]}), cur, threshold=-1.5)
    assert s.at["a", "n_reached"] == 2 and s.at["b", "n_reached"] == 0
    assert s.at["a", "steps_to_threshold_mean"] == pytest.approx((250.0 + 250.0) / 2)
    assert s.at["a", "time_to_threshold_mean"] == pytest.approx((50.0 + 50.0) / 2)


def test_step_speedup_matches_footnote_9():
    base = [(100, 1.0, -4.0), (200, 2.0, -3.0), (300, 3.0, -2.0), (400, 4.0, -1.5)]
    fast = [(100, 1.0, -3.0), (200, 2.0, -2.0), (300, 3.0, -1.0), (400, 4.0, -0.8)]
    slow = [(100, 1.0, -5.0), (400, 4.0, -1.6)]
    cur = curves({("base", 0): base, ("fast", 0): fast, ("slow", 0): slow})
    # base reaches its final -1.5 at step 400; fast reaches -1.5 at 200 + 0.5 * 100 = 250.
    assert S.step_speedup(cur, "base", "fast") == pytest.approx(400 / 250)
    assert S.time_speedup(cur, "base", "fast") == pytest.approx(4.0 / 2.5)
    assert math.isnan(S.step_speedup(cur, "base", "slow"))


def test_step_speedup_uses_the_seed_mean_curves():
    cur = curves({("base", 0): [(100, 1.0, -3.0), (200, 2.0, -2.0)], ("base", 1): [(100, 1.0, -3.2), (200, 2.0, -2.2)],
                  ("row", 0): [(100, 1.0, -2.0), (200, 2.0, -1.0)], ("row", 1): [(100, 1.0, -2.2), (200, 2.0, -1.2)]})
    # mean base ends at -2.1 (step 200); mean row is -2.1 at step 100: speedup 2.
    assert S.step_speedup(cur, "base", "row") == pytest.approx(2.0)
    res = results({"base": [-2.0, -2.2], "row": [-1.0, -1.2]})
    v = verdict(C.speedup("base", ["big", "row"]), res, cur)
    assert v.status == "reproduced" and v.margin == pytest.approx(1.0)
    assert "using row, the largest available" in v.detail


def test_speedup_never_reached_is_a_result_with_enough_seeds():
    base = [(100, 1.0, -3.0), (200, 2.0, -2.0)]
    behind = [(100, 1.0, -3.5), (200, 2.0, -2.5)]  # never reaches the base's final -2.0
    two = curves({("base", 0): base, ("base", 1): base, ("row", 0): behind, ("row", 1): behind})
    v = verdict(C.speedup("base", ["row"]), results({"base": [-2.0, -2.0], "row": [-2.5, -2.5]}), two)
    assert v.status == "not reproduced"
    assert "never reaches base's final mean NLP -2.0000 (2 seeds)" in v.detail and "more seeds" not in v.detail
    one = curves({("base", 0): base, ("row", 0): behind})
    v = verdict(C.speedup("base", ["row"]), results({"base": [-2.0], "row": [-2.5]}), one)
    assert v.status == "inconclusive" and "more seeds needed" in v.detail


def test_best_of_time_to_threshold():
    fast = [(100, 10.0, -3.0), (200, 20.0, -1.0)]
    slow = [(100, 30.0, -3.0), (200, 60.0, -1.0)]
    never = [(100, 10.0, -3.0), (200, 20.0, -2.5)]
    cur = curves({("w", 0): fast, ("w", 1): fast, ("r", 0): slow, ("r", 1): slow, ("n", 0): never, ("n", 1): never})
    res = results({"w": [-1.0, -1.0], "r": [-1.0, -1.0], "n": [-2.5, -2.5]})
    v = verdict(C.best_of(["w", "r", "n"], "time_to_threshold"), res, cur, threshold=-2.0)
    # threshold -2.0 is halfway between the evaluations: w at 15 s, r at 45 s, n never.
    assert v.status == "reproduced" and v.margin == pytest.approx(30.0) and v.spread == 0.0
    assert verdict(C.best_of(["r", "w"], "time_to_threshold"), res, cur, threshold=-2.0).status == "not reproduced"
    assert verdict(C.best_of(["n", "w"], "time_to_threshold"), res, cur, threshold=-2.0).status == "not reproduced"
    assert verdict(C.best_of(["w", "r"], "time_to_threshold"), res, None).status == "inconclusive"  # no curves


def test_default_threshold_is_reached_by_every_sparse_run():
    cur = curves({("Switch-Base cf1.0", 0): CURVE, ("MoE-Base cf1.0", 0): [(100, 1.0, -3.0), (200, 2.0, -1.8)],
                  ("T5-Base", 0): [(100, 1.0, -3.0), (200, 2.0, -2.5)]})
    assert S.default_threshold(cur, T.get("table1").threshold_rows) == -1.8
    assert S.default_threshold(cur, T.get("table2").threshold_rows) is None


def test_table_claims_cover_the_five_tables_with_unique_ids():
    assert set(TABLE_CLAIMS) == set(T.NAMES)
    ids = [c.id for claims in TABLE_CLAIMS.values() for c in claims]
    assert len(ids) == len(set(ids))


def test_every_table_claim_runs_on_a_full_literal_table():
    rows = [r for claim in TABLE_CLAIMS["scaling"] for r in claim.rows] + list(SC.EXPERTS)
    rng = np.random.default_rng(0)
    res = results({r: list(-2.0 + rng.normal(0, 0.01, 3)) for r in dict.fromkeys(rows)})
    res["table"] = "scaling"
    verdicts = T.get("scaling").evaluate(res, None)
    assert len(verdicts) == len(TABLE_CLAIMS["scaling"])
    assert all(v.status in C.STATUSES for v in verdicts)


# ---------------------------------------------------------------------------------- paper's numbers


def test_paper_table1():
    t1 = load_paper_table("table1")
    assert list(t1.index)[:2] == ["T5-Base", "T5-Large"] and len(t1) == 9
    row = t1.loc["Switch-Base cf1.0"]
    assert (row["nlp"], row["examples_per_sec"], row["time_to_threshold_hours"]) == (-1.561, 1000, 62.8)
    assert math.isnan(t1.at["T5-Base", "time_to_threshold_hours"])
    assert t1.at["T5-Base", "time_to_threshold_note"] == "Not achieved"
    assert t1.at["Switch-Base+ cf1.0", "nlp"] == -1.534 and t1.at["MoE-Base cf2.0", "capacity_factor"] == 2.0


def test_paper_other_tables():
    assert load_paper_table("table2").at["bfloat16", "diverged"]
    assert load_paper_table("table2").at["selective", "nlp"] == -1.716
    assert load_paper_table("table3").at["init 1.0", "nlp_std"] == 0.68
    assert load_paper_table("table3").at["init 0.1", "nlp"] == -2.72
    assert load_paper_table("table11").at["input_jitter", "nlp"] == -1.468
    scaling = load_paper_table("scaling")
    assert scaling.at["Switch 64e", "nlp"] == -1.444 and scaling.at["Switch 64e", "step_speedup_vs_t5_base"] == 7.5
    assert scaling.at["T5-Base", "nlp"] == -1.636 and scaling.at["Switch 256e", "params_label"] == "14.7B"


# ---------------------------------------------------------------------------------- positive control


def _scaling_literal(large: list, base: list, switch8: list) -> pd.DataFrame:
    res = results({"T5-Large": large, "T5-Base": base, "Switch 8e": switch8})
    res["table"] = "scaling"
    return res


def test_failed_positive_control_marks_the_other_verdicts_regime_invalid():
    control = C.beats("T5-Large", "T5-Base", claim_id="control", control=True)
    switch = C.beats("Switch 8e", "T5-Base", claim_id="switch")
    # Control inconclusive (margin 0.01, spread 0.1): the Switch verdict, reproduced on its own, is invalid.
    res = _scaling_literal([-2.0, -2.2, -2.1], [-2.1, -2.11, -2.12], [-1.5, -1.51, -1.52])
    by_id = {v.claim_id: v for v in C.evaluate_claims("scaling", [control, switch], res, None)}
    assert by_id["control"].status == C.INCONCLUSIVE
    assert by_id["switch"].status == C.REGIME_INVALID
    assert by_id["switch"].detail.startswith("positive control control is inconclusive; as judged alone: reproduced;")
    assert by_id["switch"].margin == pytest.approx(0.6)  # the numbers are kept
    # Control reproduced (margin 0.5, spread 0.01): verdicts stand as judged.
    res = _scaling_literal([-1.6, -1.61, -1.62], [-2.1, -2.11, -2.12], [-2.3, -2.31, -2.32])
    by_id = {v.claim_id: v for v in C.evaluate_claims("scaling", [control, switch], res, None)}
    assert by_id["control"].status == C.REPRODUCED and by_id["switch"].status == C.NOT_REPRODUCED


def test_table1_and_scaling_open_with_the_larger_dense_control():
    for table in ("table1", "scaling"):
        first = TABLE_CLAIMS[table][0]
        assert first.control and first.rows == ("T5-Large", "T5-Base")
        assert sum(c.control for c in TABLE_CLAIMS[table]) == 1
    assert not any(c.control for t in ("table2", "table3", "table11") for c in TABLE_CLAIMS[t])


def test_margin_by_step_applies_the_beats_rule_at_every_evaluation():
    # step 100: Large -2.0/-2.2 (mean -2.1, std 0.1414), Base -2.1/-2.1: margin 0, inconclusive.
    # step 200: Large -1.5/-1.6 (std 0.0707), Base -2.0/-2.0: margin 0.45 > 2 x 0.0707, reproduced.
    c = curves({("T5-Large", 0): [(100, 1, -2.0), (200, 2, -1.5)], ("T5-Large", 1): [(100, 1, -2.2), (200, 2, -1.6)],
                ("T5-Base", 0): [(100, 1, -2.1), (200, 2, -2.0)], ("T5-Base", 1): [(100, 1, -2.1), (200, 2, -2.0)]})
    out = C.margin_by_step(c, "T5-Large", "T5-Base")
    assert list(out["step"]) == [100, 200] and list(out["seeds"]) == [2, 2]
    assert out["margin"].tolist() == pytest.approx([0.0, 0.45])
    assert out["2x spread"].tolist() == pytest.approx([2 * math.sqrt(0.02), 2 * math.sqrt(0.005)])
    assert list(out["verdict"]) == [C.INCONCLUSIVE, C.REPRODUCED]
    one_seed = C.margin_by_step(c[c["seed"] == 0], "T5-Large", "T5-Base")
    assert list(one_seed["verdict"]) == [C.INCONCLUSIVE, C.INCONCLUSIVE]  # one seed never decides


def test_gain_retained_literal():
    # dense -2.0, teacher -1.6 (gain 0.4), student -1.88: keeps 0.12 / 0.4 = 30%.
    assert S.gain_retained(-1.88, -2.0, -1.6) == pytest.approx(0.3)
    assert S.gain_retained(-2.1, -2.0, -1.6) == pytest.approx(-0.25)  # the student lost quality
    assert math.isnan(S.gain_retained(-1.9, -2.0, -2.0)) and math.isnan(S.gain_retained(-1.9, -2.0, -2.1))


def test_distillation_claim_reads_teacher_not_ahead_unless_the_teacher_beats_dense():
    teacher = C.beats("Switch", "Dense", claim_id="teacher-ahead")
    keeps = C.distillation_keeps_gain("Student", "Dense", "Switch", teacher_claim="teacher-ahead", claim_id="keeps")
    # Teacher ahead (margin 0.4, spread 0.01); student ahead of dense by 0.12: reproduced, keeping 30%.
    res = results({"Dense": [-2.0, -2.01, -1.99], "Switch": [-1.6, -1.61, -1.59], "Student": [-1.88, -1.89, -1.87]})
    by_id = {v.claim_id: v for v in C.evaluate_claims("t", [teacher, keeps], res)}
    assert by_id["teacher-ahead"].status == C.REPRODUCED and by_id["keeps"].status == C.REPRODUCED
    assert "share of the teacher's gain kept: 30%" in by_id["keeps"].detail
    # Teacher level with dense: the student's own (reproduced) margin says nothing about distillation.
    res = results({"Dense": [-2.0, -2.01, -1.99], "Switch": [-2.0, -2.02, -1.98], "Student": [-1.88, -1.89, -1.87]})
    by_id = {v.claim_id: v for v in C.evaluate_claims("t", [teacher, keeps], res)}
    assert by_id["teacher-ahead"].status == C.INCONCLUSIVE
    assert by_id["keeps"].status == C.TEACHER_NOT_AHEAD
    assert by_id["keeps"].detail.startswith("teacher claim teacher-ahead is inconclusive; as judged alone: reproduced;")
    # The teacher claim not evaluated at all (not in the list): also not ahead.
    (alone,) = C.evaluate_claims("t", [keeps], res)
    assert alone.status == C.TEACHER_NOT_AHEAD and "missing" in alone.detail
