"""Selective attention (Leviathan, Kalman and Matias 2024, arXiv 2410.02703), for causal self-attention.

A token may lower the attention that later tokens pay to an earlier one. Parameter-free: one head's
attention logits (head 0) say how much each query "selects" (masks) each earlier key, and the masking
accumulates over the queries that follow:

    S = relu(logits of head 0), zero where attention is masked (causal, other segment, padding)
    S[:, first position of a segment] = 0      a token never masks the sequence start (BOS)
    S[i, i] = 0                                a token does not mask itself
    S = S shifted down one query, row 0 zero   a selection affects only later queries
    F = cumsum(S over queries)                 F[i, j] = sum_{k < i} S[k, j]
    logits of every head -= F                  before the softmax

F also scores how masked each key is for the next query (`F[-1]`), which is what context pruning evicts by
(switchrepro.model.pruning, later). The head-0 logits here are the ones the softmax sees: scaled dot
products plus the relative position bias, before the mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def segment_starts(segments: Array) -> Array:
    """<bool>[batch, length]: True at the first position of each packed segment (position 0 included)."""
    previous = jnp.pad(segments[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    return (segments != previous) & (segments > 0)


def selection_penalty(head_logits: Array, mask: Array, starts: Array) -> Array:
    """F of selective attention: `<float32>[batch, q, k]`, to subtract from every head's logits.

    Args:
      head_logits: <float32>[batch, q, k] the selecting head's logits (before the mask).
      mask: <bool>[batch, q, k] True where query q may attend to key k (causal and same segment).
      starts: <bool>[batch, k] True at keys that are never masked (each segment's first position).
    """
    q_len, k_len = head_logits.shape[-2:]
    not_self = ~jnp.eye(q_len, k_len, dtype=bool)
    s = jnp.where(mask & not_self & ~starts[:, None, :], jax.nn.relu(head_logits), 0.0)
    return exclusive_cumsum(s)


BLOCK = 16  # queries per block of exclusive_cumsum


@jax.custom_vjp
def exclusive_cumsum(s: Array) -> Array:
    """F[:, i] = sum_{k < i} s[:, k] over axis 1 of <float32>[batch, q, k]: the shift-then-cumsum of the
    module docstring in one go. Its gradient is the same sum the other way (over k > i)."""
    return _blocked_sum(s, reverse=False)


def _blocked_sum(s: Array, reverse: bool) -> Array:
    """Exclusive running sum over axis 1 (from the end with `reverse`), blocked as two small batched
    matmuls: within blocks of BLOCK queries, then across blocks. The triangular matrices are materialised
    per block (behind an optimization barrier) so both dots are plain batched GEMMs, with no transposed
    copy of s; on one CPU core at batch 32 x 256 x 256 that takes about 4 ms forward and 2 ms for the
    gradient, against 8 and 8 ms for one shared triangle (and about twice that for jnp.cumsum's scan)."""
    batch, q_len, k_len = s.shape
    pad = -q_len % BLOCK
    x = jnp.pad(s, ((0, 0), (0, pad), (0, 0))) if pad else s
    n = x.shape[1] // BLOCK
    blocks = x.reshape(batch * n, BLOCK, k_len)

    def triangle(m: int, copies: int) -> Array:  # strictly lower (upper when reversed) ones, per copy
        ones = jnp.ones((m, m), s.dtype)
        tri = jnp.triu(ones, 1) if reverse else jnp.tril(ones, -1)
        return jax.lax.optimization_barrier(jnp.broadcast_to(tri, (copies, m, m)))

    within = jnp.einsum("bij,bjk->bik", triangle(BLOCK, batch * n), blocks).reshape(batch, n, BLOCK, k_len)
    before = jnp.einsum("bmn,bnk->bmk", triangle(n, batch), blocks.sum(axis=1).reshape(batch, n, k_len))
    return (within + before[:, :, None, :]).reshape(batch, -1, k_len)[:, :q_len]


exclusive_cumsum.defvjp(lambda s: (_blocked_sum(s, reverse=False), None),
                        lambda _, g: (_blocked_sum(g, reverse=True),))
