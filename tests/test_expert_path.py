"""The expert path is resolved once per run, recorded in config.json and the host description, kept out of the
config hash, and a resume that would take another path stops unless allowed."""

import dataclasses
import json

import pytest

from switchrepro.backends import experts as expert_backend
from switchrepro.backends.cpu.native import expert_gemm
from switchrepro.config import ConfigError, MoeConfig, to_dict
from switchrepro.config.store import config_hash
from switchrepro.data import cache as data_cache
from switchrepro.train import expert_path, trainer


@pytest.fixture(scope="module")
def caches(tiny_experiment):
    data = tiny_experiment().data
    return data_cache.cache_for_config(data, "train"), data_cache.cache_for_config(data, "validation")


def test_resolution_replaces_auto_and_keeps_the_hash(tiny_experiment):
    cfg = tiny_experiment()
    resolved, path = expert_path.resolve_expert_path(cfg)
    here = expert_backend.resolve_expert_path("auto", cfg.model.d_model, cfg.model.d_ff, cfg.model.dtype)
    assert path == here and path in expert_backend.EXPERT_PATHS
    assert resolved.model.moe.expert_matmul == expert_backend.expert_matmul_setting(path)
    assert cfg.model.moe.expert_matmul == "auto"  # the caller's config is left as it was
    assert config_hash(cfg) == config_hash(tiny_experiment())  # the run's hash is the unresolved config's
    if path == "native":
        assert config_hash(resolved) != config_hash(cfg)  # which is why the resolved one is never hashed
    dense = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, moe=None))
    assert expert_path.resolve_expert_path(dense) == (dense, None)
    dropless = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, moe=MoeConfig(num_experts=4,
                                                                                         dispatch="dropless")))
    resolved, path = expert_path.resolve_expert_path(dropless)
    assert path in ("blocks", "ragged_dot") and resolved.model.moe.grouped_matmul == path


def test_a_resume_on_another_path_stops_unless_allowed(tiny_experiment, caches, tmp_path, monkeypatch):
    cfg = tiny_experiment(steps=30, checkpoint_every=10, eval_every=30)
    quiet = lambda s: None
    # The first process: a host without the native kernels (XLA's dot; every host can run it).
    with monkeypatch.context() as m:
        m.setattr(expert_gemm, "unavailable_reason", lambda: "no AVX-512F (test)")
        trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=quiet, stop_after=15)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["expert_path"] == "xla"
    # the unresolved config (as config.store saves it) beside the recorded path
    assert {k: v for k, v in saved.items() if k != "expert_path"} == json.loads(json.dumps(to_dict(cfg)))
    hosts = [json.loads(ln) for ln in (tmp_path / "hosts.jsonl").read_text().splitlines()]
    assert [h["expert_path"] for h in hosts] == ["xla"]

    # The resume: a host that would take another path.
    monkeypatch.setattr(expert_backend, "resolve_expert_path", lambda *args: "batched")
    with pytest.raises(ConfigError) as stop:
        trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=quiet)
    message = str(stop.value)
    assert "\n" not in message and "'xla'" in message and "'batched'" in message
    assert message.endswith("pass --allow-expert-path-change to continue on batched")
    assert json.loads((tmp_path / "config.json").read_text())["expert_path"] == "xla"  # nothing trained

    messages = []
    result = trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=messages.append,
                           allow_expert_path_change=True)
    assert any("resuming at step 10" in m for m in messages) and "expert path: batched" in messages
    assert result.diverged_at is None and result.final["step"] == 30
    assert json.loads((tmp_path / "config.json").read_text())["expert_path"] == "batched"
    hosts = [json.loads(ln) for ln in (tmp_path / "hosts.jsonl").read_text().splitlines()]
    assert [(h["resumed_at_step"], h["expert_path"]) for h in hosts] == [(0, "xla"), (10, "batched")]

    # A finished run trains nothing, so it is neither checked nor written (committed runs stay as they are).
    before = (tmp_path / "config.json").read_text()
    monkeypatch.setattr(expert_backend, "resolve_expert_path", lambda *args: "loop")
    trainer.train(cfg, tmp_path, train_cache=caches[0], eval_cache=caches[1], echo=quiet)
    assert (tmp_path / "config.json").read_text() == before
