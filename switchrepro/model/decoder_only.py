"""A decoder-only language model built from the T5 pieces (model/t5.py), for selective attention's
experiments: the paper's models are decoder-only, and context pruning needs a key/value cache.

Same conventions as the encoder-decoder: pre-norm RMSNorm, no biases, a relative position bias shared by
the layers, sparse FFNs at ModelConfig.sparse_layers("decoder"). `ModelConfig.architecture =
"decoder_only"` selects it; its layers are `ModelConfig.num_decoder_layers`.

Batches follow seqio's DecoderFeatureConverter (packed, prefix-free LM): `decoder_input_tokens`,
`decoder_target_tokens`, `decoder_segment_ids`, `decoder_loss_weights`. Encoder features, if present, are
ignored. `__call__(batch, deterministic)` -> (logits `<float32>[b, t, vocab]`, moe metrics), as Transformer.
"""

from __future__ import annotations

from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from switchrepro.config import ModelConfig
from switchrepro.model.selective import segment_starts
from switchrepro.model.t5 import (
    RelativePositionBias,
    RMSNorm,
    SelfAttentionLayer,
    attention_bias,
    dense,
    segment_mask,
)

Array = jax.Array


class DecoderOnly(nn.Module):
    """Decoder-only LM; see the module docstring."""

    cfg: ModelConfig
    mesh: Any = None

    def setup(self):
        c = self.cfg
        self.dtype = jnp.bfloat16 if c.dtype == "bfloat16" else jnp.float32
        self.embed = nn.Embed(c.vocab_size, c.d_model, dtype=self.dtype, param_dtype=jnp.float32,
                              embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                          ("vocab", "embed")), name="token_embedder")
        sparse = set(c.sparse_layers("decoder"))
        self.layers = [SelfAttentionLayer(c, i in sparse, self.dtype, self.mesh, attention_name="self_attention",
                                          name=f"decoder_layer_{i}") for i in range(c.num_decoder_layers)]
        self.relpos = RelativePositionBias(num_buckets=c.relative_attention_num_buckets,
                                           max_distance=c.relative_attention_max_distance, num_heads=c.num_heads,
                                           bidirectional=False, dtype=self.dtype, name="decoder_relpos")
        self.norm = RMSNorm(self.dtype, name="decoder_norm")
        self.dropout = nn.Dropout(c.dropout_rate)
        if not c.tie_embeddings:
            self.logits_dense = dense(c.vocab_size, ("embed", "vocab"), c.init_scale, jnp.float32, "logits_dense")

    def __call__(self, batch: Dict[str, Array], deterministic: bool = True):
        tokens = batch["decoder_input_tokens"]
        segments = batch.get("decoder_segment_ids", (batch["decoder_target_tokens"] > 0).astype(jnp.int32))
        length = tokens.shape[1]
        mask = segment_mask(segments, segments) & jnp.tril(jnp.ones((length, length), bool))[None, None]
        bias = attention_bias(mask, self.relpos(length, length))
        selection = (mask[:, 0], segment_starts(segments)) if self.cfg.attention == "selective" else None
        x = self.dropout(self.embed(tokens), deterministic=deterministic)
        metrics = {}
        for layer in self.layers:
            x, m = layer(x, bias, segments > 0, deterministic, selection)
            if m is not None:
                metrics[layer.name] = m
        x = self.dropout(self.norm(x), deterministic=deterministic).astype(jnp.float32)
        logits = self.embed.attend(x) / np.sqrt(self.cfg.d_model) if self.cfg.tie_embeddings else self.logits_dense(x)
        return logits.astype(jnp.float32), metrics

