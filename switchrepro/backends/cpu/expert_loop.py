"""The experts one at a time on CPU, forward and backward written out: a custom VJP around two loops.

    h <dtype>[E, N, M] buffer rows per expert
      -> z_k = h[e] @ w_in_k[e]        k = 1 (relu) or 2 (geglu)  <dtype>[N, F]
      -> a = activate(z), dropout       <dtype>[N, F]
      -> y[e] = a @ w_out[e]            <dtype>[N, M]

Same values and gradients as `jax.lax.map` over the experts with jax's autodiff (tests/test_expert_loop.py),
with less memory traffic per step. Autodiff of a map writes every per-expert output, saved activation and
weight gradient into a stacked buffer that it first fills with zeros; at 128 experts of d_model 256 and d_ff
1024 the weight-gradient buffers alone are 256 MiB, zero-filled and then overwritten in every step. Here each
stacked buffer starts uninitialised (backends/cpu/native) and each expert's slice is written once. The
backward saves only the pre-activations z and recomputes a = activate(z) per expert, while that expert's rows
are in cache.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from switchrepro import linalg
from switchrepro.backends.cpu.matmul import matmul, weight_grad
from switchrepro.backends.cpu.native import uninitialized

Array = jax.Array
Activation = Callable[[Sequence[Array]], Array]  # [z_1, ..., z_k], each <dtype>[N, F] -> <dtype>[N, F]


def expert_ffn(h: Array, w_in: Sequence[Array], w_out: Array, activate: Activation,
               keep: Optional[Array] = None, rate: float = 0.0) -> Array:
    """Expert e's FFN on h[e], for every e.

    Args:
      h: <dtype>[E, N, M] each expert's buffer rows.
      w_in: k arrays <dtype>[E, M, F], the input kernels (k = 1 for relu, 2 for geglu).
      w_out: <dtype>[E, F, M] the output kernels.
      activate: maps the k pre-activations [z_1, ..., z_k] (<dtype>[N, F] each) to the hidden <dtype>[N, F];
        elementwise, so its gradient is taken per expert with jax.vjp.
      keep: <bool>[E, N, F] dropout's keep mask on the hidden units, or None for no dropout.
      rate: the dropout rate that `keep` was drawn with; kept units are scaled by 1 / (1 - rate).

    Returns:
      <dtype>[E, N, M] the experts' outputs.
    """
    if keep is not None and not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1) with a keep mask, got {rate}")
    return _ffn(activate, rate, h, tuple(w_in), w_out, keep)


def _hidden(activate: Activation, rate: float, z: Sequence[Array], keep: Optional[Array]) -> Array:
    a = activate(list(z))
    return a if keep is None else jnp.where(keep, a / (1.0 - rate), 0)


def _buffer(shape, dtype, *like: Array) -> Array:
    """An uninitialised buffer that varies over the same shard_map mesh axes as `like` (the values written into
    it), so that a loop carrying it keeps one type inside an expert-parallel shard_map."""
    return linalg.as_varying(uninitialized(shape, dtype), *like)


def _set(buffer: Array, value: Array, e: Array) -> Array:
    return jax.lax.dynamic_update_index_in_dim(buffer, value, e, 0)


def _forward(activate, rate, h, w_in, w_out, keep, save: bool) -> Tuple[Array, ...]:
    """(y, z_1, ..., z_k) with the pre-activations when `save`, else (y,)."""
    num_experts, rows, _ = h.shape
    d_ff = w_out.shape[1]

    def body(e, buffers):
        z = [matmul(h[e], w[e]) for w in w_in]
        a = _hidden(activate, rate, z, None if keep is None else keep[e])
        y = _set(buffers[0], matmul(a, w_out[e]), e)
        if not save:
            return (y,)
        return (y,) + tuple(_set(b, z_k, e) for b, z_k in zip(buffers[1:], z, strict=True))

    inputs = (h, *w_in, w_out)
    buffers = (_buffer(h.shape, h.dtype, *inputs),)
    if save:
        buffers += tuple(_buffer((num_experts, rows, d_ff), h.dtype, *inputs) for _ in w_in)
    return jax.lax.fori_loop(0, num_experts, body, buffers)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _ffn(activate, rate, h, w_in, w_out, keep):
    return _forward(activate, rate, h, w_in, w_out, keep, save=False)[0]


def _ffn_fwd(activate, rate, h, w_in, w_out, keep):
    y, *z = _forward(activate, rate, h, w_in, w_out, keep, save=True)
    return y, (h, w_in, w_out, keep, tuple(z))


def _ffn_bwd(activate, rate, residuals, dy):
    h, w_in, w_out, keep, z = residuals
    contract_last = (((1,), (1,)), ((), ()))  # g @ w^T without materialising w^T

    def body(e, grads):
        dh, dw_in, dw_out = grads
        a, hidden_vjp = jax.vjp(lambda *z_e: _hidden(activate, rate, z_e, None if keep is None else keep[e]),
                                *[z_k[e] for z_k in z])
        dw_out = _set(dw_out, weight_grad(a, dy[e]), e)
        dz = hidden_vjp(jax.lax.dot_general(dy[e], w_out[e], contract_last))
        dw_in = tuple(_set(b, weight_grad(h[e], dz_k), e) for b, dz_k in zip(dw_in, dz, strict=True))
        dh_e = sum(jax.lax.dot_general(dz_k, w[e], contract_last) for dz_k, w in zip(dz, w_in, strict=True))
        return _set(dh, dh_e, e), dw_in, dw_out

    inputs = (h, *w_in, w_out, dy)
    grads = (_buffer(h.shape, h.dtype, *inputs), tuple(_buffer(w.shape, w.dtype, *inputs) for w in w_in),
             _buffer(w_out.shape, w_out.dtype, *inputs))
    dh, dw_in, dw_out = jax.lax.fori_loop(0, h.shape[0], body, grads)
    sum_to = linalg.sum_to  # inside shard_map: a kernel replicated over 'data' gets every shard's partial sum
    return (sum_to(dh, h), tuple(sum_to(g, w) for g, w in zip(dw_in, w_in, strict=True)), sum_to(dw_out, w_out),
            None)


_ffn.defvjp(_ffn_fwd, _ffn_bwd)
