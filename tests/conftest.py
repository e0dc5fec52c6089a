"""Shared fixtures. Tests run on CPU only; a small numpy cache is materialised once per session."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 simulated CPU devices for the mesh tests (tests/test_parallel.py); must be set before jax starts.
# One-device code runs on device 0 as before.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import dataclasses  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from switchrepro.config import DataConfig, ExperimentConfig, ModelConfig, MoeConfig, TrainConfig  # noqa: E402
from switchrepro.train.checkpoint import ignore_closed_loop_callbacks  # noqa: E402

# Installed before pytest's own unraisable-exception hook, which restores it at exit: the damaged-checkpoint
# tests leave tensorstore reads that call back into a closed event loop during interpreter shutdown.
ignore_closed_loop_callbacks()

TINY_MODEL = ModelConfig(vocab_size=8192, d_model=64, d_ff=128, num_heads=2, d_kv=16,
                         num_encoder_layers=2, num_decoder_layers=2)
TINY_MOE = MoeConfig(num_experts=4, group_size=256)


@pytest.fixture
def cheap_compiles():
    """For modules that compile hundreds of tiny programs, where XLA's optimisation passes dominate."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """A session-wide cache directory (materialisation runs once per feature-length set)."""
    root = os.environ.get("SWITCHREPRO_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    return root


@pytest.fixture(scope="session")
def tiny_experiment(cache_root):
    """A config that trains in seconds: 64 input / 16 target tokens, batch 16, 2+2 layers of width 64."""

    def make(moe=TINY_MOE, steps=60, **train_kw):
        model = dataclasses.replace(TINY_MODEL, moe=moe)
        data = DataConfig(inputs_length=64, targets_length=16, batch_size=16, eval_examples=64,
                          cache_dir=cache_root, max_train_examples=2048)
        train_kw = {"warmup_steps": 20, "learning_rate": 1.0, "eval_every": 30, "checkpoint_every": 20,
                    "log_every": 10, "progress": False, **train_kw}
        train = TrainConfig(steps=steps, **train_kw)
        return ExperimentConfig(model=model, data=data, train=train)

    return make
