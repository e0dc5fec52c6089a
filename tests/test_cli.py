"""The command line end to end through Click's CliRunner, and its one-line errors (exit status 2)."""

import json
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from switchrepro.api import parse_config
from switchrepro.cli import main
from switchrepro.config.store import config_from_dict, config_hash, load_run_config
from switchrepro.data import cache as data_cache
from switchrepro.train import inspect as inspect_lib
from switchrepro.train.inspect import agreement

TINY = ["--gin-file", "models/tiny_switch.gin",
        "--gin", "ModelConfig.d_model = 64", "--gin", "ModelConfig.d_ff = 128", "--gin", "ModelConfig.num_heads = 2",
        "--gin", "ModelConfig.d_kv = 16", "--gin", "MoeConfig.num_experts = 4",
        "--gin", "DataConfig.inputs_length = 64", "--gin", "DataConfig.targets_length = 16",
        "--gin", "DataConfig.batch_size = 16", "--gin", "DataConfig.eval_examples = 64",
        "--gin", "DataConfig.max_train_examples = 2048",
        "--gin", "TrainConfig.steps = 12", "--gin", "TrainConfig.eval_every = 6",
        "--gin", "TrainConfig.checkpoint_every = 6", "--gin", "TrainConfig.log_every = 3"]


def _cache(cache_root):
    return ["--gin", f"DataConfig.cache_dir = '{cache_root}'"]


@pytest.fixture(scope="module")
def trained(cache_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(main, ["train", *TINY, *_cache(cache_root), "--run-dir", str(run_dir),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    return run_dir, result.output


def test_train_writes_run_directory_and_prints_quality(trained):
    run_dir, output = trained
    assert "held-out neg. log perplexity" in output
    assert "expert capacity per layer" in output
    assert "cpu backend, 8 device(s)" in output  # tests/conftest.py simulates 8 CPU devices
    for name in ("config.gin", "config.json", "command.txt", "metrics.jsonl"):
        assert (run_dir / name).is_file()
    assert "MoeConfig.num_experts = 4" in (run_dir / "config.gin").read_text()
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["event"] == "done" and rows[-1]["step"] == 12
    assert (run_dir / "checkpoints" / "12").is_dir()


def test_rerun_is_a_no_op_resume(trained, cache_root):
    run_dir, first = trained
    result = CliRunner().invoke(main, ["train", *TINY, *_cache(cache_root), "--run-dir", str(run_dir),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "resuming at step 12" in result.output
    quality = lambda out: [ln for ln in out.splitlines() if "held-out" in ln][0].split("|")[1]
    assert quality(result.output) == quality(first)


def test_eval_command_scores_the_checkpoint(trained):
    run_dir, output = trained
    result = CliRunner().invoke(main, ["eval", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "step 12: held-out neg. log perplexity" in result.output
    final = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert f"{final['eval_neg_log_perplexity']:.4f}" in result.output


def test_changed_config_in_existing_run_dir_is_refused(trained, cache_root):
    run_dir, _ = trained
    result = CliRunner().invoke(main, ["train", *TINY, *_cache(cache_root), "--gin", "TrainConfig.steps = 13",
                                       "--run-dir", str(run_dir)])
    assert result.exit_code == 2 and "different configuration" in result.output


def test_run_dir_saved_before_an_option_existed_is_resumed(trained, cache_root, tmp_path):
    # A run saved before model.attention / model.architecture / cooldown_steps existed holds their neutral values.
    run_dir = tmp_path / "old"
    shutil.copytree(trained[0], run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    for section, name in (("model", "attention"), ("model", "architecture"), ("train", "cooldown_steps")):
        del saved[section][name]
    (run_dir / "config.json").write_text(json.dumps(saved))
    result = CliRunner().invoke(main, ["train", *TINY, *_cache(cache_root), "--run-dir", str(run_dir),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "config.json").read_text())["model"]["attention"] == "standard"
    saved["model"]["attention"] = "selective"  # a non-neutral difference is still refused
    (run_dir / "config.json").write_text(json.dumps(saved))
    result = CliRunner().invoke(main, ["train", *TINY, *_cache(cache_root), "--run-dir", str(run_dir)])
    assert result.exit_code == 2 and "different configuration" in result.output


def _garble(checkpoint_dir):
    for f in checkpoint_dir.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")


def test_eval_falls_back_past_a_damaged_newest_checkpoint(trained, tmp_path):
    run_dir = tmp_path / "broken"
    shutil.copytree(trained[0], run_dir)
    _garble(run_dir / "checkpoints" / "12")
    result = CliRunner().invoke(main, ["eval", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"checkpoint step 12 in {run_dir / 'checkpoints'} does not restore (")
    assert lines[0].endswith("using step 6") and lines[1].startswith("step 6: held-out neg. log perplexity")
    assert (run_dir / "checkpoints" / "12").is_dir()  # eval only reads: nothing is moved


def test_unreadable_checkpoint_is_a_clear_error(trained, tmp_path):
    run_dir = tmp_path / "broken"
    shutil.copytree(trained[0], run_dir)
    for step in ("6", "12"):
        _garble(run_dir / "checkpoints" / step)
    result = CliRunner().invoke(main, ["eval", "--run-dir", str(run_dir)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no checkpoint in") and "Traceback" not in result.output
    assert len(lines[0].replace(str(run_dir), "")) <= 200
    assert lines[0].endswith(f"(full error in {run_dir / 'errors.log'})")
    detail = (run_dir / "errors.log").read_text()
    assert "switchrepro" in detail.splitlines()[0] and "Error" in detail  # the command, then the library's error


@pytest.mark.parametrize("args,message", [
    (["--gin-file", "models/no_such_model.gin"], "gin file 'models/no_such_model.gin' not found"),
    (["--gin-file", "models/tiny_switch.gin", "--gin", "MoeConfig.no_such_field = 3"], "gin:"),
    (["--gin-file", "models/tiny_switch.gin", "--gin", "NoSuchConfig.x = 3"], "gin:"),
    (["--gin-file", "models/tiny_switch.gin", "--gin", "MoeConfig.capacity_factor_train = 0.0"],
     "capacity_factor_train must be > 0"),
    (["--gin-file", "models/tiny_switch.gin", "--gin", "MoeConfig.num_experts = -2"],
     "num_experts must be a positive integer"),
    (["--gin-file", "models/tiny_switch.gin", "--gin", "DataConfig.task = 'c4_span_corruption'"], "tfds"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(main, ["train", *args, "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output


def test_feature_lengths_the_data_cannot_fill(cache_root, tmp_path):
    result = CliRunner().invoke(main, ["train", *TINY, *_cache(cache_root), "--gin",
                                       "DataConfig.max_train_examples = 4", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "fewer than one batch" in result.output


def test_missing_tfds_directory(tmp_path):
    result = CliRunner().invoke(main, ["train", "--gin-file", "models/tiny_switch.gin", "--gin",
                                       "DataConfig.task = 'c4_span_corruption'", "--tfds-data-dir",
                                       str(tmp_path / "nope"), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output


def test_data_info_summarises_the_embedded_corpus():
    result = CliRunner().invoke(main, ["data", "info"])
    assert result.exit_code == 0, result.output
    assert "embedded corpus: 4,553 docs (train 4,413 / validation 140)" in result.output
    assert "sotu 0.2.3" in result.output and "brown 1.9.80" in result.output


def test_inspect_reports_ffn_branches_and_router_stability(trained):
    run_dir, _ = trained
    result = CliRunner().invoke(main, ["inspect", "--run-dir", str(run_dir), "--examples", "16"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("|") and "step" not in ln and "---" not in ln]
    # tiny_switch: 2 + 2 FFN layers, layer 1 of each stack sparse; two kept checkpoints (steps 6 and 12).
    assert len(lines) == 8
    sparse_12 = [ln for ln in lines if ln.split("|")[1].strip() == "12" and "True" in ln]
    assert len(sparse_12) == 2
    for ln in sparse_12:
        cells = [c.strip() for c in ln.split("|")[1:-1]]
        gate, uniform, dropped, same = map(float, cells[6:10])
        assert uniform == 0.25 and 0 < gate <= 1 and 0 <= dropped <= 1 and 0 <= same <= 1


def test_inspect_same_checkpoint_twice_agrees_fully_and_bad_steps_are_refused(trained):
    run_dir, _ = trained
    cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    batch, _ = next(data_cache.eval_batches(data_cache.cache_for_config(cfg.data, "validation"), 8, 8))
    table = inspect_lib.inspect_run(cfg, run_dir, batch, steps=[12, 12])
    again = table[(table["sparse"]) & table["same_expert_as_previous"].notna()]
    assert len(again) == 2 and (again["same_expert_as_previous"] == 1.0).all()
    result = CliRunner().invoke(main, ["inspect", "--run-dir", str(run_dir), "--steps", "7"])
    assert result.exit_code == 2 and "checkpoint steps [7] not in" in result.output


def test_agreement_on_literal_choices():
    a = [[0, 1, 2, 3], [1, 1, 0, 0]]
    b = [[0, 2, 2, 0], [1, 0, 9, 9]]
    mask = [[True, True, True, True], [True, True, False, False]]
    assert agreement(a, b, mask) == 3 / 6  # same at (0,0), (0,2), (1,0); the padded pair is ignored


def test_bench_table_times_each_row_and_adds_up_the_estimate(tmp_path):
    out_file = tmp_path / "bench.md"
    out = CliRunner().invoke(main, ["bench", "table", "scaling", "--scale", "smoke", "--rows", "T5-Base",
                                    "--steps", "2", "--output", str(out_file)])
    assert out.exit_code == 0, out.output
    text = out_file.read_text()
    rows = [ln.split("|")[1:-1] for ln in text.splitlines() if ln.startswith("| T5-Base")]
    assert len(rows) == 1
    _, params, rate, sec_per_step, spread, plan, minutes = rows[0]
    assert plan.strip() == "4 x 1" and int(params.replace(",", "")) > 0  # smoke: 4 steps, 1 seed
    assert spread.strip() == "-"  # one round
    # smoke batch 8; s/step is printed with 3 decimals, so a fast machine's value is off by up to 5e-4
    assert float(sec_per_step) == pytest.approx(8 / float(rate), rel=0.02, abs=6e-4)
    assert float(minutes) == pytest.approx(4 * float(sec_per_step) / 60, abs=0.051)
    assert f"| **all** | | | | | | **{minutes.strip()}** |" in text
    assert "cpu backend" in text and "CPUs" in text  # where it was measured
    # --gin times a candidate regime: here 6 steps of batch 4 instead of the smoke scale's 4 of 8
    out = CliRunner().invoke(main, ["bench", "table", "scaling", "--scale", "smoke", "--rows", "T5-Base",
                                    "--steps", "2", "--gin", "TrainConfig.steps = 6",
                                    "--gin", "DataConfig.batch_size = 4"])
    assert out.exit_code == 0, out.output
    _, _, rate, sec_per_step, _, plan, _ = next(ln.split("|")[1:-1] for ln in out.output.splitlines()
                                                if ln.startswith("| T5-Base"))
    assert plan.strip() == "6 x 1" and float(sec_per_step) == pytest.approx(4 / float(rate), rel=0.02, abs=6e-4)
    bad = CliRunner().invoke(main, ["bench", "table", "table3", "--rows", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_bench_table_save_times_every_row_in_rounds_and_run_uses_it(tmp_path):
    results = tmp_path / "results"
    out = CliRunner().invoke(main, ["bench", "table", "table2", "--scale", "smoke", "--steps", "1", "--rounds", "2",
                                    "--save", "--results-dir", str(results)])
    assert out.exit_code == 0, out.output
    timed = pd.read_csv(results / "smoke" / "table2_speed.csv")
    assert len(timed) == 2 * timed["row"].nunique() and sorted(set(timed["round"])) == [0, 1]
    assert (timed["sec_per_step"] > 0).all()
    meta = json.loads((results / "smoke" / "table2_speed.json").read_text())
    assert meta["rounds"] == 2 and meta["steps"] == 1 and meta["command"].startswith("switchrepro")
    for bad_args in (["--rows", "float32"], ["--rounds", "1"], ["--gin", "TrainConfig.steps = 2"]):
        bad = CliRunner().invoke(main, ["bench", "table", "table2", "--scale", "smoke", "--save",
                                        "--results-dir", str(results), *bad_args])
        assert bad.exit_code == 2 and bad.output.startswith("error: --save times the table as it is run"), bad.output


# The teacher's shapes, dense: TINY without its gin file and its MoeConfig binding.
STUDENT = ["--gin-file", "models/tiny_dense.gin"] + [
    a for i, a in enumerate(TINY)
    if i >= 2 and "MoeConfig" not in a and "MoeConfig" not in (TINY[i + 1:i + 2] or [""])[0]]


def test_distill_trains_a_dense_student_from_the_switch_teacher(trained, cache_root, tmp_path):
    teacher_dir, _ = trained
    student_dir = tmp_path / "student"
    args = ["distill", *STUDENT, *_cache(cache_root), "--teacher-run", str(teacher_dir), "--run-dir",
            str(student_dir), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "student initialised from the teacher:" in result.output
    saved = json.loads((student_dir / "config.json").read_text())
    assert saved["model"]["moe"] is None
    assert saved["distill"] == {"teacher": config_hash(load_run_config(teacher_dir)), "teacher_weight": 0.25,
                                "temperature": 1.0, "init_from_teacher": True}
    # the saved operative config rebuilds the student's configuration
    rebuilt = parse_config([str(student_dir / "config.gin")], [])[0]
    assert config_hash(rebuilt) == config_hash(load_run_config(student_dir))
    rows = [json.loads(line) for line in (student_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and rows[0]["init_from_teacher"]["copied"] > 0
    trained_rows = [r for r in rows if "distillation_loss" in r]
    assert trained_rows and all(r["distillation_loss"] > 0 for r in trained_rows)
    assert rows[-1]["event"] == "done"
    again = CliRunner().invoke(main, args)  # finished: a no-op resume
    assert again.exit_code == 0 and "student initialised" not in again.output


@pytest.mark.parametrize("case", ["no checkpoint", "other task", "missing"])
def test_distill_bad_teacher_is_one_line_and_exit_2(trained, cache_root, tmp_path, case):
    teacher_dir, _ = trained
    student = [*STUDENT, *_cache(cache_root)]
    if case == "no checkpoint":
        bare = tmp_path / "bare"
        bare.mkdir()
        shutil.copy(teacher_dir / "config.json", bare / "config.json")
        teacher, expect = bare, "no checkpoint in"
    elif case == "other task":
        student += ["--gin", "DataConfig.task = 'switchrepro_byte_span_corruption'",
                    "--gin", "ModelConfig.vocab_size = 384"]
        teacher, expect = teacher_dir, "teacher and student must share the task and vocabulary"
    else:
        teacher, expect = tmp_path / "nowhere", "does not exist"
    result = CliRunner().invoke(main, ["distill", *student, "--teacher-run", str(teacher), "--run-dir",
                                       str(tmp_path / "s"), "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], result.output
    assert not (tmp_path / "s").exists()


# Fine-tuning the `trained` model (TINY, spm8k) on the offline sentiment task.
FINETUNE = [*TINY[:-8], "--gin", "DataConfig.task = 'switchrepro_sentiment'",
            "--gin", "DataConfig.max_train_examples = 256", "--gin", "TrainConfig.steps = 4",
            "--gin", "TrainConfig.eval_every = 2", "--gin", "TrainConfig.log_every = 2",
            "--gin", "TrainConfig.checkpoint_every = 2", "--gin", "ModelConfig.dropout_rate = 0.1",
            "--gin", "MoeConfig.expert_dropout = 0.4", "--gin", "FinetuneConfig.decode_examples = 16"]


def test_finetune_decodes_scores_and_reports_the_peak(trained, cache_root, tmp_path):
    pre_dir, _ = trained
    run_dir = tmp_path / "ft"
    args = ["finetune", *FINETUNE, *_cache(cache_root), "--pretrained-run", str(pre_dir), "--run-dir", str(run_dir),
            "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "fine-tuning from the pre-trained run" in result.output and "peak validation score" in result.output
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["finetune"]["pretrained"] == config_hash(load_run_config(pre_dir))
    # the saved operative config rebuilds the run's configuration
    assert config_hash(parse_config([str(run_dir / "config.gin")], [])[0]) == config_hash(load_run_config(run_dir))
    assert saved["model"]["dropout_rate"] == 0.1 and saved["model"]["moe"]["expert_dropout"] == 0.4
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_score" in r and "event" not in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 <= r["eval_accuracy"] <= 100 and r["eval_score"] == r["eval_accuracy"] for r in evals)
    assert all(r["eval_decoded_examples"] == 16 for r in evals)
    done = rows[-1]
    assert done["event"] == "done" and done["peak_eval_score"] == max(r["eval_score"] for r in evals)
    preds = [json.loads(line) for line in (run_dir / "predictions" / "step_4.jsonl").read_text().splitlines()]
    assert len(preds) == 16 and all(p["target"] in ("positive", "negative") for p in preds)
    # the logged accuracy is the share of predictions equal to their target
    assert evals[-1]["eval_accuracy"] == pytest.approx(100 * sum(p["prediction"] == p["target"] for p in preds) / 16,
                                                       abs=0.01)


@pytest.mark.parametrize("case", ["no checkpoint", "pre-training task", "unknown task", "other shape", "missing"])
def test_finetune_bad_input_is_one_line_and_exit_2(trained, cache_root, tmp_path, case):
    pre_dir, _ = trained
    args, pre = [*FINETUNE, *_cache(cache_root)], pre_dir
    if case == "no checkpoint":
        pre = tmp_path / "bare"
        pre.mkdir()
        shutil.copy(pre_dir / "config.json", pre / "config.json")
        expect = "no checkpoint in"
    elif case == "pre-training task":
        args += ["--gin", "DataConfig.task = 'switchrepro_span_corruption'"]
        expect = "is not a downstream (text-to-text) task"
    elif case == "unknown task":
        args += ["--gin", "DataConfig.task = 'nope'"]
        expect = "is not a downstream (text-to-text) task"
    elif case == "other shape":
        args += ["--gin", "ModelConfig.d_ff = 96"]
        expect = "in the pre-trained model but"
    else:
        pre, expect = tmp_path / "nowhere", "does not exist"
    result = CliRunner().invoke(main, ["finetune", *args, "--pretrained-run", str(pre), "--run-dir",
                                       str(tmp_path / "f"), "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], result.output
    assert not (tmp_path / "f").exists()
