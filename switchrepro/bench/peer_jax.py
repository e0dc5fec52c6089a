"""`switchrepro bench peer`, the switchrepro side: the worker that times the trainer's step
(`python -m switchrepro.bench.peer_jax`, started by bench/peer.py)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from switchrepro.backends.cpu.allocator import keep_freed_memory
from switchrepro.bench.peer import PeerSpec, make_batch, model_config, serve, versions
from switchrepro.config import TrainConfig
from switchrepro.model.build import init_params
from switchrepro.model.t5 import count_params
from switchrepro.train import host, trainer
from switchrepro.train.expert_path import resolve_model_expert_path


class JaxSide:
    """switchrepro's training step exactly as the trainer builds it (as bench/timing.py's whole_model_rate), on
    the expert path a run would take on this host."""

    def __init__(self, spec: PeerSpec, experts: int):
        cfg = resolve_model_expert_path(model_config(spec, experts))[0]
        tc = TrainConfig()
        model, params = init_params(cfg, jax.random.PRNGKey(spec.seed), inputs_length=spec.inputs_length,
                                    targets_length=spec.targets_length)
        n_params = count_params(params)
        opt = trainer.make_optimizer(tc)
        self.state = trainer.TrainState(step=jnp.int32(0), params=params, opt_state=opt.init(params))
        self.step_fn = trainer.make_train_step(model, opt, tc)
        b = make_batch(spec)
        ones = lambda a: jnp.ones(a.shape, jnp.int32)
        self.batch = {"encoder_input_tokens": jnp.asarray(b["inputs"]), "encoder_segment_ids": ones(b["inputs"]),
                      "decoder_target_tokens": jnp.asarray(b["targets"]),
                      "decoder_input_tokens": jnp.asarray(b["decoder_inputs"]),
                      "decoder_segment_ids": ones(b["targets"]), "decoder_loss_weights": ones(b["targets"])}
        self.key = jax.random.PRNGKey(spec.seed)
        first_s, first_loss = self.step()  # compiles
        self.ready = {"params": n_params, "first_loss": first_loss, "first_step_s": first_s,
                      "versions": {**versions("jax", "jaxlib", "flax", "optax"), "switchrepro": host.code_version()},
                      "backend": jax.default_backend(), "devices": jax.device_count(),
                      "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc": host.describe()["malloc"]}

    def step(self) -> Tuple[float, float]:
        t = time.perf_counter()
        self.state, metrics = self.step_fn(self.state, self.batch, self.key)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - t, float(metrics["loss"])


def start(spec: PeerSpec, job: Dict[str, Any]) -> JaxSide:
    keep_freed_memory()  # as the `switchrepro` commands that train do, before JAX starts its threads
    return JaxSide(spec, job["experts"])


if __name__ == "__main__":
    serve(start)
