"""Context pruning at inference: the decoder-only LM (model/decoder_only.py) scored one token at a time with
a key/value cache that holds at most `budget` positions per layer.

Selective attention's penalty F[i, j] (model/selective.py) says how strongly the queries before i have masked
key j; a key with a large F gets little attention from every later query, so it can leave the cache. The
paper's exact rule is not public. The rule implemented here:

    when a new key arrives and a layer's cache is full, that layer evicts one cached key:
      - first a key of an earlier packed segment (it is masked anyway),
      - else, with selective attention, the key with the largest accumulated F, never the segment's first
        position (BOS, which selective attention never masks);
      - else (standard attention) the oldest key but the segment's first (a sliding window with an
        attention sink).
    the new key always enters; its own F starts at 0.

An evicted key is gone for every later query of that layer. With `budget` >= the sequence length nothing is
evicted, and the logits equal the parallel forward pass's (tests/test_pruning.py). Attention memory is
`budget` keys and values per layer, against the full context's length without pruning.

    logits = score_with_budget(model, params, batch, budget)    <float32>[batch, length, vocab]
"""

from __future__ import annotations

import functools
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from switchrepro.model.decoder_only import DecoderOnly
from switchrepro.model.t5 import FeedForward, RMSNorm, relative_position_bucket

Array = jax.Array
NEG = -1e9


def _bucket_of_distance(cfg, length: int) -> np.ndarray:
    """T5's causal relative-position bucket of each distance query - key = 0 .. length - 1."""
    distance = -np.arange(length)[None, :]  # key - query
    return relative_position_bucket(distance, False, cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance)[0]


def score_with_budget(model: DecoderOnly, params: Any, batch: Dict[str, Array], budget: int) -> Array:
    """Next-token logits of every position, each layer keeping at most `budget` keys (see the module doc).

    Args:
      model: a DecoderOnly model (standard or selective attention, dense or Switch FFNs).
      params: its parameters.
      batch: `decoder_input_tokens` and `decoder_segment_ids`, <int32>[batch, length] (packed rows allowed;
        segment 0 is padding).
      budget: cached positions per layer (>= 2: the segment start and the newest key).
    Returns:
      <float32>[batch, length, vocab].
    """
    if budget < 2:
        raise ValueError(f"budget must be >= 2 cached positions (the segment start and the newest key), got {budget}")
    tokens = jnp.asarray(batch["decoder_input_tokens"], jnp.int32)
    segments = jnp.asarray(batch.get("decoder_segment_ids", (tokens > 0).astype(jnp.int32)), jnp.int32)
    return _scorer(model, int(budget), tokens.shape[1])(params, tokens, segments)


def eviction_slot(pos: Array, key_segments: Array, penalty: Array, segment: Array, start: Array,
                  selective: bool) -> Array:
    """<int32>[batch]: the cache slot each row's new key goes to (see the module docstring for the order).

    Args:
      pos: <int32>[batch, slots] position of each cached key, -1 for an empty slot.
      key_segments: <int32>[batch, slots] packed segment of each cached key.
      penalty: <float32>[batch, slots] accumulated selection penalty F of each cached key.
      segment, start: <int32>[batch] the new key's segment and its segment's first position (BOS).
    """
    live = (pos >= 0) & (key_segments == segment[:, None])
    protected = pos == start[:, None]
    badness = penalty if selective else -pos.astype(jnp.float32)  # the most masked, or the oldest
    badness = jnp.where(protected, -jnp.inf, badness)
    badness = jnp.where(live, badness, jnp.inf)  # empty or an earlier segment's: first to go
    return jnp.argmax(badness, axis=1).astype(jnp.int32)


@functools.lru_cache(maxsize=16)
def _scorer(model: DecoderOnly, budget: int, length: int):
    c = model.cfg
    if c.dtype != "float32":
        raise ValueError("score_with_budget runs in float32; set ModelConfig.dtype = 'float32'")
    selective = c.attention == "selective"
    sparse = set(c.sparse_layers("decoder"))
    buckets = jnp.asarray(_bucket_of_distance(c, length))
    heads, d_kv = c.num_heads, c.d_kv

    def layer_step(p, name, x, cache, t, seg, start):
        """One layer for the token at position t: x <float32>[b, d_model]; returns (x, cache)."""
        lp = p[name]
        k_cache, v_cache, pos, kseg, f = cache
        h = RMSNorm().apply({"params": lp["pre_self_attention_norm"]}, x)
        a = lp["self_attention"]
        q = (h @ a["query"]["kernel"]).reshape(-1, heads, d_kv) / np.sqrt(d_kv)
        k = (h @ a["key"]["kernel"]).reshape(-1, heads, d_kv)
        v = (h @ a["value"]["kernel"]).reshape(-1, heads, d_kv)
        protected = pos == start[:, None]
        one = jax.nn.one_hot(eviction_slot(pos, kseg, f, seg, start, selective), budget, dtype=bool)
        k_cache = jnp.where(one[:, :, None, None], k[:, None], k_cache)
        v_cache = jnp.where(one[:, :, None, None], v[:, None], v_cache)
        pos = jnp.where(one, t, pos)
        kseg = jnp.where(one, seg[:, None], kseg)
        f = jnp.where(one, 0.0, f)
        live = (pos >= 0) & (kseg == seg[:, None]) & (seg[:, None] > 0)
        bias = p["decoder_relpos"]["rel_embedding"][:, buckets[jnp.clip(t - pos, 0, length - 1)]]  # [h, b, slots]
        logits = jnp.einsum("bhd,bshd->bhs", q, k_cache) + jnp.transpose(bias, (1, 0, 2))
        logits = jnp.where(live[:, None], logits, NEG)
        if selective:
            scores = logits - f[:, None]
        else:
            scores = logits
        w = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhs,bshd->bhd", w, v_cache).reshape(-1, heads * d_kv) @ a["out"]["kernel"]
        x = x + out
        if selective:  # this query's selections reach later queries (not itself, not BOS)
            chosen = live & (pos != t) & ~protected
            f = f + jnp.where(chosen, jax.nn.relu(logits[:, 0]), 0.0)
        h = RMSNorm().apply({"params": lp["pre_mlp_norm"]}, x)
        i = int(name.rsplit("_", 1)[1])
        y, _ = FeedForward(c, i in sparse, jnp.float32).apply({"params": lp["ffn"]}, h[:, None],
                                                              (seg > 0)[:, None], True)
        return x + y[:, 0], (k_cache, v_cache, pos, kseg, f)

    names = [f"decoder_layer_{i}" for i in range(c.num_decoder_layers)]

    @jax.jit
    def run(p, tokens, segments):
        b = tokens.shape[0]
        empty = (jnp.zeros((b, budget, heads, d_kv)), jnp.zeros((b, budget, heads, d_kv)),
                 jnp.full((b, budget), -1, jnp.int32), jnp.zeros((b, budget), jnp.int32), jnp.zeros((b, budget)))
        starts_of = jnp.where(jnp.concatenate([jnp.ones((b, 1), bool), segments[:, 1:] != segments[:, :-1]], 1),
                              jnp.arange(tokens.shape[1])[None], 0)
        start_pos = jax.lax.cummax(starts_of, axis=1)  # each position's segment start

        def step(caches, t):
            seg = segments[:, t]
            x = p["token_embedder"]["embedding"][tokens[:, t]]
            new = []
            for name, cache in zip(names, caches, strict=True):
                x, cache = layer_step(p, name, x, cache, t, seg, start_pos[:, t])
                new.append(cache)
            x = RMSNorm().apply({"params": p["decoder_norm"]}, x)
            if c.tie_embeddings:
                logits = x @ p["token_embedder"]["embedding"].T / np.sqrt(c.d_model)
            else:
                logits = x @ p["logits_dense"]["kernel"]
            return tuple(new), logits

        _, logits = jax.lax.scan(step, tuple(empty for _ in names), jnp.arange(tokens.shape[1]))
        return jnp.transpose(logits, (1, 0, 2))

    return run
