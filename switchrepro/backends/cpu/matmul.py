"""Matmuls whose gradients XLA CPU computes fast, shared by the MoE layer, its CPU expert loop and the model.

A weight gradient x^T g contracts over the token axis, the major axis of both operands. XLA CPU lays
such a dot out as a transposed-operand Eigen contraction, and often copies g transposed first: for the
output layer of the peer benchmark (1,024 tokens x 256 -> 32,128), 1.1 s of a 4.6 s one-core step. With x^T
materialised first (a small [K, tokens] copy, kept as such by an optimization barrier) the same dot is a
plain row-major GEMM that XLA hands to its fast matmul library: 2x faster on that layer's forward and
backward. Same values up to float32 rounding (tests/test_linalg.py); other JAX backends use the plain dot
(dense_dot_general checks), so the model's flax layers can take it everywhere.
"""

from __future__ import annotations

import functools

import jax

Array = jax.Array


# Below this many rows the transposed-operand dot is as fast as the copy it would save (one expert's few
# hundred rows in the MoE loop).
WEIGHT_GRAD_MIN_ROWS = 1024


def weight_grad(x: Array, g: Array) -> Array:
    """x^T g for <dtype>[T, K] inputs and <dtype>[T, N] output gradients -> <dtype>[K, N]. The narrower
    operand is the one transposed (then (g^T x)^T, a small [N, K] transpose)."""
    if x.shape[0] < WEIGHT_GRAD_MIN_ROWS:
        return jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())))
    if x.shape[1] <= g.shape[1]:
        return jax.lax.optimization_barrier(x.T) @ g
    return jax.lax.optimization_barrier(jax.lax.optimization_barrier(g.T) @ x).T


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_with_fast_weight_grad(x: Array, w: Array, precision=None) -> Array:
    """<dtype>[..., K] @ <dtype>[K, N] -> <dtype>[..., N], whose weight gradient is weight_grad's (the input
    gradient is the plain dot's)."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _dense_fwd(x, w, precision):
    return dense_with_fast_weight_grad(x, w, precision), (x, w)


def _dense_bwd(precision, res, g):
    x, w = res
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
    dw = weight_grad(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense_with_fast_weight_grad.defvjp(_dense_fwd, _dense_bwd)


def dense_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                      preferred_element_type=None) -> Array:
    """lax.dot_general for nn.Dense's `dot_general`: <dtype>[..., K] x <dtype>[K, N] -> <dtype>[..., N].
    On CPU, a dense layer's own contraction gets the fast weight gradient (module docstring)."""
    (contract, batch) = dimension_numbers
    simple = (tuple(contract[0]) == (lhs.ndim - 1,) and tuple(contract[1]) == (0,) and rhs.ndim == 2
              and not batch[0] and not batch[1] and preferred_element_type is None)
    if simple and jax.default_backend() == "cpu":
        return dense_with_fast_weight_grad(lhs, rhs, precision)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)


def matmul(x: Array, w: Array) -> Array:
    """<dtype>[..., K] @ <dtype>[K, N] -> <dtype>[..., N], with the fast weight gradient on CPU."""
    return dense_dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))
