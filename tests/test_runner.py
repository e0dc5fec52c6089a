"""`switchrepro run/plot/report` at smoke scale: the run -> collect -> plot path, resume, divergence."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from switchrepro.api import parse_config, parse_table
from switchrepro.cli import main
from switchrepro.config import ConfigError, store
from switchrepro.experiments import runner, tables


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, cache_root):
    root = tmp_path_factory.mktemp("tables")
    return {"results": root / "results", "runs": root / "runs", "cache": cache_root}


def _run(dirs, *args, env=None):
    cmd = ["run", *args, "--scale", "smoke", "--seeds", "1", "--results-dir", str(dirs["results"]),
           "--runs-dir", str(dirs["runs"]), "--gin", f"DataConfig.cache_dir = '{dirs['cache']}'"]
    result = CliRunner(env=env or {}).invoke(main, cmd)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_table_parses_and_plans():
    for table in ("table1", "table2", "table3", "table11", "scaling", "multilingual"):
        spec = parse_table(table)
        for scale in ("smoke", "mini", "paper"):
            runs = runner.plan(spec, scale, parse_config, runner_dir := Path("/nonexistent"))
            assert len(runs) == len(spec.default_rows(scale)) * spec.seeds[scale]
            assert len({r.config_hash for r in runs}) == len(runs)  # every (row, seed) is its own run
            assert all(str(r.run_dir).startswith(str(runner_dir)) for r in runs)


def test_table1_rows_configure_what_they_say():
    spec = parse_table("table1")
    runs = {r.row.name: r.config for r in runner.plan(spec, "mini", parse_config, Path("x"),
                                                      seeds=1)}
    assert runs["T5-Base"].model.moe is None
    assert runs["MoE-Base cf1.25"].model.moe.router == "top2"
    assert runs["MoE-Base cf1.25"].model.moe.capacity_factor_train == 1.25
    assert runs["Switch-Base cf1.0"].model.moe.router == "switch"
    assert runs["Switch-Base cf1.0"].model.moe.capacity_factor_train == 1.0
    assert runs["Switch-Base+ cf1.0"].model.d_model > runs["Switch-Base cf1.0"].model.d_model
    # mini: the positive control is the 8x wider FFN at d_model 64, on ByT5's span-20 byte-level span corruption
    # with a 384-id vocabulary, batch 64, 3000 steps cooled down over the last 500
    assert (runs["T5-Base"].model.d_ff, runs["T5-Large"].model.d_ff) == (128, 1024)
    assert runs["Switch-Base cf1.0"].model.d_ff == 128 and runs["T5-Large"].model.d_model == 64
    assert {(c.data.task, c.model.vocab_size) for c in runs.values()} == {("switchrepro_byte_span20_corruption", 384)}
    assert {(c.data.batch_size, c.train.steps, c.train.cooldown_steps) for c in runs.values()} == {(64, 3000, 500)}
    paper = {r.row.name: r.config for r in runner.plan(spec, "paper", parse_config, Path("x"))}
    assert paper["T5-Large"].model.d_model > paper["T5-Base"].model.d_model
    assert {c.model.vocab_size for c in paper.values()} == {8192}


def test_skipped_rows_run_only_when_named():
    spec = parse_table("scaling")
    x = Path("x")
    assert "Switch 128e" not in {r.row.name for r in runner.plan(spec, "mini", parse_config, x, seeds=1)}
    assert "Switch 128e" in {r.row.name for r in runner.plan(spec, "smoke", parse_config, x, seeds=1)}
    named = runner.plan(spec, "mini", parse_config, x, seeds=1, rows=["Switch 128e"])
    assert [r.config.model.moe.num_experts for r in named] == [128]


def test_identical_run_of_another_table_is_reused_not_retrained(tmp_path):
    plan = {t: {(r.row.name, r.seed): r for r in runner.plan(parse_table(t), "mini", parse_config, tmp_path, seeds=2)}
            for t in ("table1", "scaling")}
    twin, run = plan["scaling"][("T5-Base", 1)], plan["table1"][("T5-Base", 1)]
    assert twin.config_hash == run.config_hash and twin.run_dir != run.run_dir
    assert plan["scaling"][("Switch 8e", 0)].config_hash == plan["table1"][("Switch-Base cf1.25", 0)].config_hash
    other_seed = plan["table1"][("T5-Base", 0)]
    twin.run_dir.mkdir(parents=True)
    (twin.run_dir / "metrics.jsonl").write_text('{"event": "start"}\n{"step": 600, "nlp": -5.0}\n')
    trained = []
    runner.execute([run], lambda r: trained.append(r), echo=lambda m: None)
    assert trained == [run]  # an unfinished twin is not reused
    trained.clear()
    (twin.run_dir / "metrics.jsonl").write_text('{"event": "start"}\n{"step": 600, "nlp": -5.0}\n{"event": "done"}\n')
    (twin.run_dir / ".lock").write_text("pid 1 on elsewhere: switchrepro run scaling\n")
    messages = []
    runner.execute([run, other_seed], lambda r: trained.append(r), echo=messages.append)
    assert trained == [other_seed]  # seed 0 has no finished twin
    assert runner.run_status(run) == "done"
    assert (run.run_dir / "metrics.jsonl").read_text() == (twin.run_dir / "metrics.jsonl").read_text()
    assert (run.run_dir / "reused_from.txt").read_text().strip() == str(twin.run_dir)
    assert "elsewhere" not in (run.run_dir / ".lock").read_text()  # the twin's lock file is not copied
    assert "reused" in messages[0]


def test_committed_run_keys_are_reproduced_from_their_operative_configs():
    # A fresh clone reuses a committed run only if its key still hashes the same; options added since
    # (TrainConfig.cooldown_steps) are hashed only when set, so older runs keep their keys.
    root = Path(__file__).resolve().parents[1]
    logs = sorted(root.glob("results/mini/**/logs/*/*/config.gin"))  # the tables' and the calibration's
    assert logs
    for config_gin in logs:
        cfg, _ = parse_config([str(config_gin)], [])
        assert config_gin.parent.name.endswith("-" + runner.config_hash(cfg)), config_gin
    cooled = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cooldown_steps=cfg.train.steps // 5))
    assert runner.config_hash(cooled) != runner.config_hash(cfg)


def test_a_recorded_expert_path_is_not_part_of_the_configuration(tmp_path):
    # The trainer records the MoE expert path it resolved as a top-level "expert_path" in config.json: the
    # saved configuration still loads, hashes as before, matches its run directory, and keeps the record.
    config_gin = sorted(Path(__file__).resolve().parents[1].glob("results/mini/logs/table1/*/config.gin"))[0]
    cfg, operative = parse_config([str(config_gin)], [])
    run_dir = tmp_path / config_gin.parent.name
    store.prepare_run_dir(cfg, operative, run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    assert "expert_path" not in saved and store.config_from_dict(saved) == cfg
    (run_dir / "config.json").write_text(json.dumps({**saved, "expert_path": "loop"}))
    loaded = store.load_run_config(run_dir)
    assert loaded == cfg and run_dir.name.endswith("-" + store.config_hash(loaded))
    store.prepare_run_dir(cfg, operative, run_dir)  # the same configuration: accepted, the record kept
    assert json.loads((run_dir / "config.json").read_text())["expert_path"] == "loop"
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=cfg.train.steps + 1))
    with pytest.raises(ConfigError, match="different configuration"):
        store.prepare_run_dir(other, operative, run_dir)


def test_a_run_finished_in_the_committed_logs_is_reused_on_a_fresh_clone(tmp_path):
    run = runner.plan(parse_table("scaling"), "mini", parse_config, tmp_path / "runs", seeds=1, rows=["T5-Base"])[0]
    logs = tmp_path / "results" / "mini" / "logs"
    committed = logs / "scaling" / run.run_dir.name
    committed.mkdir(parents=True)
    (committed / "metrics.jsonl").write_text('{"event": "start"}\n{"step": 3000, "nlp": -1.7}\n')
    trained = []
    runner.execute([run], trained.append, echo=lambda m: None, logs_dir=logs)
    assert trained == [run]  # an unfinished log is never taken as a result
    (committed / "metrics.jsonl").write_text('{"event": "start"}\n{"step": 3000, "nlp": -1.7}\n{"event": "done"}\n')
    shutil.rmtree(run.run_dir)  # a fresh clone: no runs/ directory, only the committed logs
    trained.clear()
    runner.execute([run], trained.append, echo=lambda m: None, logs_dir=logs)
    assert trained == [] and runner.run_status(run) == "done"
    assert (run.run_dir / "reused_from.txt").read_text().strip() == str(committed)
    trained.clear()
    other = runner.plan(parse_table("scaling"), "mini", parse_config, tmp_path / "runs", seeds=2, rows=["T5-Base"])[1]
    runner.execute([other], trained.append, echo=lambda m: None, logs_dir=logs)
    assert trained == [other]  # another seed's log is not this run
    # a run that has started is resumed, never overwritten by its twin
    shutil.rmtree(run.run_dir)
    (run.run_dir / "checkpoints").mkdir(parents=True)
    assert runner.run_status(run) == "partial" and runner.reuse_finished_twin(run, logs) is None
    assert sorted(p.name for p in run.run_dir.iterdir()) == ["checkpoints"]
    shutil.rmtree(run.run_dir)
    assert runner.reuse_finished_twin(run, logs) == committed and runner.run_status(run) == "done"


def test_run_collect_plot_report(dirs):
    out = _run(dirs, "table1", "--rows", "T5-Base,Switch-Base cf1.0")
    assert "paper: NLP" in out and "Verdicts:" in out
    df = pd.read_csv(dirs["results"] / "smoke" / "table1.csv")
    assert sorted(df["row"]) == ["Switch-Base cf1.0", "T5-Base"]
    assert df["final_nlp"].notna().all() and (df["final_step"] == 4).all()
    assert df.set_index("row").loc["Switch-Base cf1.0", "num_experts"] == 8
    assert df["host"].str.contains(" CPUs").all()  # each run's CPU and thread layout
    logs = list((dirs["results"] / "smoke" / "logs" / "table1").glob("*/metrics.jsonl"))
    assert len(logs) == 2
    # Rerunning recomputes nothing.
    again = _run(dirs, "table1", "--rows", "T5-Base,Switch-Base cf1.0")
    assert again.count("not recomputed") == 2
    plot = CliRunner().invoke(main, ["plot", "table1", "--scale", "smoke", "--results-dir", str(dirs["results"])])
    assert plot.exit_code == 0, plot.output
    pngs = [p for p in (dirs["results"] / "smoke" / "plots").glob("table1_*.png") if p.stat().st_size > 1000]
    assert any("speed_quality" in p.name for p in pngs) and any("quality_vs_step" in p.name for p in pngs)
    notes = dirs["results"] / "smoke" / "notes"
    notes.mkdir()
    (notes / "table1.json").write_text("{not json")
    rep = CliRunner().invoke(main, ["report", "--scale", "smoke", "--results-dir", str(dirs["results"])])
    assert rep.exit_code == 2 and "table1.json is not valid JSON" in rep.output
    (notes / "_preface.md").write_text("Made on a test machine.")
    (notes / "table1.md").write_text("Table-one note.")
    (notes / "table1.json").write_text(json.dumps({"t1-switch-cf1.0-beats-dense": "one seed only, by design"}))
    rep = CliRunner().invoke(main, ["report", "--scale", "smoke", "--results-dir", str(dirs["results"])])
    assert rep.exit_code == 0, rep.output
    text = (dirs["results"] / "smoke" / "REPORT.md").read_text()
    assert "table1" in text and "inconclusive" in text and "plots/table1_speed_quality.png" in text
    assert "Made on a test machine." in text and "Table-one note." in text
    assert "Why: one seed only, by design." in text
    assert "- CPU and threads: " in text and " CPUs" in text  # the runs' recorded layout
    # A calibration regime is a run's --results-dir under results/<scale>/calibration/<name>/.
    regime = dirs["results"] / "smoke" / "calibration" / "probe-a" / "smoke"
    regime.mkdir(parents=True)
    for f in (dirs["results"] / "smoke").glob("table1*"):
        shutil.copy(f, regime / f.name)
    rep = CliRunner().invoke(main, ["report", "--scale", "smoke", "--results-dir", str(dirs["results"])])
    assert rep.exit_code == 0, rep.output
    text = (dirs["results"] / "smoke" / "REPORT.md").read_text()
    assert "| probe-a | T5-Large beats T5-Base | 0, 1 |" in text and "### Calibration probe-a" in text


def test_collect_only_trains_nothing_and_collects_what_has_finished(tmp_path, cache_root):
    d = {"results": tmp_path / "results", "runs": tmp_path / "runs", "cache": cache_root}
    _run(d, "scaling", "--rows", "T5-Base")
    _run(d, "scaling", "--rows", "Switch 2e", env={"SWITCHREPRO_STOP_AFTER": "3"})  # interrupted: not finished
    shutil.rmtree(next((d["runs"] / "smoke" / "scaling").glob("T5_Base*")))  # as on a fresh clone
    (d["results"] / "smoke" / "scaling.csv").unlink()
    out = _run(d, "scaling", "--rows", "T5-Base,Switch 2e,Switch 4e", "--collect-only")
    assert "training in" not in out and "resuming" not in out
    assert "(1 of " in out  # T5-Base, copied back from its committed log; Switch 2e is still partial
    df = pd.read_csv(d["results"] / "smoke" / "scaling.csv")
    assert list(df["row"]) == ["T5-Base"] and (df["final_step"] == 4).all()
    scaling_runs = d["runs"] / "smoke" / "scaling"
    assert (next(scaling_runs.glob("T5_Base*")) / "reused_from.txt").exists()
    assert not list(scaling_runs.glob("Switch_4e*"))  # nothing created for a run that never started
    partial = next(scaling_runs.glob("Switch_2e*")) / "metrics.jsonl"
    assert '"done"' not in partial.read_text()
    # With one-sitting timings saved (`bench table --save`), collection takes speed and time from them.
    runner.save_speed(d["results"], "smoke", "scaling", pd.DataFrame(
        {"row": ["T5-Base", "T5-Base"], "round": [0, 1], "sec_per_step": [0.5, 0.25], "batch_size": [8, 8]}),
        {"command": "switchrepro bench table scaling --save", "date": "today"})
    before = json.loads((d["results"] / "smoke" / "scaling_meta.json").read_text())
    _run(d, "scaling", "--rows", "T5-Base", "--collect-only")
    df = pd.read_csv(d["results"] / "smoke" / "scaling.csv")
    assert df["examples_per_sec"].tolist() == [16.0] and df["wall_seconds"].tolist() == [2.0]  # seed 0: round 0
    assert df["speed_source"].tolist() == ["bench table"]
    meta = json.loads((d["results"] / "smoke" / "scaling_meta.json").read_text())
    assert "switchrepro bench table scaling --save" in meta["speed"]
    # a collection that trains nothing keeps the saved table's record of the command that made it
    assert (meta["command"], meta["this_invocation_seconds"]) == (before["command"], before["this_invocation_seconds"])


def test_interrupted_row_resumes_to_the_uninterrupted_result(dirs, tmp_path):
    # Killed after step 3 of 4 (checkpoints every 2 steps), then rerun.
    first = _run(dirs, "table11", "--rows", "argmax", env={"SWITCHREPRO_STOP_AFTER": "3"})
    assert "(0 of 4 runs of the table finished)" in first  # table11 at smoke scale: 4 rows x 1 seed
    second = _run(dirs, "table11", "--rows", "argmax")
    assert "resuming" in second and "resuming at step 2" in second
    resumed = pd.read_csv(dirs["results"] / "smoke" / "table11.csv")
    fresh_dirs = {**dirs, "results": tmp_path / "results", "runs": tmp_path / "runs"}
    _run(fresh_dirs, "table11", "--rows", "argmax")
    fresh = pd.read_csv(fresh_dirs["results"] / "smoke" / "table11.csv")
    assert resumed["final_nlp"].tolist() == fresh["final_nlp"].tolist()


def test_diverged_row_is_a_result(dirs):
    out = _run(dirs, "table2", "--rows", "bfloat16", "--gin", "TrainConfig.learning_rate = 1e30",
               "--gin", "TrainConfig.log_every = 1")
    assert "diverged at step" in out
    df = pd.read_csv(dirs["results"] / "smoke" / "table2.csv")
    row = df.set_index("row").loc["bfloat16"]
    assert row["diverged_at"] >= 1 and pd.isna(row["final_nlp"])
    assert "diverged, not recomputed" in _run(dirs, "table2", "--rows", "bfloat16", "--gin",
                                              "TrainConfig.learning_rate = 1e30", "--gin", "TrainConfig.log_every = 1")
    meta = json.loads((dirs["results"] / "smoke" / "table2_meta.json").read_text())
    assert meta["scale"] == "smoke" and meta["rows"] == ["bfloat16"]


def test_dry_run_prints_the_plan(dirs):
    out = _run(dirs, "scaling", "--dry-run")
    assert "Switch 128e" in out and "MFLOPs/example" in out and "estimated total" in out


def test_dry_run_times_runs_from_finished_runs_of_the_same_config(dirs, tmp_path):
    """Finished seed-0 runs time themselves and their seed-1 twins (same config but the seed); runs with
    nothing to time them by are estimated from FLOPs; finished runs are not counted as still to train."""
    base = ["run", "table3", "--scale", "smoke", "--results-dir", str(tmp_path / "results"), "--runs-dir",
            str(tmp_path / "runs"), "--gin", f"DataConfig.cache_dir = '{dirs['cache']}'"]
    assert CliRunner().invoke(main, [*base, "--seeds", "1"]).exit_code == 0
    out = CliRunner().invoke(main, [*base, "--seeds", "2", "--dry-run"])
    assert out.exit_code == 0, out.output
    lines = {tuple(line.split()[:3]): line for line in out.output.splitlines() if line.strip().startswith("init")}
    assert sorted(" ".join(line.split()[-2:]) for line in lines.values()) == ["measured done"] * 2 + [
        "measured new"] * 2, out.output
    assert "for the 2 runs still to train (2 timed from finished runs" in out.output
    # With a binding that changes the config, nothing matches: every run is new and FLOP-estimated.
    out = CliRunner().invoke(main, [*base, "--seeds", "2", "--dry-run", "--gin", "TrainConfig.steps = 6"])
    assert "for the 4 runs still to train (0 timed" in out.output and "at 18.0 forward GFLOP/s" in out.output


@pytest.mark.parametrize("args,message", [
    (["run", "table99"], "unknown table 'table99'"),
    (["run", "table1", "--rows", "Nope"], "has no row 'Nope'"),
    (["run", "table1", "--seeds", "0"], "--seeds must be >= 1"),
    (["plot", "scaling", "--scale", "paper", "--results-dir", "/nonexistent"], "no results for scaling"),
])
def test_runner_bad_input(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_workers_share_a_table_one_core_and_one_thread_each(dirs, tmp_path):
    results, runs_dir = tmp_path / "results", tmp_path / "runs"
    cmd = ["run", "table3", "--scale", "smoke", "--seeds", "1", "--workers", "2", "--results-dir", str(results),
           "--runs-dir", str(runs_dir), "--gin", f"DataConfig.cache_dir = '{dirs['cache']}'"]
    out = CliRunner().invoke(main, cmd)
    assert out.exit_code == 0, out.output
    assert "worker 0: core" in out.output and "worker 1: core" in out.output
    assert "2 of 2 runs of the table finished" in out.output and "Verdicts:" in out.output
    hosts = [json.loads(line) for f in sorted(runs_dir.glob("smoke/table3/*/hosts.jsonl")) for line in f.open()]
    assert len(hosts) == 2  # every run trained exactly once, by one of the workers
    assert all(h["usable_cpus"] == 1 and "intra_op_parallelism_threads=1" in h["xla_flags"] for h in hosts)
    # The source version is recorded with the layout: a git commit here (clones included), else the package.
    assert all(re.fullmatch(r"[0-9a-f]{10}(\+dirty)?|switchrepro \S+", h["code"]) for h in hosts), hosts
    assert len(pd.read_csv(results / "smoke" / "table3.csv")) == 2


def test_workers_refuse_what_they_cannot_do(dirs, tmp_path):
    base = ["run", "table3", "--scale", "smoke", "--results-dir", str(tmp_path / "r"),
            "--runs-dir", str(tmp_path / "x")]
    out = CliRunner().invoke(main, [*base, "--workers", "512"])
    assert out.exit_code != 0 and "--workers 512 needs 512 usable CPU cores" in out.output
    out = CliRunner().invoke(main, [*base, "--workers", "2", "--mesh", "data=1,expert=1"])
    assert out.exit_code != 0 and "cannot be combined with --mesh" in out.output
    assert not (tmp_path / "x").exists()  # nothing trained


def test_training_order_puts_the_positive_control_first_then_goes_seed_by_seed(tmp_path):
    runs = runner.plan(parse_table("scaling"), "mini", parse_config, tmp_path, seeds=3,
                       rows=["T5-Base", "Switch 2e", "Switch 4e", "T5-Large"])
    control = tables.get("scaling").control_rows()
    assert control == ["T5-Large", "T5-Base"] and tables.get("table2").control_rows() == []
    order = [(r.row.name, r.seed) for r in runner.training_order(runs, control)]
    assert order == [("T5-Base", 0), ("T5-Base", 1), ("T5-Base", 2), ("T5-Large", 0), ("T5-Large", 1),
                     ("T5-Large", 2), ("Switch 2e", 0), ("Switch 4e", 0), ("Switch 2e", 1), ("Switch 4e", 1),
                     ("Switch 2e", 2), ("Switch 4e", 2)]
    assert sorted(map(id, runner.training_order(runs))) == sorted(map(id, runs))  # a permutation, nothing lost


def test_apply_speed_takes_each_seeds_speed_from_its_timing_round():
    results = pd.DataFrame({"row": ["A", "A", "A", "B"], "seed": [0, 1, 2, 0], "final_step": [100] * 4,
                            "examples_per_sec": [1.0, 2.0, 3.0, 4.0], "wall_seconds": [9.0] * 4})
    curves = pd.DataFrame({"row": ["A", "A", "B"], "seed": [1, 1, 0], "step": [50, 100, 100],
                           "wall_seconds": [7.0, 9.0, 9.0], "nlp": [-2.0, -1.9, -1.8]})
    timed = pd.DataFrame({"row": ["A", "A"], "round": [1, 0], "sec_per_step": [0.5, 0.25], "batch_size": [8, 8]})
    out, out_curves = runner.apply_speed(results, curves, timed)
    # seed s uses round s mod 2: seeds 0 and 2 round 0 (0.25 s/step), seed 1 round 1 (0.5 s/step)
    assert out["examples_per_sec"].tolist() == [32.0, 16.0, 32.0, 4.0]
    assert out["wall_seconds"].tolist() == [25.0, 50.0, 25.0, 9.0]
    assert out["speed_source"].tolist() == ["bench table"] * 3 + ["training log"]
    assert out_curves["wall_seconds"].tolist() == [25.0, 50.0, 9.0]  # row B has no timing: unchanged
    assert results["examples_per_sec"].tolist() == [1.0, 2.0, 3.0, 4.0]  # inputs untouched
