"""Training end to end on the embedded corpus: learning, determinism, kill-and-resume, no TensorFlow."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from switchrepro.cli import load_caches
from switchrepro.data import cache as data_cache
from switchrepro.train import trainer

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
    assert before["eval_neg_log_perplexity"] < -8.0
    assert after > before["eval_neg_log_perplexity"] + 1.5
    evals = [r["eval_neg_log_perplexity"] for r in _rows(run_dir) if "eval_neg_log_perplexity" in r
             and "event" not in r]
    assert len(evals) == 2 and evals[1] > evals[0]  # steps 30 and 60
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


def test_kill_and_resume_matches_uninterrupted(reference_run, caches, tmp_path):
    cfg, run_dir, _ = reference_run
    # "Killed" after step 55: the last checkpoint is step 40, so the row logged at step 50 must be discarded
    # and steps 41-55 replayed exactly.
    trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], stop_after=55, echo=lambda s: None)
    assert max(r["step"] for r in _rows(tmp_path)) == 50
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["20", "40"]
    messages = []
    trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=messages.append)
    assert any("resuming at step 40" in m for m in messages)
    assert _rows(tmp_path) == _rows(run_dir)


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
        from switchrepro.cli import config_from_dict, load_caches
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
    from switchrepro.config import TrainConfig

    s = trainer.learning_rate_schedule(TrainConfig(learning_rate=1.0, warmup_steps=100))
    assert float(s(0)) == pytest.approx(0.1) and float(s(99)) == pytest.approx(0.1)
    assert float(s(399)) == pytest.approx(0.05)
    lin = trainer.learning_rate_schedule(TrainConfig(learning_rate=1.0, warmup_steps=100, linear_warmup=True))
    assert float(lin(49)) == pytest.approx(0.05)
