"""Stacked expert matmuls on CPU through expert_gemm.cc, with their gradients through the same kernels.

    x <float32>[E, N, K] @ w <float32>[E, K, F] -> <float32>[E, N, F]       (the einsum 'enk,ekf->enf')
    backward: dx = dy @ w^T (nt), dw = x^T @ dy (tn), each expert's slice read and written in place.

On a 2-core AMD EPYC (Zen 5), the Switch layer's expert FFN forward+backward takes 1.11x at 128 experts x 128
rows the time of 8 experts x 2,048 rows with these kernels, against 1.34x with XLA's dot in a loop
(docs/performance.md, `switchrepro bench moe`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from switchrepro import linalg
from switchrepro.backends.cpu import native

Array = jax.Array

COLUMN_MULTIPLE = 64  # the kernels write C in panels of 64 columns: d_model and d_ff must be multiples of it


def unavailable_reason() -> str:
    """'' when the kernels can run in this process (library loaded, AVX-512F, CPU backend), else why not."""
    state = native.gemm_status()
    if state != "loaded":
        return f"the native expert matmul is unavailable: {state}"
    if jax.default_backend() != "cpu":
        return f"the native expert matmul runs on CPU only; this backend is {jax.default_backend()}"
    return ""


def unsupported_reason(x_shape, w_shape, dtype) -> str:
    """'' when expert_matmul can run on these operands here, else why not (one line, says what to change)."""
    if reason := unavailable_reason():
        return reason
    if jnp.dtype(dtype) != jnp.float32:
        return f"the native expert matmul is float32 only; the activations are {jnp.dtype(dtype).name}"
    k, f = w_shape[-2:]
    if k % COLUMN_MULTIPLE or f % COLUMN_MULTIPLE:
        return (f"the native expert matmul needs d_model and d_ff that are multiples of {COLUMN_MULTIPLE}; "
                f"the expert kernels are [{k}, {f}]")
    return ""


def _call(kind: str, a: Array, b: Array, shape) -> Array:
    if native.gemm_status() != "loaded":  # also what registers the FFI targets, on first use
        raise RuntimeError(f"the native expert matmul is unavailable: {native.gemm_status()}; use jnp.einsum")
    out = jax.ffi.ffi_call(native.GEMM_TARGETS[kind], jax.ShapeDtypeStruct(shape, jnp.float32))(a, b)
    return linalg.as_varying(out, a, b)  # inside shard_map the FFI call's output type carries no mesh axes


def _nn(a: Array, b: Array) -> Array:  # [E, M, K] @ [E, K, N]
    return _call("nn", a, b, (a.shape[0], a.shape[1], b.shape[2]))


def _tn(a: Array, b: Array) -> Array:  # [E, K, M]^T @ [E, K, N]
    return _call("tn", a, b, (a.shape[0], a.shape[2], b.shape[2]))


def _nt(a: Array, b: Array) -> Array:  # [E, M, K] @ [E, N, K]^T
    return _call("nt", a, b, (a.shape[0], a.shape[1], b.shape[1]))


@jax.custom_vjp
def expert_matmul(x: Array, w: Array) -> Array:
    """Each expert's rows times its kernel.

    Args:
      x: <float32>[E, N, K] each expert's rows.
      w: <float32>[E, K, F] each expert's kernel; K and F multiples of 64 (see unsupported_reason).

    Returns:
      <float32>[E, N, F], jnp.einsum('enk,ekf->enf', x, w) up to float32 rounding (each element summed in k
      order in one register, so the result does not depend on the thread count).
    """
    return _nn(x, w)


def _fwd(x, w):
    return _nn(x, w), (x, w)


def _bwd(residuals, dy):
    x, w = residuals
    return linalg.sum_to(_nt(dy, w), x), linalg.sum_to(_tn(x, dy), w)


expert_matmul.defvjp(_fwd, _bwd)
