"""Figures and the report, from small literal frames (matplotlib Agg via Figure; no training)."""

import math

import numpy as np
import pandas as pd
import pytest

from switchrepro.experiments import report as R
from switchrepro.experiments import stats as S
from switchrepro.experiments import tables as T
from switchrepro.experiments.paper import load_paper_table
from switchrepro.experiments.tables import scaling as SC
from switchrepro.experiments.tables import table1 as T1
from switchrepro.plots import figures as F

SCALING_ROWS = {"T5-Base": (-2.0, 1e6), "Switch 2e": (-1.95, 2e6), "Switch 8e": (-1.9, 8e6),
                "Switch 64e": (-1.8, 6.4e7), "T5-Large": (-1.85, 3e6)}
TABLE1_ROWS = {"T5-Base": -2.0, "Switch-Base cf1.0": -1.9, "MoE-Base cf1.0": -1.85, "Switch-Base cf1.25": -1.91}
NAN = math.nan


def frames(table: str, rows: dict, seeds: int = 2, diverged: tuple = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`results` and `curves` for `rows` ({row: final NLP or (final NLP, params)}); rows in `diverged` diverge."""
    res, cur = [], []
    for i, (row, value) in enumerate(rows.items()):
        final, params = value if isinstance(value, tuple) else (value, 1e6 * (i + 1))
        for seed in range(seeds):
            nlp = NAN if row in diverged else final + 0.01 * seed
            speed = 100.0 + 10 * i + seed
            res.append({"table": table, "scale": "smoke", "row": row, "seed": seed, "params": params,
                        "flops_per_example": 1e9, "num_experts": 1, "steps": 30, "final_step": 30, "final_nlp": nlp,
                        "diverged_at": 20.0 if row in diverged else NAN, "examples_per_sec": speed,
                        "wall_seconds": 30 / speed, "epochs": 0.1})
            for step in (10, 20, 30):
                if row in diverged:  # one bad evaluation, then nothing
                    point = -5.0 if step == 10 else NAN
                else:  # rises by 1 nat per 10 steps to the final NLP
                    point = nlp - (30 - step) / 10
                cur.append({"table": table, "row": row, "seed": seed, "step": step, "wall_seconds": step / speed,
                            "nlp": point})
    return pd.DataFrame(res), pd.DataFrame(cur)


def assert_written(paths, names):
    assert sorted(p.name for p in paths) == sorted(f"{n}.{ext}" for n in names for ext in ("png", "svg"))
    assert all(p.stat().st_size > 0 for p in paths)


def test_pareto_front_on_a_literal_example():
    s = pd.DataFrame({"examples_per_sec": [1.0, 2.0, 3.0, 1.5, 2.0, np.nan],
                      "nlp_mean": [3.0, 2.0, 1.0, 1.5, 1.0, 9.0]}, index=["a", "b", "c", "d", "e", "nan"])
    assert F.pareto_front(s) == ["a", "b", "c"]  # d and e are dominated by b; NaN rows are ignored


def test_scaling_figures(tmp_path):
    res, cur = frames("scaling", SCALING_ROWS)
    summary = S.summarize(res)
    assert_written(SC.quality_vs_params(summary, tmp_path), ["scaling_quality_vs_params"])
    assert_written(F.quality_vs_step(S.mean_curves(cur, ["T5-Base", "Switch 64e"]), tmp_path, prefix="scaling"),
                   ["scaling_quality_vs_step"])
    assert_written(F.quality_vs_time(S.mean_curves(cur), tmp_path, prefix="scaling"), ["scaling_quality_vs_time"])
    assert_written(SC.vs_larger_dense(cur, tmp_path), ["scaling_vs_larger_dense"])
    assert SC.largest_switch(["T5-Base", "Switch 8e", "Switch 128e"]) == "Switch 128e"
    assert SC.largest_switch(["Switch 128e", "Switch 64e"]) == "Switch 64e"


def test_table_figures(tmp_path):
    res, _ = frames("table1", TABLE1_ROWS)
    summary = S.summarize(res)
    assert_written(T1.speed_quality(summary, tmp_path), ["table1_speed_quality"])
    loads = {"Switch-Base cf1.0": {"encoder/moe_0": [0.5, 0.25, 0.25, 0.0], "decoder/moe_0": [0.25] * 4},
             "MoE-Base cf1.0": {}}
    assert_written(F.expert_load_heatmaps(loads, tmp_path, prefix="table1"),
                   ["table1_expert_load_Switch-Base_cf1.0".replace("-", "_")])
    res2, _ = frames("table2", {"float32": -2.0, "bfloat16": -2.0, "selective": -2.0}, diverged=("bfloat16",))
    assert_written(F.final_quality_bars(S.summarize(res2), tmp_path, prefix="table2"), ["table2_final_quality"])


@pytest.mark.parametrize("table, expected", [
    ("scaling", ["quality_vs_params", "quality_vs_step", "quality_vs_time", "vs_larger_dense"]),
    ("table1", ["speed_quality", "quality_vs_step", "expert_load_Switch_Base_cf1.0"]),
    ("table3", ["quality_vs_step", "final_quality"]),
])
def test_plot_table_dispatches(tmp_path, table, expected):
    rows = {"scaling": SCALING_ROWS, "table1": TABLE1_ROWS, "table3": {"init 0.1": -2.7, "init 1.0": -3.0}}[table]
    res, cur = frames(table, rows)
    loads = {"Switch-Base cf1.0": {"layer_0": [0.5, 0.5]}}
    assert_written(T.get(table).plot(res, cur, loads, tmp_path), [f"{table}_{name}" for name in expected])


def literal_tables():
    t1 = frames("table1", TABLE1_ROWS, seeds=3)
    t2 = frames("table2", {"float32": -2.0, "bfloat16": -2.0, "selective": -2.0}, diverged=("bfloat16",))
    return {"table1": t1, "table2": t2}


def test_table_markdown_and_console_show_ours_beside_the_paper():
    res, cur = literal_tables()["table1"]
    table1 = T.get("table1")
    summary = table1.summary(res, cur)
    text = R.table_markdown(table1, summary, load_paper_table("table1"))
    assert "| Switch-Base cf1.0 | 1.00 | -1.8900 ± 0.0100 (n=3) | -1.561 |" in text
    assert "Not achieved" in text and "not run" in text  # T5-Large was not run here
    assert "ours: steps to -1.9100" in text  # the default threshold: the worst sparse run's best NLP
    verdicts = table1.evaluate(res, cur)
    console = R.format_console(table1, summary, load_paper_table("table1"), verdicts)
    assert "Switch-Base+ cf1.0" in console and "[  inconclusive]" in console and "rows missing" in console


def test_write_report(tmp_path):
    tables = {}
    for name, (res, cur) in literal_tables().items():
        table = T.get(name)
        plots = table.plot(res, cur, None, tmp_path / "plots")
        meta = {"command": f"switchrepro run {name} --scale smoke", "wall_seconds": 3725.0, "tokens_per_step": 512}
        tables[name] = (table, res, cur, None, table.evaluate(res, cur), plots, meta)
    explanations = {"t1-switch-beats-moe-cf1.0": "top-2 MoE computes twice the expert FLOPs"}
    tables["table1"] = R.TableReport(*tables["table1"][:6], {**tables["table1"][6], "explanations": explanations})
    path = R.write_report("smoke", tables, tmp_path / "REPORT.md")
    text = path.read_text()
    for needle in ("# Switch Transformer reproduction: smoke scale", "## table1: Table 1", "## table2: Table 2",
                   "**reproduced**", "**not reproduced**", "**inconclusive**", "## What does not reproduce and why",
                   "![table1_speed_quality](plots/table1_speed_quality.png)", "(plots/table2_final_quality.svg)",
                   "`switchrepro run table1 --scale smoke`", "Wall time: 1 h 02 min", "Tokens per step: 512",
                   "diverged (2/2, first at step 20)", "Why: top-2 MoE computes twice the expert FLOPs.",
                   # T5-Large was not run, so table1's positive control is inconclusive and the rest regime invalid
                   "**regime invalid**", "rows missing: T5-Large. Why: the rows it needs were not run.",
                   "- CPU and threads: not recorded",
                   "positive control t1-control-larger-dense is inconclusive; as judged alone: inconclusive; rows "
                   "missing: Switch-Base+ cf1.0, MoE-Base cf2.0. Why: the table's positive control"):
        assert needle in text, needle
    assert "| table2 | 4 | 0 | 0 | 0 |" in text


def test_report_shows_the_positive_control_at_every_step(tmp_path):
    res, cur = frames("scaling", SCALING_ROWS)  # T5-Large leads T5-Base by 0.15 nats at every step
    scaling = T.get("scaling")
    tables = {"scaling": (scaling, res, cur, None, scaling.evaluate(res, cur), [], {})}
    text = R.write_report("smoke", tables, tmp_path / "REPORT.md").read_text()
    section = text[text.index("### Positive control by step"):]
    assert "T5-Large minus T5-Base" in section
    steps = [ln for ln in section.splitlines() if ln.startswith("|") and ln.split("|")[1].strip().isdigit()]
    assert [ln.split("|")[1].strip() for ln in steps] == ["10", "20", "30"]
    assert all("0.1500" in ln and "reproduced" in ln for ln in steps)
    # a table without its control's rows has no such section
    only_switch = res[res["row"] != "T5-Large"], cur[cur["row"] != "T5-Large"]
    tables = {"scaling": (scaling, *only_switch, None, scaling.evaluate(*only_switch), [], {})}
    assert "Positive control by step" not in R.write_report("smoke", tables, tmp_path / "R2.md").read_text()


def test_report_sets_calibration_regimes_side_by_side(tmp_path):
    clear = frames("scaling", {"T5-Base": -2.0, "T5-Large": -1.85})  # std 0.0071 per row, margin 0.15
    noisy = frames("scaling", {"T5-Base": -2.0, "T5-Large": -1.995})  # margin 0.005 < 2 x 0.0071
    scaling = T.get("scaling")
    regimes = [R.Calibration("wide-lead", scaling, *clear, {"command": "switchrepro run scaling --gin X=1"}),
               R.Calibration("no-lead", scaling, *noisy, {"command": "switchrepro run scaling --gin X=2"},
                             "# two invocations\nswitchrepro run scaling --gin X=2 --seeds 1\n")]
    res, cur = frames("scaling", SCALING_ROWS)
    tables = {"scaling": (scaling, res, cur, None, scaling.evaluate(res, cur), [], {})}
    text = R.write_report("smoke", tables, tmp_path / "REPORT.md", calibration=regimes).read_text()
    section = text[text.index("## Calibration: the positive control per regime"):text.index("## scaling:")]
    rows = {ln.split("|")[1].strip(): ln for ln in section.splitlines() if ln.startswith("| ") and "beats" in ln}
    assert set(rows) == {"wide-lead", "no-lead"}
    assert "| 0.1500 | 0.0141 | **reproduced** |" in rows["wide-lead"]
    assert "| 0.0050 | 0.0141 | **inconclusive** |" in rows["no-lead"]
    assert "| 2, 2 | 30 | — | 0.1 | -1.8450 ± 0.0071 | -1.9950 ± 0.0071 |" in rows["wide-lead"]  # seeds 0, 1: +0.01
    assert "- Command: `switchrepro run scaling --gin X=1`" in section and "### Calibration no-lead" in section
    # a regime's command.txt, when it has one, is quoted whole instead of the last invocation's command
    no_lead = section[section.index("### Calibration no-lead"):]
    assert "```\n# two invocations\nswitchrepro run scaling --gin X=2 --seeds 1\n```" in no_lead
    assert "--gin X=2`" not in no_lead
    assert R.calibration_markdown([]) == []
