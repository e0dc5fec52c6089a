"""The model a ModelConfig names, and its parameters: the one place that knows both architectures.

model/t5.py (encoder-decoder) and model/decoder_only.py (built from t5.py's pieces) know nothing of each
other's callers; whoever needs "the model for this config" comes here, so neither imports the other back.

    model = build_model(cfg, mesh)            Transformer or DecoderOnly, by ModelConfig.architecture
    model, params = init_params(cfg, rng)     parameters of either, logical axis names stripped
    axes = logical_axes(cfg)                  the matching pytree of logical axis-name tuples
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from switchrepro.config import ModelConfig
from switchrepro.model.decoder_only import DecoderOnly
from switchrepro.model.t5 import Transformer, dummy_batch

Array = jax.Array


def build_model(cfg: ModelConfig, mesh: Any = None) -> nn.Module:
    """The model ModelConfig.architecture names: Transformer (encoder-decoder) or DecoderOnly."""
    return DecoderOnly(cfg, mesh=mesh) if cfg.architecture == "decoder_only" else Transformer(cfg, mesh=mesh)


def init_params(cfg: ModelConfig, rng: Array, batch_size: int = 2, inputs_length: int = 16,
                targets_length: int = 8):
    """(model, params) for `cfg` (either architecture): params initialised from rng on a dummy batch of
    `<int32>[batch_size, inputs_length]` inputs and `[batch_size, targets_length]` targets, boxed with
    logical axis names stripped."""
    model = build_model(cfg)
    dummy = dummy_batch(batch_size, inputs_length, targets_length)
    variables = model.init({"params": rng}, dummy, deterministic=True)
    return model, nn.meta.unbox(variables["params"])


def logical_axes(cfg: ModelConfig, inputs_length: int = 16, targets_length: int = 8):
    """Pytree of logical axis-name tuples, matching `init_params`' params (shapes only: nothing is computed)."""
    model = build_model(cfg)
    abstract = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                                 dummy_batch(2, inputs_length, targets_length), deterministic=True))
    return nn.get_partition_spec(abstract)["params"]
