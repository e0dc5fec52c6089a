"""Matmuls whose gradients XLA CPU computes fast, shared by the MoE layer and the model.

A weight gradient x^T g contracts over the token axis, the major axis of both operands. XLA CPU lays
such a dot out as a transposed-operand Eigen contraction, and often copies g transposed first: for the
output layer of the peer benchmark (1,024 tokens x 256 -> 32,128), 1.1 s of a 4.6 s one-core step. With x^T
materialised first (a small [K, tokens] copy, kept as such by an optimization barrier) the same dot is a
plain row-major GEMM that XLA hands to its fast matmul library: 2x faster on that layer's forward and
backward. Same values up to float32 rounding (tests/test_linalg.py); other backends use the plain dot.
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
def _dense(x: Array, w: Array, precision=None) -> Array:
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _dense_fwd(x, w, precision):
    return _dense(x, w, precision), (x, w)


def _dense_bwd(precision, res, g):
    x, w = res
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
    dw = weight_grad(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                      preferred_element_type=None) -> Array:
    """lax.dot_general for nn.Dense's `dot_general`: <dtype>[..., K] x <dtype>[K, N] -> <dtype>[..., N].
    On CPU, a dense layer's own contraction gets the fast weight gradient (module docstring)."""
    (contract, batch) = dimension_numbers
    simple = (tuple(contract[0]) == (lhs.ndim - 1,) and tuple(contract[1]) == (0,) and rhs.ndim == 2
              and not batch[0] and not batch[1] and preferred_element_type is None)
    if simple and jax.default_backend() == "cpu":
        return _dense(lhs, rhs, precision)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)


def matmul(x: Array, w: Array) -> Array:
    """<dtype>[..., K] @ <dtype>[K, N] -> <dtype>[..., N], with the fast weight gradient on CPU."""
    return dense_dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


# --- custom VJPs inside shard_map: keep the manual-axis types that jax checks ---

def varying_axes(a: Array) -> frozenset:
    """The shard_map mesh axes that `a` varies over (empty outside shard_map)."""
    return frozenset(jax.typeof(a).mat.varying)


def as_varying(x: Array, *like: Array) -> Array:
    """x typed as varying over every shard_map axis that any of `like` varies over: for values made by a
    primitive that does not infer it (an XLA FFI call). A no-op outside shard_map."""
    axes = tuple(sorted(set().union(*(varying_axes(a) for a in like)) - varying_axes(x)))
    return jax.lax.pcast(x, axes, to="varying") if axes else x


def sum_to(grad: Array, primal: Array) -> Array:
    """A custom VJP's gradient for `primal`, summed over the axes it varies over and `primal` does not: inside
    shard_map a kernel replicated over 'data' gets each shard's partial gradient, and jax's own autodiff sums
    them (the transpose of the implicit broadcast to varying)."""
    extra = tuple(sorted(varying_axes(grad) - varying_axes(primal)))
    return jax.lax.psum(grad, extra) if extra else grad
