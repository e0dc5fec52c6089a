"""Grouped matmul for the dropless backend: rows sorted by expert, each run of rows times its expert's matrix.

  lhs:    <dtype>[A, K] rows sorted by group (expert); group e holds rows sum(sizes[:e]) .. sum(sizes[:e+1]).
  rhs:    <dtype>[E, K, N] one matrix per group.
  sizes:  <int32>[E] rows per group, summing to A.
  -> <dtype>[A, N], row i = lhs[i] @ rhs[group of row i].

Two implementations with the same result and gradients:

* `ragged_dot`: jax.lax.ragged_dot, XLA's grouped matmul (a native grouped GEMM on GPU; what MaxText's
  megablox does with a Pallas kernel on TPU). On CPU, XLA computes it as E dense matmuls masked to their
  rows, so its cost grows with E.
* `blocks`: pad each group's rows to a multiple of `block` rows (default_block), then one batched
  matmul of [blocks, block, K] by each block's own expert matrix, gathered (megablox's tiling, in plain
  XLA ops). At most E * (block - 1) padding rows are computed, whatever the routing; static shapes
  throughout. Gathering one matrix per block costs weight traffic: on CPU this backend buys "no token
  dropped", not speed.

`auto` picks `blocks` on CPU and `ragged_dot` elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from switchrepro.config import GROUPED_MATMULS as IMPLS

Array = jax.Array


def default_block(rows: int, groups: int) -> int:
    """Rows per block: the power of two nearest below A / E (the mean rows per group), within [8, 256].
    Then at most about 2E blocks are computed: at most 2x the real rows, and each block gathers its
    expert's matrix, so about 2x the weight traffic of reading every expert once."""
    target = max(1, rows // groups)
    return min(256, max(8, 1 << (target.bit_length() - 1)))


def resolve(impl: str) -> str:
    """The implementation `impl` runs as on this JAX backend: `auto` is `blocks` on CPU, else `ragged_dot`."""
    if impl == "auto":
        return "blocks" if jax.default_backend() == "cpu" else "ragged_dot"
    return impl


def grouped_matmul(lhs: Array, rhs: Array, sizes: Array, impl: str = "auto", block: int | None = None) -> Array:
    """lhs <dtype>[A, K] (sorted by group) x rhs <dtype>[E, K, N] with sizes <int32>[E] -> <dtype>[A, N].

    sizes must sum to A. `block` (rows per block, `blocks` only) defaults to default_block(A, E)."""
    if impl not in IMPLS:
        raise ValueError(f"grouped matmul impl must be one of {IMPLS}, got {impl!r}")
    if lhs.ndim != 2 or rhs.ndim != 3 or lhs.shape[1] != rhs.shape[1] or sizes.shape != rhs.shape[:1]:
        raise ValueError(f"grouped_matmul needs lhs [A, K], rhs [E, K, N], sizes [E]; got {lhs.shape}, "
                         f"{rhs.shape}, {sizes.shape}")
    impl = resolve(impl)
    if impl == "ragged_dot":
        return jax.lax.ragged_dot(lhs, rhs, sizes.astype(jnp.int32))
    return _blocks(lhs, rhs, sizes.astype(jnp.int32), block or default_block(lhs.shape[0], rhs.shape[0]))


def _blocks(lhs: Array, rhs: Array, sizes: Array, block: int) -> Array:
    rows, num_groups = lhs.shape[0], rhs.shape[0]
    block = max(1, min(block, rows))
    # sum_e ceil(n_e / b) <= A / b + E: a static bound on the number of blocks.
    num_blocks = -(-rows // block) + num_groups
    starts = jnp.cumsum(sizes) - sizes                              # first row of each group in lhs
    padded = -(-sizes // block) * block                             # rows per group after padding
    padded_starts = jnp.cumsum(padded) - padded
    group_of_row = jnp.searchsorted(jnp.cumsum(sizes), jnp.arange(rows), side="right")  # <int32>[A]
    group_of_row = jnp.minimum(group_of_row, num_groups - 1)
    dest = padded_starts[group_of_row] + jnp.arange(rows) - starts[group_of_row]          # row's padded slot
    tiles = jnp.zeros((num_blocks * block, lhs.shape[1]), lhs.dtype).at[dest].set(lhs, unique_indices=True)
    # Each block belongs to one group: the last group starting at or before its first padded row. Blocks
    # past the end hold zero rows and are never read back.
    group_of_block = jnp.searchsorted(padded_starts + padded, jnp.arange(num_blocks) * block, side="right")
    group_of_block = jnp.minimum(group_of_block, num_groups - 1)
    out = jnp.einsum("bik,bkn->bin", tiles.reshape(num_blocks, block, -1), rhs[group_of_block])
    return out.reshape(num_blocks * block, -1)[dest]
