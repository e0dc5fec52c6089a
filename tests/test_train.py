"""Training end to end on the embedded corpus: learning, determinism, kill-and-resume, no TensorFlow."""

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from switchrepro.api import load_caches
from switchrepro.config import TrainConfig
from switchrepro.data import cache as data_cache
from switchrepro.experiments.planning import PlannedRun, run_status
from switchrepro.train import trainer
from switchrepro.train.checkpoint import CheckpointError
from switchrepro.train.metrics_log import MetricsError, read_metrics

TIMING = {"examples_per_sec", "tokens_per_sec", "wall_seconds"}


def _rows(run_dir):
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def caches(tiny_experiment):
    return load_caches(tiny_experiment(), echo=lambda s: None)


@pytest.fixture(scope="module")
def reference_run(tiny_experiment, caches, tmp_path_factory):
    cfg = tiny_experiment()
    run_dir = tmp_path_factory.mktemp("reference")
    result = trainer.train(cfg, run_dir, train_cache=caches[0], eval_cache=caches[1], echo=lambda s: None)
    return cfg, run_dir, result


def test_training_lowers_held_out_loss(reference_run, caches):
    cfg, run_dir, result = reference_run
    model, _, state, _ = trainer.initial_state(cfg)
    before = trainer.evaluate(trainer.make_eval_step(model), state.params,
                              data_cache.eval_batches(caches[1], cfg.data.batch_size, cfg.data.eval_examples))
    after = result.final["eval_neg_log_perplexity"]
    # Initial quality is about -ln(8192) = -9.0 nats; 60 steps of Adafactor must gain well over a nat.
    # (No comparison of two nearby evaluations: their order depends on the CPU and its threads.)
    assert before["eval_neg_log_perplexity"] < -8.0
    assert after > before["eval_neg_log_perplexity"] + 1.5
    evals = [r for r in _rows(run_dir) if "eval_neg_log_perplexity" in r and "event" not in r]
    assert [r["step"] for r in evals] == [30, 60]
    assert all(r["eval_neg_log_perplexity"] > before["eval_neg_log_perplexity"] + 1.0 for r in evals)
    assert result.diverged_at is None
    done = _rows(run_dir)[-1]
    assert done["event"] == "done" and done["eval_neg_log_perplexity"] == after
    # The MoE diagnostics are logged per layer.
    last = [r for r in _rows(run_dir) if "eval_moe_layers" in r][-1]
    assert set(last["eval_moe_layers"]) == {"encoder_layer_1", "decoder_layer_1"}
    assert len(last["eval_moe_layers"]["encoder_layer_1"]["tokens_per_expert"]) == 4


def test_same_command_twice_gives_identical_metrics(reference_run, caches, tmp_path):
    cfg, run_dir, _ = reference_run
    trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=lambda s: None)
    assert _rows(tmp_path) == _rows(run_dir)


def test_kill_and_resume_matches_uninterrupted(reference_run, interrupted_run, caches, tmp_path):
    cfg, run_dir, _ = reference_run
    # "Killed" after step 55: the last checkpoint is step 40, so the row logged at step 50 must be discarded
    # and steps 41-55 replayed exactly.
    _interrupted(interrupted_run, tmp_path)
    assert max(r["step"] for r in _rows(tmp_path)) == 50
    messages = []
    trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=messages.append)
    assert any("resuming at step 40" in m for m in messages)
    assert _rows(tmp_path) == _rows(run_dir)
    # Each process that trained the run recorded its CPU and thread layout.
    hosts = [json.loads(ln) for ln in (tmp_path / "hosts.jsonl").read_text().splitlines()]
    assert [h["resumed_at_step"] for h in hosts] == [0, 40]
    start = _rows(tmp_path)[0]
    assert start["event"] == "start" and start["host"] == {k: v for k, v in hosts[0].items()
                                                           if k not in ("resumed_at_step", "time")}
    assert start["host"]["usable_cpus"] >= 1 and start["host"]["cpu"] and start["host"]["backend"] == "cpu"


def test_divergence_is_a_result_not_a_crash(tiny_experiment, caches, tmp_path):
    cfg = tiny_experiment(steps=20, learning_rate=1e30)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, log_every=1))
    result = trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=lambda s: None)
    assert result.diverged_at is not None and result.diverged_at <= 20
    assert _rows(tmp_path)[-1] == {"step": result.diverged_at, "event": "diverged"}


def test_training_process_imports_no_tensorflow(tiny_experiment, caches, tmp_path):
    """The trainer reads the numpy cache only: a fresh process trains without importing TensorFlow."""
    cfg = tiny_experiment(steps=2)
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from switchrepro.api import load_caches
        from switchrepro.config.store import config_from_dict
        from switchrepro.train import trainer
        cfg = config_from_dict(json.loads({json.dumps(json.dumps(dataclasses.asdict(cfg)))}))
        tr, ev = load_caches(cfg, echo=lambda s: None)
        trainer.train(cfg, Path({str(tmp_path)!r}), train_cache=tr, eval_cache=ev, echo=lambda s: None)
        bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio', 't5', 'tensorflow_datasets'))
        print(json.dumps(bad))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_learning_rate_schedule_is_inverse_square_root():
    s = trainer.learning_rate_schedule(TrainConfig(learning_rate=1.0, warmup_steps=100))
    assert float(s(0)) == pytest.approx(0.1) and float(s(99)) == pytest.approx(0.1)
    assert float(s(399)) == pytest.approx(0.05)
    lin = trainer.learning_rate_schedule(TrainConfig(learning_rate=1.0, warmup_steps=100, linear_warmup=True))
    assert float(lin(49)) == pytest.approx(0.05)


def test_cooldown_decays_the_last_steps_linearly_and_never_to_zero():
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=100, steps=400, cooldown_steps=100)
    s, plain = trainer.learning_rate_schedule(cfg), trainer.learning_rate_schedule(TrainConfig(warmup_steps=100))
    assert float(s(299)) == pytest.approx(float(plain(299)))  # untouched before the cooldown
    # count 349 is update 350 of 400: 51 of the 100 cooldown updates are left, counting this one.
    assert float(s(349)) == pytest.approx(0.51 / 350 ** 0.5)
    assert float(s(399)) == pytest.approx(0.01 / 20.0)  # the last update: 1/100 of rsqrt(400)
    with pytest.raises(ValueError, match="cooldown_steps"):
        TrainConfig(steps=10, cooldown_steps=11).validate()


# ------------------------------------------------------------------ damaged run state: replay, never crash


@pytest.fixture(scope="module")
def interrupted_run(reference_run, caches, tmp_path_factory):
    """A run "killed" after step 55: checkpoints 20 and 40, metrics logged up to step 50."""
    cfg, _, _ = reference_run
    run_dir = tmp_path_factory.mktemp("interrupted")
    trainer.train(cfg, run_dir, train_cache=caches[0], eval_cache=caches[1], stop_after=55, echo=lambda s: None)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["20", "40"]
    return run_dir


def _interrupted(interrupted_run, run_dir):
    shutil.copytree(interrupted_run, run_dir, dirs_exist_ok=True)


def _damage(checkpoint_dir):
    """Truncates the checkpoint's data files, as a crash or a full disk would."""
    files = [f for f in (checkpoint_dir / "default" / "d").iterdir() if f.is_file()]
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:100])


def test_torn_last_metrics_line_is_dropped_and_replayed(reference_run, interrupted_run, caches, tmp_path):
    cfg, run_dir, _ = reference_run
    _interrupted(interrupted_run, tmp_path)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 51, "loss": 4.2')  # killed while writing
    assert runner_status(tmp_path) == "partial"  # readers skip the torn line
    messages = []
    trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=messages.append)
    assert any("half-written line" in m for m in messages)
    assert _rows(tmp_path) == _rows(run_dir)


def test_torn_done_line_is_rewritten(reference_run, caches, tmp_path):
    cfg, run_dir, _ = reference_run
    shutil.copytree(run_dir, tmp_path, dirs_exist_ok=True)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "done"
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    result = trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=lambda s: None)
    assert _rows(tmp_path) == _rows(run_dir)
    assert result.final["eval_neg_log_perplexity"] == _rows(run_dir)[-1]["eval_neg_log_perplexity"]


def test_damaged_line_inside_metrics_is_a_one_line_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "event": "start"}\n{"step": 10, "lo\n{"step": 20}\n')
    with pytest.raises(MetricsError, match="line 2 of 3 is not a JSON object") as e:
        read_metrics(path)
    assert "\n" not in str(e.value)
    path.write_text('{"step": 0, "event": "start"}\n{"step": 10}\n{"step": 20, "lo')
    assert read_metrics(path) == [{"step": 0, "event": "start"}, {"step": 10}]


def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(reference_run, interrupted_run, caches, tmp_path):
    cfg, run_dir, _ = reference_run
    _interrupted(interrupted_run, tmp_path)
    _damage(tmp_path / "checkpoints" / "40")
    messages = []
    trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=messages.append)
    notes = [m for m in messages if "does not restore" in m]
    assert len(notes) == 1 and "checkpoint step 40" in notes[0] and notes[0].endswith("using step 20")
    assert len(notes[0].replace(str(tmp_path), "")) <= 200
    assert any("resuming at step 20" in m for m in messages)
    assert _rows(tmp_path) == _rows(run_dir)  # replayed from step 20: the uninterrupted run's metrics
    assert (tmp_path / "damaged_checkpoints" / "40" / "default").is_dir()  # moved aside, not deleted


def test_no_checkpoint_restores_is_one_short_error(reference_run, interrupted_run, caches, tmp_path):
    cfg, _, _ = reference_run
    _interrupted(interrupted_run, tmp_path)
    for step in ("20", "40"):
        _damage(tmp_path / "checkpoints" / step)
    with pytest.raises(CheckpointError) as e:
        trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=lambda s: None)
    message = str(e.value)
    assert message.startswith(f"no checkpoint in {tmp_path / 'checkpoints'} restores (step 40: ")
    assert "\n" not in message and len(message.replace(str(tmp_path), "")) <= 200
    assert len(e.value.detail) > len(message)  # the full library error, for the run's errors.log
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["20", "40"]


def runner_status(run_dir):
    return run_status(PlannedRun(None, 0, None, "", "", run_dir))
