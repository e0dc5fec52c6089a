"""Tables 4 to 8: rows that fine-tune or distil other rows of their table (their sources).

Planning (sources first, their hashes inside the child's configuration), the runner's handling of a
source's parameters (exported once, re-trained when only its logs were copied), the claims and report
columns of these tables, and a smoke run of every table through the CLI, then again as on a fresh clone.
"""

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from switchrepro.api import parse_config, parse_table
from switchrepro.cli import main
from switchrepro.config.tables import SCALES, from_gin_values
from switchrepro.experiments import claims as C
from switchrepro.experiments import report, runner, stats, tables
from switchrepro.experiments.tables import table7
from switchrepro.plots import figures

SOURCE_TABLES = ("table4", "table5", "table6", "table7", "table8")
NOWHERE = Path("/nonexistent")


def _plan(table, scale="mini", **kw):
    return runner.plan(parse_table(table), scale, parse_config, NOWHERE, **kw)


# ------------------------------------------------------------------------------------------ planning


@pytest.mark.parametrize("table", SOURCE_TABLES)
def test_sources_are_planned_first_with_the_same_seed_and_named_by_hash(table):
    for scale in SCALES:
        runs = _plan(table, scale)
        position = {(r.row.name, r.seed): i for i, r in enumerate(runs)}
        assert len({r.config_hash for r in runs}) == len(runs)
        for r in runs:
            for src in r.sources:
                assert src.seed == r.seed and position[(src.row.name, src.seed)] < position[(r.row.name, r.seed)]
                assert src.keeps_params and src.run_dir.parent == r.run_dir.parent
            assert (r.config.finetune.pretrained if r.pretrained else None) == (
                r.pretrained.config_hash if r.pretrained else None)
            assert (r.config.distill.teacher if r.teacher else None) == (r.teacher.config_hash if r.teacher else None)
            if r.row.stage == "pretrain":
                assert r.config.finetune is None and r.config.distill is None and not r.row.task


def test_pretrained_rows_are_the_committed_runs_of_table1_and_scaling():
    table1 = {r.row.name: r.config_hash for r in _plan("table1", seeds=1)}
    scaling = {(r.row.name, r.seed): r.config_hash for r in _plan("scaling")}
    for table in ("table4", "table5", "table6", "table8"):
        runs = {r.row.name: r.config_hash for r in _plan(table, seeds=1)}
        assert runs["T5-Base"] == table1["T5-Base"] and runs["Switch-Base"] == table1["Switch-Base cf1.25"]
    t7 = {(r.row.name, r.seed): r.config_hash for r in _plan("table7")}
    for e in ("8e", "16e", "64e"):
        assert all(t7[(f"Switch {e}", s)] == scaling[(f"Switch {e}", s)] for s in range(3))


def test_rows_configure_what_they_say():
    t6 = {r.row.name: r.config for r in _plan("table6", seeds=1)}
    recipes = {name: (c.distill.teacher_weight, c.distill.init_from_teacher) for name, c in t6.items() if c.distill}
    assert recipes == {"Distillation": (1.0, False), "+ Init. non-expert weights from teacher": (1.0, True),
                       "+ 0.75 mix of hard and soft loss": (0.25, True),
                       "Initialization Baseline (no distillation)": (0.0, True)}
    assert {c.model.moe is None for n, c in t6.items() if c.distill} == {True}  # dense students
    assert t6["Distillation"].train.steps == t6["T5-Base"].train.steps == 3000  # the pre-training schedule

    t4 = {r.row.name: r.config for r in _plan("table4", seeds=1)}
    ft = t4["Switch-Base (d=0.1, ed=0.4) / cloze_qa"]
    assert (ft.data.task, ft.data.inputs_length, ft.data.targets_length) == ("switchrepro_byte_cloze_qa", 512, 32)
    assert (ft.model.dropout_rate, ft.model.moe.expert_dropout) == (0.1, 0.4)
    assert t4["Switch-Base (d=0.3) / sentiment"].model.dropout_rate == 0.3
    assert (ft.train.steps, ft.train.warmup_steps, ft.train.cooldown_steps) == (1000, 1000, 0)
    assert math.isclose(ft.train.learning_rate / math.sqrt(ft.train.warmup_steps), 1e-2, rel_tol=1e-3)  # constant
    assert t4["T5-Base"].data.task == "switchrepro_byte_span20_corruption"  # sources keep pre-training data

    t8 = {r.row.name: r for r in _plan("table8", seeds=1)}
    distilled = t8["Distilled T5-Base / sentiment"]
    assert (distilled.pretrained.row.name, distilled.teacher.row.name) == ("T5-Base", "Switch-Base / sentiment")
    assert distilled.config.data.task == distilled.teacher.config.data.task == "switchrepro_byte_sentiment"
    assert [r.row.name for r in _plan("table8", rows=["Distilled T5-Base / sentiment"], seeds=1)] == [
        "T5-Base", "Switch-Base", "Switch-Base / sentiment", "Distilled T5-Base / sentiment"]
    paper = {r.row.name: r.config for r in _plan("table5", "paper", seeds=1)}
    assert paper["Switch-Base / cloze_qa"].data.task == "switchrepro_squad"


def test_a_saved_operative_config_rebuilds_a_childs_hash(tmp_path):
    for r in _plan("table8", seeds=1) + _plan("table6", seeds=1):
        (tmp_path / "op.gin").write_text(r.operative_gin)
        assert runner.config_hash(parse_config([str(tmp_path / "op.gin")], [])[0]) == r.config_hash


def _spec(rows, **kw):
    scales = {s: () for s in SCALES}
    return from_gin_values("t", "t", rows, {s: {"m": "m.gin"} for s in SCALES}, scales, {s: 1 for s in SCALES}, **kw)


@pytest.mark.parametrize("rows,kw,message", [
    ([{"name": "b", "model": "m", "teacher": "a"}, {"name": "a", "model": "m"}], {}, "must be an earlier row"),
    ([{"name": "a", "model": "m"}, {"name": "b", "model": "m", "pretrained": "a"}], {}, "needs a 'finetune' entry"),
    ([{"name": "a", "model": "m", "schedule": "x"}], {}, "no schedule 'x'"),
    ([{"name": "a", "model": "m", "task": "qa"}], {"tasks": {"smoke": {"qa": "t"}, "mini": {}, "paper": {}}},
     "TableSpec.tasks['mini'] has no task 'qa'"),
    ([{"name": "a", "model": "m", "teachr": "x"}], {}, "unknown keys ['teachr']"),
    ([{"name": "a", "model": "m"}], {"schedules": {"finetune": {"smoke": ()}}}, "must give bindings for every scale"),
])
def test_spec_refuses_rows_it_cannot_plan(rows, kw, message):
    with pytest.raises(ValueError, match=None) as e:
        _spec(rows, **kw)
    assert message in str(e.value)


def test_schedule_and_task_bindings_follow_the_scale_bindings():
    spec = from_gin_values(
        "t", "t", [{"name": "a", "model": "m"}, {"name": "b", "model": "m", "pretrained": "a", "task": "qa"},
                   {"name": "c", "model": "m", "teacher": "a", "task": "s", "schedule": "finetune"}],
        {s: {"m": "m.gin"} for s in SCALES}, {s: (f"S.{s} = 1",) for s in SCALES}, {s: 1 for s in SCALES},
        schedules={"finetune": {s: ("F = 1",) for s in SCALES}},
        tasks={s: {"qa": ["DataConfig.task = 'q'", "DataConfig.inputs_length = 9"], "s": "sent"} for s in SCALES})
    a, b, c = spec.rows
    assert (a.stage, b.stage, c.stage) == ("pretrain", "finetune", "distill")
    assert spec.schedule_bindings(a, "mini") == ("S.mini = 1",)
    assert spec.schedule_bindings(b, "mini") == spec.schedule_bindings(c, "mini") == ("S.mini = 1", "F = 1")
    assert spec.task_binding(b, "mini") == ("DataConfig.task = 'q'", "DataConfig.inputs_length = 9")
    assert spec.task_binding(c, "mini") == ("DataConfig.task = 'sent'",) and spec.task_binding(a, "mini") == ()
    assert [r.name for r in spec.with_sources(["c"])] == ["a", "c"]


def test_training_order_puts_sources_before_every_other_row():
    runs = _plan("table6", seeds=2)
    order = [(r.row.name, r.seed) for r in runner.training_order(runs)]
    assert order[:2] == [("Switch-Base", 0), ("Switch-Base", 1)]
    assert order[2:4] == [("T5-Base", 0), ("Distillation", 0)]
    assert sorted(order) == sorted((r.row.name, r.seed) for r in runs)


# ------------------------------------------------------------------------------- source parameters


def _finish(run, step=4):
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "metrics.jsonl").write_text(json.dumps({"event": "start"}) + "\n"
                                                + json.dumps({"step": step, "eval_neg_log_perplexity": -2.0}) + "\n"
                                                + json.dumps({"event": "done", "step": step}) + "\n")


def test_a_source_is_trained_for_its_parameters_then_exported_once(tmp_path, monkeypatch):
    exported = []

    def fake_export(run, params_root, echo=print):  # the real one restores a checkpoint; see the CLI test
        dest = Path(params_root) / run.run_dir.name
        dest.mkdir(parents=True)
        (dest / "step.txt").write_text("4\n")
        exported.append(run.row.name)
        return dest

    monkeypatch.setattr(runner, "export_source_params", fake_export)
    runs = runner.plan(parse_table("table6"), "smoke", parse_config, tmp_path / "runs", seeds=1,
                       rows=["Distillation"])
    source, student = runs
    assert (source.row.name, student.row.name) == ("Switch-Base", "Distillation")
    logs, params = tmp_path / "results" / "smoke" / "logs", tmp_path / "results" / "smoke" / "params"
    committed = logs / "table1" / source.run_dir.name  # the source's log is committed, its parameters are not
    _finish(dataclasses_replace_dir(source, committed))
    trained = []
    train = lambda r: (trained.append(r.row.name), _finish(r))  # noqa: E731
    runner.execute(runner.training_order(runs), train, echo=lambda m: None, logs_dir=logs, params_root=params)
    assert trained == ["Switch-Base", "Distillation"] and exported == ["Switch-Base"]
    assert runner.exported_params(source, params) == params / source.run_dir.name

    # A fresh clone (no runs/, the logs and the export committed): nothing is trained or exported again.
    _finish(dataclasses_replace_dir(student, logs / "table6" / student.run_dir.name))
    shutil.rmtree(tmp_path / "runs")
    trained.clear()
    runner.execute(runner.training_order(runs), train, echo=lambda m: None, logs_dir=logs, params_root=params)
    assert trained == [] and exported == ["Switch-Base"]
    assert (source.run_dir / "reused_from.txt").exists()

    # Logs copied (collect-only) but no export and no checkpoint: the source is trained again.
    shutil.rmtree(params)
    runner.execute([source], train, echo=lambda m: None, logs_dir=logs, params_root=params)
    assert trained == ["Switch-Base"] and exported == ["Switch-Base", "Switch-Base"]
    # ...but a run trained here whose checkpoints are gone is not silently retrained.
    shutil.rmtree(params)
    (source.run_dir / "reused_from.txt").unlink(missing_ok=True)
    with pytest.raises(runner.SourceRunError, match="delete that directory to re-train it"):
        runner.execute([source], train, echo=lambda m: None, logs_dir=logs, params_root=params)
    with pytest.raises(runner.SourceRunError, match="no exported parameters and no checkpoint"):
        runner.source_params(source, params)


def dataclasses_replace_dir(run, run_dir):
    import dataclasses

    return dataclasses.replace(run, run_dir=run_dir)


# ------------------------------------------------------------------------------------- claims, report


def _results(rows, metric="final_nlp", stage=None):
    out = []
    for row, values in rows.items():
        for seed, v in enumerate(values):
            out.append({"table": "t", "row": row, "seed": seed, "final_nlp": -2.0, "diverged_at": math.nan,
                        metric: v, "params": 100, "teacher_row": "", "stage": "pretrain"})
    return pd.DataFrame(out)


def test_distillation_is_judged_only_when_the_teacher_is_ahead():
    rows = {"T5-Base": [-1.64, -1.65, -1.63], "Switch-Base": [-1.44, -1.45, -1.43],
            "Distillation": [-1.62, -1.63, -1.61], "+ Init. non-expert weights from teacher": [-1.60, -1.61, -1.59],
            "+ 0.75 mix of hard and soft loss": [-1.58, -1.59, -1.57],
            "Initialization Baseline (no distillation)": [-1.64, -1.65, -1.63]}
    verdicts = {v.claim_id: v for v in C.evaluate_claims("t", tables.get("table6").claims(), _results(rows))}
    assert verdicts["t6-teacher-ahead"].status == C.REPRODUCED
    mix = verdicts["t6-0.75-mix-of-hard-and-soft-loss-keeps-gain"]
    assert mix.status == C.REPRODUCED and "gain kept: 30%" in mix.detail  # (-1.58 + 1.64) / (-1.44 + 1.64)
    assert verdicts["t6-distillation-beats-init-only"].status == C.REPRODUCED
    rows["Switch-Base"] = [-1.64, -1.66, -1.62]  # the teacher is not ahead: no distillation verdict stands
    verdicts = C.evaluate_claims("t", tables.get("table6").claims(), _results(rows))
    assert {v.status for v in verdicts[1:]} == {C.TEACHER_NOT_AHEAD}


def test_fine_tuning_claims_use_the_peak_scores_and_the_pretrained_control():
    rows = {"T5-Base": [0, 0], "Switch-Base": [0, 0], "T5-Base / sentiment": [60.0, 62.0],
            "Switch-Base / sentiment": [70.0, 71.0], "Distilled T5-Base / sentiment": [64.0, 65.0]}
    df = _results(rows, metric="peak_score")
    df.loc[df["row"] == "Switch-Base", "final_nlp"] = [-1.60, -1.61]
    df.loc[df["row"] == "T5-Base", "final_nlp"] = [-1.70, -1.71]
    df.loc[df["row"].str.contains("/"), "stage"] = "finetune"
    df.loc[df["row"] == "Distilled T5-Base / sentiment", "teacher_row"] = "Switch-Base / sentiment"
    df.loc[df["row"].isin(["T5-Base", "Switch-Base"]), "peak_score"] = math.nan
    summary = stats.summarize(df)
    assert summary.at["Switch-Base / sentiment", "score_mean"] == 70.5
    assert summary.at["T5-Base", "n_scored"] == 0
    verdicts = {v.claim_id: v for v in C.evaluate_claims("t", tables.get("table8").claims(), df)}
    assert [verdicts[k].status for k in ("t8-control-switch-base-pretrained-ahead", "t8-teacher-ahead",
                                         "t8-distilled-keeps-gain")] == [C.REPRODUCED] * 3
    assert "gain kept: 37%" in verdicts["t8-distilled-keeps-gain"].detail  # (64.5 - 61) / (70.5 - 61)
    table = report.table_markdown(tables.get("table8"), summary, None)
    assert "| Distilled T5-Base / sentiment | switchrepro_byte_sentiment" not in table  # task column is ours
    line = next(t for t in table.splitlines() if t.startswith("| Distilled"))
    assert "64.5 ± 0.7 (n=2)" in line and "37%" in line
    df.loc[df["row"] == "Switch-Base", "final_nlp"] = [-1.80, -1.81]  # control fails: regime invalid
    verdicts = {v.claim_id: v for v in C.evaluate_claims("t", tables.get("table8").claims(), df)}
    assert verdicts["t8-teacher-ahead"].status == C.REGIME_INVALID


def test_table7_report_shows_gain_kept_and_compression():
    rows = {"T5-Base": [-1.64, -1.66], "Switch 8e": [-1.44, -1.46], "Distilled from 8e": [-1.59, -1.61]}
    df = _results(rows)
    df.loc[df["row"] == "Switch 8e", "params"] = 400
    df.loc[df["row"] == "Distilled from 8e", "teacher_row"] = "Switch 8e"
    line = next(t for t in report.table_markdown(tables.get("table7"), stats.summarize(df), None).splitlines()
                if t.startswith("| Distilled from 8e"))
    assert "25%" in line and "75%" in line  # gain kept (0.05 / 0.2), compression 1 - 100 / 400


def test_collect_reads_the_peak_score_and_the_score_curve(tmp_path):
    run = runner.plan(parse_table("table4"), "smoke", parse_config, tmp_path, seeds=1,
                      rows=["T5-Base (d=0.1) / sentiment"])[-1]
    run.run_dir.mkdir(parents=True)
    lines = [{"event": "start", "params": 10, "flops_per_example": 1, "epochs": 0.1},
             {"step": 2, "eval_neg_log_perplexity": -3.0, "eval_score": 55.0, "wall_seconds": 1.0},
             {"step": 4, "eval_neg_log_perplexity": -2.5, "eval_score": 70.0, "wall_seconds": 2.0},
             {"step": 6, "eval_neg_log_perplexity": -2.4, "eval_score": 70.0, "wall_seconds": 3.0},
             {"event": "done", "step": 6}]
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    results, curves, _ = runner.collect(parse_table("table4"), "smoke", [run])
    assert results[["peak_score", "peak_step", "final_nlp"]].values.tolist() == [[70.0, 4.0, -2.4]]
    assert (results.at[0, "stage"], results.at[0, "pretrained_row"]) == ("finetune", "T5-Base")
    assert curves["score"].tolist() == [55.0, 70.0, 70.0]


# ------------------------------------------------------------------------------------- through the CLI


def test_every_source_table_runs_at_smoke_scale_and_a_fresh_clone_trains_nothing(tmp_path, cache_root, cheap_compiles):
    results, runs_dir = tmp_path / "results", tmp_path / "runs"

    def run(table, results=results, runs_dir=runs_dir):
        out = CliRunner().invoke(main, ["run", table, "--scale", "smoke", "--results-dir", str(results),
                                        "--runs-dir", str(runs_dir), "--gin", f"DataConfig.cache_dir = '{cache_root}'"])
        assert out.exit_code == 0, out.output
        return out.output

    outputs = {t: run(t) for t in ("table6", "table4", "table8", "table7", "table5")}
    for table in SOURCE_TABLES:
        df = pd.read_csv(results / "smoke" / f"{table}.csv")
        assert sorted(df["row"]) == sorted(r.name for r in parse_table(table).default_rows("smoke"))
        assert (df["final_step"] == 4).all() and "Verdicts:" in outputs[table]
    exported = sorted(p.name.split("-")[0] for p in (results / "smoke" / "params").iterdir())
    assert exported == ["Switch_Base", "Switch_Base_sentiment", "T5_Base"]  # each source once, shared by hash
    t4 = pd.read_csv(results / "smoke" / "table4.csv").set_index("row")
    assert t4.loc["T5-Base (d=0.1) / sentiment", "peak_score"] >= 0 and t4.loc["T5-Base", "stage"] == "pretrain"
    assert (next((runs_dir / "smoke" / "table4").glob("T5_Base_d_0.1*")) / "predictions" / "step_4.jsonl").exists()
    assert "identical to the finished" in outputs["table5"]  # table5's Base rows are table4's runs
    t6 = pd.read_csv(results / "smoke" / "table6.csv").set_index("row")
    assert t6.loc["Distillation", "teacher_row"] == "Switch-Base"

    # A fresh clone: the committed results (logs and exported parameters), no runs/ directory.
    clone = tmp_path / "clone"
    shutil.copytree(results, clone / "results")
    out = run("table8", results=clone / "results", runs_dir=clone / "runs")
    assert "training in" not in out and "resuming" not in out and "parameters exported" not in out
    assert pd.read_csv(clone / "results" / "smoke" / "table8.csv")["peak_score"].notna().sum() == 3


def test_a_tables_own_committed_log_is_preferred_to_a_twin_of_another_table(tmp_path):
    # table6 re-trains Switch-Base (table1's configuration) for its parameters, maybe on another machine:
    # on a fresh clone its row must come back with the numbers of the run whose parameters it used.
    run = runner.plan(parse_table("table6"), "mini", parse_config, tmp_path / "runs", seeds=1, rows=["Switch-Base"])[0]
    logs = tmp_path / "logs"
    for table in ("table1", "table6"):
        _finish(dataclasses_replace_dir(run, logs / table / run.run_dir.name))
    assert runner.finished_twin(run, logs) == logs / "table6" / run.run_dir.name
    # `run table1 --collect-only` before it copied table1's twin into runs/: table6's own log still wins
    _finish(dataclasses_replace_dir(run, run.run_dir.parent.parent / "table1" / run.run_dir.name))
    assert runner.finished_twin(run, logs) == logs / "table6" / run.run_dir.name


def test_the_twin_whose_parameters_were_exported_is_preferred(tmp_path):
    # table7's 8-expert teacher is table6's Switch-Base (re-trained here for its parameters, exported) and
    # scaling's Switch 8e (trained elsewhere): the students learned from table6's run, so table7 shows it.
    run = runner.plan(parse_table("table7"), "mini", parse_config, tmp_path / "runs", seeds=1, rows=["Switch 8e"])[0]
    logs, params = tmp_path / "logs", tmp_path / "params"
    h = run.run_dir.name.split("-s0-")[1]
    for table, name in (("scaling", f"Switch_8e-s0-{h}"), ("table6", f"Switch_Base-s0-{h}")):
        _finish(dataclasses_replace_dir(run, logs / table / name))
    assert runner.finished_twin(run, logs) == logs / "scaling" / f"Switch_8e-s0-{h}"  # no export: by path
    (params / f"Switch_Base-s0-{h}").mkdir(parents=True)
    (params / f"Switch_Base-s0-{h}" / "step.txt").write_text("3000\n")
    assert runner.finished_twin(run, logs, params) == logs / "table6" / f"Switch_Base-s0-{h}"
    # among local runs, an original beats a copy of one
    runs = tmp_path / "runs" / "mini"
    copy, original = runs / "scaling" / f"Switch_8e-s0-{h}", runs / "table1" / f"Switch_Base_cf1.25-s0-{h}"
    for d in (copy, original):
        _finish(dataclasses_replace_dir(run, d))
    (copy / "reused_from.txt").write_text("elsewhere\n")
    assert runner.finished_twin(run) == original


def test_fine_tuning_and_distillation_figures(tmp_path):

    curves = pd.DataFrame({"row": ["T5-Base / spam"] * 4 + ["Switch-Base / spam"] * 2 + ["T5-Base"] * 2,
                           "seed": [0, 0, 1, 1, 0, 0, 0, 0], "step": [2, 4, 2, 4, 2, 4, 2, 4],
                           "nlp": [-1.0] * 8, "score": [50, 60, 52, 58, 55, 70, math.nan, math.nan]})
    names = sorted(p.name for p in figures.score_vs_step(curves, tmp_path, prefix="t5"))
    assert names == ["t5_score_vs_step.png", "t5_score_vs_step.svg"]
    assert figures.score_vs_step(curves.drop(columns="score"), tmp_path, prefix="x") == []
    rows = {"T5-Base": [-1.64, -1.66], "Switch 8e": [-1.44, -1.46], "Distilled from 8e": [-1.59, -1.61]}
    df = _results(rows)
    df.loc[df["row"] == "Switch 8e", "params"] = 400
    df.loc[df["row"] == "Distilled from 8e", "teacher_row"] = "Switch 8e"
    paths = table7.gain_vs_compression(stats.summarize(df), tmp_path)
    assert sorted(p.name for p in paths) == ["table7_gain_vs_compression.png", "table7_gain_vs_compression.svg"]
    assert table7.gain_vs_compression(stats.summarize(_results({"T5-Base": [-1.6]})), tmp_path) == []
