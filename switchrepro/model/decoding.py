"""Greedy decoding for the encoder-decoder: what fine-tuning evaluation scores with T5's metrics.

    tokens = greedy_decode(model, params, encoder_input_tokens, max_length)

The encoder runs once. Then, for position i = 0 .. max_length - 1, the decoder runs on the whole
[batch, max_length] buffer of tokens decoded so far, with positions after i marked as padding (segment 0):
causal attention never looks at them and, in sparse layers, they request no expert, so they take no
capacity from the real tokens. Recomputing the prefix at every position costs O(max_length^2) but needs
no key/value cache; at the target lengths of the downstream tasks (tens of tokens) that is cheap.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from switchrepro.model.t5 import Transformer
from switchrepro.moe.routing import argmax_last_axis

Array = jax.Array
EOS_ID = 1  # T5 / seqio: pad 0, eos 1; the decoder's first input is pad (0)


def greedy_decode(model: Transformer, params: Any, encoder_input_tokens: Array, max_length: int,
                  eos_id: int = EOS_ID) -> Array:
    """Argmax decoding, evaluation mode (no dropout, capacity_factor_eval).

    Args:
      model: the Transformer.
      params: its parameters.
      encoder_input_tokens: <int32>[batch, inputs_length], 0 = padding.
      max_length: decoded positions.
      eos_id: a row stops at its first EOS; later positions hold 0.

    Returns:
      <int32>[batch, max_length] tokens; a row's EOS is kept, everything after it is 0.
    """
    return _decode(model, max_length, eos_id)(params, jnp.asarray(encoder_input_tokens, jnp.int32))


@functools.lru_cache(maxsize=8)  # one compiled decoder per (model, length), reused across evaluations
def _decode(model: Transformer, max_length: int, eos_id: int):
    @jax.jit
    def run(params, inputs):
        enc_segments = (inputs > 0).astype(jnp.int32)
        encoded, _ = model.apply({"params": params}, inputs, enc_segments, True, method=Transformer.encode)
        batch = inputs.shape[0]
        positions = jnp.arange(max_length)[None, :]

        def step(i, carry):
            dec_inputs, out, done = carry
            segments = jnp.broadcast_to(positions <= i, (batch, max_length)).astype(jnp.int32)
            logits, _ = model.apply({"params": params}, encoded, enc_segments, dec_inputs, segments, True,
                                    method=Transformer.decode)
            token = argmax_last_axis(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False))
            token = jnp.where(done, 0, token).astype(jnp.int32)
            out = jnp.where(positions == i, token[:, None], out)
            dec_inputs = jnp.where(positions == i + 1, token[:, None], dec_inputs)  # shifted right by one
            return dec_inputs, out, done | (token == eos_id)

        zeros = jnp.zeros((batch, max_length), jnp.int32)
        _, out, _ = jax.lax.fori_loop(0, max_length, step, (zeros, zeros, jnp.zeros((batch,), bool)))
        return out

    return run
