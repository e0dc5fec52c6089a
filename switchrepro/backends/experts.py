"""Which code runs the experts' FFN matmuls: chosen here, outside the MoE layer's paper-faithful code.

A run's expert path is resolved once, when it starts (`resolve_expert_path`, called by the trainer), from
MoeConfig.expert_matmul and what this host can run. The trainer passes the resolved setting into the model
(`expert_matmul_setting`) and records the path in the run's config.json, so nothing inside the traced layer
asks the host, and a resume on a host that would take another path is stopped instead of switching. Each
layer call then asks for its experts' FFN through one function, `expert_ffn`.

Paths (as recorded in config.json's "expert_path"):
  native   the AVX-512 grouped matmuls (backends/cpu/native/expert_gemm.cc): float32 activations, d_model and
           d_ff multiples of 64. `auto` takes it wherever it runs (automatic, but recorded).
  xla      XLA's dot: one expert at a time (backends/cpu/expert_loop.py) on CPU from LOOP_MIN_ROWS buffer rows
           per expert, else one batched dot; `auto` on a CPU without the native kernels. Its setting is 'auto'
           (the layer's `auto` is XLA's dot: the native kernels are only ever chosen here).
  loop     always the loop (an explicit expert_matmul='loop').
  batched  always one batched dot over the expert axis (explicit 'batched', or `auto` off CPU).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from switchrepro.backends.cpu import expert_loop
from switchrepro.backends.cpu.native import expert_gemm
from switchrepro.config import ConfigError

Array = jax.Array
Activation = Callable[[Sequence[Array]], Array]  # [z_1, ..., z_k], each <dtype>[N, F] -> <dtype>[N, F]

EXPERT_PATHS = ("native", "xla", "loop", "batched")

# XLA's dot loops over experts on CPU from this many buffer rows per expert on: with fewer, each expert's
# matmul is too small to pay for a loop step (2 cores, d_model 256, d_ff 1024: 2,048 rows, 8 experts:
# loop 245 ms vs batched 320 ms per layer forward+backward; 128 rows, 128 experts: 410 vs 423 ms; the
# peer model's 40 rows, 128 experts: the loop is slower).
# Re-measured with the custom-VJP loop (paired loop/batched, 20 pairs, d_model 256): no threshold in rows fits
# every expert count (128 experts x 32 rows: 0.95; 64 x 32: 1.58; 64 x 128: 0.94; 32 x 128: 1.15; 256 x 128:
# 1.02), so it stays. 128 x 32 again on 2026-12-06 (30 pairs, two sittings): 1.00 and 1.02.
LOOP_MIN_ROWS = 128


def native_reason(d_model: int, d_ff: int, dtype) -> str:
    """'' when the native expert matmuls can run here on experts of d_model x d_ff in `dtype`, else why not."""
    return expert_gemm.unsupported_reason((0, 0, d_model), (0, d_model, d_ff), dtype)


def resolve_expert_path(expert_matmul: str, d_model: int, d_ff: int, dtype) -> str:
    """The path (EXPERT_PATHS) that a run with MoeConfig.expert_matmul = `expert_matmul` takes on this host.

    `auto` is `native` wherever the kernels run (faster than XLA's dot at every expert count measured: the
    Switch layer's 128 experts x 128 rows cost 1.11x the time of 8 x 2,048 rows, against 1.34x with XLA's
    dot), else `xla` on CPU and `batched` elsewhere. Raises ConfigError for an explicit 'native' that cannot run.
    """
    if expert_matmul == "native":
        if reason := native_reason(d_model, d_ff, dtype):
            raise ConfigError(f"expert_matmul='native' cannot run: {reason}. Set MoeConfig.expert_matmul to 'auto' "
                             "(which falls back to XLA's dot)")
        return "native"
    if expert_matmul != "auto":
        return expert_matmul
    if not native_reason(d_model, d_ff, dtype):
        return "native"
    return "xla" if jax.default_backend() == "cpu" else "batched"


def expert_matmul_setting(path: str) -> str:
    """The MoeConfig.expert_matmul value that runs `path` (EXPERT_PATHS) in the layer: 'xla' is 'auto'."""
    if path not in EXPERT_PATHS:
        raise ConfigError(f"expert path must be one of {EXPERT_PATHS}, got {path!r}")
    return "auto" if path == "xla" else path


def expert_impl(expert_matmul: str, rows: int) -> str:
    """How one layer call runs its experts, each on `rows` buffer rows (G * C): 'native', 'loop' or 'batched'.

    The layer's `auto` is XLA's dot (the native kernels are chosen per run, by resolve_expert_path): the loop
    on CPU from LOOP_MIN_ROWS rows, else batched. A function of the shapes; the JAX platform only keeps the
    CPU loop off accelerators."""
    if expert_matmul == "auto":
        return "loop" if jax.default_backend() == "cpu" and rows >= LOOP_MIN_ROWS else "batched"
    return expert_matmul


def expert_ffn(expert_matmul: str, h: Array, w_in: Sequence[Array], w_out: Array, activate: Activation,
               dropout: Optional[Callable[[Array], Array]] = None, rate: float = 0.0) -> Array:
    """Expert e's FFN on h[e], for every e, on the path that `expert_matmul` (a resolved setting) names.

    Args:
      expert_matmul: MoeConfig.expert_matmul, 'native', 'loop', 'batched' or 'auto' (XLA's dot: expert_impl).
      h: <dtype>[E, N, M] each expert's buffer rows.
      w_in: k arrays <dtype>[E, M, F], the input kernels (k = 1 for relu, 2 for geglu).
      w_out: <dtype>[E, F, M] the output kernels.
      activate: maps the k pre-activations (<dtype>[E, N, F] or, in the loop, [N, F] each) to the hidden units.
      dropout: None, or the hidden units' dropout (a -> dropped a, drawing its mask when called); the loop
        draws the same mask, bit for bit, by calling it once on ones.
      rate: the dropout's rate (the loop scales kept units by 1 / (1 - rate)).

    Returns:
      <dtype>[E, N, M] the experts' outputs.
    """
    impl = expert_impl(expert_matmul, h.shape[1])
    if impl == "loop":
        # One expert at a time: XLA CPU's batched dot slows down as E grows at equal FLOPs (per-expert
        # matmuls of few rows), and a loop keeps each expert's [N, d_ff] hidden in cache.
        keep = None if dropout is None else dropout(jnp.ones(h.shape[:-1] + (w_out.shape[1],), h.dtype)) != 0
        return expert_loop.expert_ffn(h, w_in, w_out, activate, keep, rate)
    if impl == "native":
        if reason := expert_gemm.unsupported_reason(h.shape, w_in[0].shape, h.dtype):
            raise ConfigError(f"expert_matmul='native' cannot run: {reason}. Set MoeConfig.expert_matmul to 'auto' "
                             "(which falls back to XLA's dot)")
        matmul = expert_gemm.expert_matmul
    else:
        matmul = functools.partial(jnp.einsum, "enm,emf->enf")
    a = activate([matmul(h, w) for w in w_in])
    if dropout is not None:
        a = dropout(a)  # paper's "expert dropout" (fine-tuning)
    return matmul(a, w_out)
