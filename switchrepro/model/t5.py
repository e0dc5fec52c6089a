"""A T5.1.1-style encoder-decoder in Flax, with Switch/MoE feed-forward layers.

Read top to bottom: initialisers, RMSNorm, relative position bias, the attention
bias and softmax, attention, the dense FFN, one encoder layer, one decoder layer,
the two stacks, the model.

T5.1.1 conventions: pre-norm RMSNorm, no biases anywhere, relative position
bias (shared by all layers of a stack), ReLU or GEGLU FFN, untied logits by
default. Every parameter carries logical axis names (for sharding later).

Batches follow seqio's EncDecFeatureConverter (packed): `encoder_input_tokens`,
`encoder_segment_ids`, `decoder_input_tokens`, `decoder_target_tokens`,
`decoder_segment_ids`, `decoder_loss_weights`. Segment id 0 is padding.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from switchrepro.backends.cpu.matmul import dense_dot_general
from switchrepro.config import ModelConfig
from switchrepro.model.selective import segment_starts, selection_penalty
from switchrepro.moe.layer import MoeFeedForward

Array = jax.Array


def kernel_init(scale: float):
    """Paper section 2.4: truncated normal, std sqrt(scale / fan_in) (JAX rescales for truncation)."""
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


def dense(features: int, names: Tuple[str, str], scale: float, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=jnp.float32, name=name,
                    dot_general=dense_dot_general,
                    kernel_init=nn.with_logical_partitioning(kernel_init(scale), names))


class RMSNorm(nn.Module):
    """T5 layer norm: rescale only, no mean subtraction and no bias."""

    dtype: Any = jnp.float32
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale).astype(self.dtype)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
    """T5's bucketing of `memory_position - query_position`: exact for small distances, log-spaced beyond."""
    ret = np.zeros_like(relative_position)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(np.int32) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
                         / np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
    large = np.minimum(large, num_buckets - 1)
    return ret + np.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Returns `<float>[1, heads, q_len, k_len]` learned biases added to attention logits."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, q_len: int, k_len: int) -> Array:
        rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
        buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        table = self.param("rel_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.1), ("heads", "relpos_buckets")), (self.num_heads, self.num_buckets))
        bias = jnp.take(table, jnp.asarray(buckets), axis=1)  # [heads, q, k]
        return bias[None].astype(self.dtype)


class MaskAndPositionBias(NamedTuple):
    """A self-attention stack's two additive biases; a tuple, so layers add them in turn like any other."""

    mask: Array      # <float32>[batch, 1, q, k]: 0 where a query may attend, -1e9 elsewhere
    position: Array  # <float32>[1, heads, q, k]: the relative position bias


def attention_bias(mask: Array, position_bias: Optional[Array] = None) -> Tuple[Array, ...]:
    """The additive attention biases of one stack: `mask` as `<float32>[batch, 1, q, k]` (0 where True,
    -1e9 elsewhere) and the relative position bias `<float32>[1, heads, q, k]` if any (then as a
    MaskAndPositionBias).

    Built once per stack; each layer adds them to its logits in the same fused pass that computes the
    softmax, instead of adding the bias and then masking with `where` (on CPU each extra pass over the
    scores costs about as much as the attention matmuls at d_model 64). Kept as two broadcast tensors, not
    one [batch, heads, q, k] tensor: as fast on CPU, and heads-times smaller in memory.

    Args:
      mask: <bool>[batch, 1, q, k] True where a query may attend to a key.
      position_bias: <dtype>[1, heads, q, k] relative position bias, or None (cross-attention).
    """
    masked = jnp.where(mask, 0.0, -1e9).astype(jnp.float32)
    return (masked,) if position_bias is None else MaskAndPositionBias(masked, position_bias.astype(jnp.float32))


@jax.custom_vjp
def softmax_last_axis(logits: Array) -> Array:
    """`jax.nn.softmax(logits, axis=-1)` with the textbook backward `y * (g - sum(g * y))`.

    Same values. Differentiating jax.nn.softmax makes XLA's CPU backend re-read the [batch, heads, q, k]
    scores more often; saving y and using this formula made an attention layer's forward+backward about
    1.1x faster at the mini shapes, on top of attention_bias (both together: about 1.6x for the layer,
    1.19x for a d_model-64 training step).
    """
    return _softmax_forward(logits)[0]


def _softmax_forward(logits):
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    e = jnp.exp(shifted)
    y = e / jnp.sum(e, axis=-1, keepdims=True)
    return y, y


def _softmax_backward(y, g):
    return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


softmax_last_axis.defvjp(_softmax_forward, _softmax_backward)


@jax.custom_vjp
def add_bias(logits: Array, bias: Array) -> Array:
    """`logits + bias` for a bias that broadcasts over leading axes (`<float32>[1, heads, q, k]` position
    bias, `<float32>[batch, 1, q, k]` mask), with the bias's gradient summed by a matmul with ones.

    Same values; the gradient differs from jax's by summation order only. jax sums a broadcast's
    cotangent with a reduce over the batch axis, which XLA's CPU backend runs at 0.6-3 GB/s (YNNPACK,
    a non-minor axis): 10-50 ms per stack at batch 32 x 128 x 128 x 4 heads, against 1 ms as a matvec.
    """
    return logits + bias


def _add_bias_forward(logits, bias):
    return logits + bias, bias  # (bias is live anyway: every layer of the stack adds it)


def _add_bias_backward(bias, g):
    bias_shape = bias.shape
    axes = [i for i, (b, n) in enumerate(zip(bias_shape, g.shape, strict=True)) if b == 1 and n > 1]
    if not axes:
        return g, g
    if axes != list(range(len(axes))):  # reduced axes first (the mask's heads axis: its cotangent is unused)
        g_bias = jnp.transpose(g, axes + [i for i in range(g.ndim) if i not in axes])
    else:
        g_bias = g
    rows = int(np.prod([g.shape[i] for i in axes]))
    g_bias = jnp.ones((rows,), g.dtype) @ g_bias.reshape(rows, -1)
    return g, g_bias.reshape(bias_shape)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


class Attention(nn.Module):
    """Multi-head dot-product attention without biases (no bias *vectors*: the additive attention bias
    `<float32>[batch, 1|heads, q, k]` from `attention_bias` carries the mask and relative positions).

    With `selection` = (mask <bool>[batch, q, k], starts <bool>[batch, k]) it is selective attention: head 0's
    biased logits give the selection penalty F (model/selective.py), subtracted from every head's logits."""

    cfg: ModelConfig
    dtype: Any

    @nn.compact
    def __call__(self, x: Array, kv: Array, bias: Tuple[Array, ...], deterministic: bool,
                 selection: Optional[Tuple[Array, Array]] = None) -> Array:
        c = self.cfg
        inner = c.num_heads * c.d_kv
        split = lambda t: t.reshape(t.shape[:-1] + (c.num_heads, c.d_kv))
        q = split(dense(inner, ("embed", "joined_kv"), c.init_scale, self.dtype, "query")(x))
        k = split(dense(inner, ("embed", "joined_kv"), c.init_scale, self.dtype, "key")(kv))
        v = split(dense(inner, ("embed", "joined_kv"), c.init_scale, self.dtype, "value")(kv))
        q = q / np.sqrt(c.d_kv).astype(q.dtype)  # scale the small q, not the [b, h, q, k] logits (as flaxformer)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        for b in bias:
            logits = add_bias(logits, b)
        if selection is not None:
            # Head 0's logits once more from its own q and k (a [batch, q, k] dot): their gradient then
            # reaches q, k and the biases directly, not through a zero-padded [batch, heads, q, k] slice.
            head = jnp.einsum("bqd,bkd->bqk", q[:, :, 0], k[:, :, 0]).astype(jnp.float32)
            # The mask's -1e9 can be left out: selection_penalty zeroes the masked positions itself.
            for b in ((bias.position,) if isinstance(bias, MaskAndPositionBias) else bias):
                head = add_bias(head, b[:, 0])
            logits = logits - selection_penalty(head, *selection)[:, None]
        weights = softmax_last_axis(logits).astype(self.dtype)  # float32 for stability
        weights = nn.Dropout(c.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(x.shape[:-1] + (inner,))
        return dense(c.d_model, ("joined_kv", "embed"), c.init_scale, self.dtype, "out")(out)


class DenseFeedForward(nn.Module):
    """The dense FFN: relu(x wi) wo, or GEGLU gelu(x wi_0) * (x wi_1) wo."""

    cfg: ModelConfig
    dtype: Any

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        c = self.cfg
        if c.activation == "geglu":
            h = nn.gelu(dense(c.d_ff, ("embed", "mlp"), c.init_scale, self.dtype, "wi_0")(x), approximate=True)
            h = h * dense(c.d_ff, ("embed", "mlp"), c.init_scale, self.dtype, "wi_1")(x)
        else:
            h = nn.relu(dense(c.d_ff, ("embed", "mlp"), c.init_scale, self.dtype, "wi")(x))
        h = nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
        return dense(c.d_model, ("mlp", "embed"), c.init_scale, self.dtype, "wo")(h)


class FeedForward(nn.Module):
    """Dense or sparse FFN behind one call; returns (y, MoeMetrics or None)."""

    cfg: ModelConfig
    sparse: bool
    dtype: Any
    mesh: Any = None

    @nn.compact
    def __call__(self, x: Array, token_mask: Array, deterministic: bool):
        c = self.cfg
        if not self.sparse:
            return DenseFeedForward(c, self.dtype, name="mlp")(x, deterministic), None
        moe = MoeFeedForward(cfg=c.moe, d_model=c.d_model, d_ff=c.d_ff, activation=c.activation,
                             init_scale=c.init_scale, dtype=self.dtype, mesh=self.mesh, name="moe")
        return moe(x, token_mask, deterministic=deterministic)


class SelfAttentionLayer(nn.Module):
    """Self-attention, then the FFN: an encoder layer, or (attention_name "self_attention", causal bias, and
    `selection` for selective attention) a decoder-only LM's layer (model/decoder_only.py)."""

    cfg: ModelConfig
    sparse: bool
    dtype: Any
    mesh: Any = None
    attention_name: str = "attention"  # also names its norm, pre_<attention_name>_norm

    @nn.compact
    def __call__(self, x, bias, token_mask, deterministic, selection=None):
        drop = nn.Dropout(self.cfg.dropout_rate)
        h = RMSNorm(self.dtype, name=f"pre_{self.attention_name}_norm")(x)
        x = x + drop(Attention(self.cfg, self.dtype, name=self.attention_name)(h, h, bias, deterministic, selection),
                     deterministic=deterministic)
        h = RMSNorm(self.dtype, name="pre_mlp_norm")(x)
        y, metrics = FeedForward(self.cfg, self.sparse, self.dtype, self.mesh, name="ffn")(h, token_mask, deterministic)
        return x + drop(y, deterministic=deterministic), metrics


class DecoderLayer(nn.Module):
    cfg: ModelConfig
    sparse: bool
    dtype: Any
    mesh: Any = None

    @nn.compact
    def __call__(self, x, encoded, self_bias, cross_bias, token_mask, deterministic, selection=None):
        drop = nn.Dropout(self.cfg.dropout_rate)
        h = RMSNorm(self.dtype, name="pre_self_attention_norm")(x)
        x = x + drop(Attention(self.cfg, self.dtype, name="self_attention")(h, h, self_bias, deterministic,
                                                                             selection),
                     deterministic=deterministic)
        h = RMSNorm(self.dtype, name="pre_cross_attention_norm")(x)
        x = x + drop(Attention(self.cfg, self.dtype, name="encoder_decoder_attention")(
            h, encoded, cross_bias, deterministic), deterministic=deterministic)
        h = RMSNorm(self.dtype, name="pre_mlp_norm")(x)
        y, metrics = FeedForward(self.cfg, self.sparse, self.dtype, self.mesh, name="ffn")(h, token_mask, deterministic)
        return x + drop(y, deterministic=deterministic), metrics


def segment_mask(q_seg: Array, k_seg: Array) -> Array:
    """`<bool>[batch, 1, q, k]`: attend only within the same packed segment, never to padding."""
    return ((q_seg[:, :, None] == k_seg[:, None, :]) & (q_seg[:, :, None] > 0) & (k_seg[:, None, :] > 0))[:, None]


class Transformer(nn.Module):
    """Encoder-decoder. `__call__(batch, deterministic)` -> (logits `<float32>[b, t, vocab]`, moe metrics).

    `mesh` (a ('data', 'expert') jax Mesh, or None) makes the sparse layers expert-parallel; the parameters
    do not depend on it, so a model initialised without a mesh applies with one.
    """

    cfg: ModelConfig
    mesh: Any = None

    def setup(self):
        c = self.cfg
        self.dtype = jnp.bfloat16 if c.dtype == "bfloat16" else jnp.float32
        self.embed = nn.Embed(c.vocab_size, c.d_model, dtype=self.dtype, param_dtype=jnp.float32,
                              embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                          ("vocab", "embed")), name="token_embedder")
        enc_sparse, dec_sparse = set(c.sparse_layers("encoder")), set(c.sparse_layers("decoder"))
        self.encoder_layers = [SelfAttentionLayer(c, i in enc_sparse, self.dtype, self.mesh, name=f"encoder_layer_{i}")
                               for i in range(c.num_encoder_layers)]
        self.decoder_layers = [DecoderLayer(c, i in dec_sparse, self.dtype, self.mesh, name=f"decoder_layer_{i}")
                               for i in range(c.num_decoder_layers)]
        rel = dict(num_buckets=c.relative_attention_num_buckets, max_distance=c.relative_attention_max_distance,
                   num_heads=c.num_heads, dtype=self.dtype)
        self.encoder_bias = RelativePositionBias(bidirectional=True, name="encoder_relpos", **rel)
        self.decoder_bias = RelativePositionBias(bidirectional=False, name="decoder_relpos", **rel)
        self.encoder_norm = RMSNorm(self.dtype, name="encoder_norm")
        self.decoder_norm = RMSNorm(self.dtype, name="decoder_norm")
        self.dropout = nn.Dropout(c.dropout_rate)
        if not c.tie_embeddings:
            self.logits_dense = dense(c.vocab_size, ("embed", "vocab"), c.init_scale, jnp.float32, "logits_dense")

    def encode(self, tokens: Array, segments: Array, deterministic: bool):
        metrics = {}
        x = self.dropout(self.embed(tokens), deterministic=deterministic)
        bias = attention_bias(segment_mask(segments, segments),
                              self.encoder_bias(tokens.shape[1], tokens.shape[1]))
        for layer in self.encoder_layers:
            x, m = layer(x, bias, segments > 0, deterministic)
            if m is not None:
                metrics[layer.name] = m
        return self.dropout(self.encoder_norm(x), deterministic=deterministic), metrics

    def decode(self, encoded, enc_segments, dec_inputs, dec_segments, deterministic: bool):
        metrics = {}
        length = dec_inputs.shape[1]
        causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
        self_mask = segment_mask(dec_segments, dec_segments) & causal
        self_bias = attention_bias(self_mask, self.decoder_bias(length, length))
        selection = (self_mask[:, 0], segment_starts(dec_segments)) if self.cfg.attention == "selective" else None
        cross_bias = attention_bias(segment_mask(dec_segments, enc_segments))
        x = self.dropout(self.embed(dec_inputs), deterministic=deterministic)
        for layer in self.decoder_layers:
            x, m = layer(x, encoded, self_bias, cross_bias, dec_segments > 0, deterministic, selection)
            if m is not None:
                metrics[layer.name] = m
        x = self.dropout(self.decoder_norm(x), deterministic=deterministic).astype(jnp.float32)
        if self.cfg.tie_embeddings:
            logits = self.embed.attend(x) / np.sqrt(self.cfg.d_model)
        else:
            logits = self.logits_dense(x)
        return logits.astype(jnp.float32), metrics

    def __call__(self, batch: Dict[str, Array], deterministic: bool = True):
        enc_seg = batch.get("encoder_segment_ids", (batch["encoder_input_tokens"] > 0).astype(jnp.int32))
        dec_seg = batch.get("decoder_segment_ids", (batch["decoder_target_tokens"] > 0).astype(jnp.int32))
        encoded, enc_metrics = self.encode(batch["encoder_input_tokens"], enc_seg, deterministic)
        logits, dec_metrics = self.decode(encoded, enc_seg, batch["decoder_input_tokens"], dec_seg, deterministic)
        return logits, {**enc_metrics, **dec_metrics}


def dummy_batch(batch_size: int, inputs_length: int, targets_length: int) -> Dict[str, Array]:
    ones = lambda n: jnp.ones((batch_size, n), jnp.int32)
    return {"encoder_input_tokens": ones(inputs_length), "encoder_segment_ids": ones(inputs_length),
            "decoder_input_tokens": ones(targets_length), "decoder_target_tokens": ones(targets_length),
            "decoder_segment_ids": ones(targets_length), "decoder_loss_weights": ones(targets_length)}


def count_params(params) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
