"""Custom VJPs inside shard_map: keep the manual-axis types that jax checks.

A value made by a primitive that does not infer its shard_map type (an XLA FFI call), or a custom VJP's
gradient for a replicated operand, needs its varying mesh axes set by hand; these helpers do it and are no-ops
outside shard_map. (The CPU-fast matmuls that used to live here are switchrepro/backends/cpu/matmul.py.)
"""

from __future__ import annotations

import jax

Array = jax.Array


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
