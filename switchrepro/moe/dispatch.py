"""Dispatch backends: send tokens to expert buffers, run the experts, combine the outputs.

The buffer backends take the same arguments and give the same outputs and gradients:

  x:        <dtype>[G, S, M] grouped activations.
  routing:  a `routing.Routing` (expert_index, position, gate, kept: [G, S, K]).
  capacity: slots per expert per group (C), a Python int.
  expert_fn: maps <dtype>[E, N, M] -> <dtype>[E, N, M], expert e applied to row e; here N = G * C.

and return <dtype>[G, S, M]: sum over kept assignments of gate * expert(x); exactly 0 for tokens with no
kept assignment. Routing math is float32; gates are cast to the activation dtype here, at the end.

* `einsum`: one-hot dispatch/combine tensors [G, S, E, C], as in the paper and mesh-tensorflow. Cost grows
  with S^2; kept as the faithful oracle.
* `scatter` (default): write each kept token straight into a static [E, G, C, M] buffer and gather the
  outputs back. Same static shapes (jit / all_to_all friendly), O(S) data movement.
* `dropless`: no buffers and no capacity. Every assignment, sorted by expert, goes through a grouped matmul
  (switchrepro.moe.grouped); it takes `ragged_expert_fn` instead of `expert_fn`:
  <dtype>[A, M] rows sorted by expert, <int32>[E] rows per expert -> <dtype>[A, M]. The layer routes with
  capacity = group length for it, so `kept` drops nothing (only padding and top-2's second-expert coin).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from switchrepro.config import DISPATCHES
from switchrepro.moe.routing import Routing

Array = jax.Array
ExpertFn = Callable[[Array], Array]
RaggedExpertFn = Callable[[Array, Array], Array]


def _sizes(x: Array, routing: Routing):
    g, s, _ = x.shape
    if routing.expert_index.shape[:2] != (g, s):
        raise ValueError(f"routing is for [groups, tokens] = {routing.expert_index.shape[:2]} but x is {x.shape}")
    return routing.probs.shape[-1]


def einsum_dispatch(x: Array, routing: Routing, capacity: int, expert_fn: ExpertFn) -> Array:
    """One-hot einsum dispatch (paper Appendix F). See the module docstring for arguments."""
    num_experts = _sizes(x, routing)
    g, _, m = x.shape
    # [G, S, K, E] x [G, S, K, C] -> [G, S, E, C]; a token's K choices are distinct experts, so no overlap.
    # one_hot(position, C) is all-zero for position >= C, and `kept` zeroes everything else dropped.
    expert_1h = jax.nn.one_hot(routing.expert_index, num_experts, dtype=jnp.float32)
    slot_1h = jax.nn.one_hot(routing.position, capacity, dtype=jnp.float32) * routing.kept[..., None]
    dispatch = jnp.einsum("gske,gskc->gsec", expert_1h, slot_1h)
    combine = jnp.einsum("gske,gskc,gsk->gsec", expert_1h, slot_1h, routing.gate)
    dispatch, combine = dispatch.astype(x.dtype), combine.astype(x.dtype)

    buffers = jnp.einsum("gsec,gsm->egcm", dispatch, x)  # [E, G, C, M]
    out = expert_fn(buffers.reshape(num_experts, g * capacity, m)).reshape(num_experts, g, capacity, m)
    return jnp.einsum("egcm,gsec->gsm", out, combine)


def _buffer_addresses(routing: Routing, capacity: int):
    """(expert, group, slot) <int32>[G, S, K] of every assignment; dropped ones get slot C, out of range,
    so they are neither written (mode='drop') nor read back (mode='fill')."""
    expert = routing.expert_index
    group = jnp.broadcast_to(jnp.arange(expert.shape[0])[:, None, None], expert.shape)
    return expert, group, jnp.where(routing.kept, routing.position, capacity)


def scatter_to_buffers(x: Array, routing: Routing, capacity: int, num_experts: Optional[int] = None) -> Array:
    """Each kept assignment's token copied into its slot: <dtype>[E, G, C, M] (unused slots 0).

    Args:
      x: <dtype>[G, S, M] grouped activations.
      routing: expert_index / position / kept <[G, S, K]> (only these fields are read).
      capacity: C, slots per expert per group (>= 1).
      num_experts: E (default: from routing.probs).
    """
    num_experts = routing.probs.shape[-1] if num_experts is None else num_experts
    g, s, m = x.shape
    k = routing.expert_index.shape[-1]
    expert, group, slot = _buffer_addresses(routing, capacity)
    copies = jnp.broadcast_to(x[:, :, None, :], (g, s, k, m))  # one copy of the token per choice
    return jnp.zeros((num_experts, g, capacity, m), x.dtype).at[expert, group, slot].set(copies, mode="drop")


def combine_from_buffers(out: Array, routing: Routing, capacity: int) -> Array:
    """Inverse of scatter_to_buffers, weighted: <dtype>[E, G, C, M] expert outputs -> <dtype>[G, S, M],
    the sum over kept assignments of gate * output (0 for dropped ones)."""
    expert, group, slot = _buffer_addresses(routing, capacity)
    back = out.at[expert, group, slot].get(mode="fill", fill_value=0)  # [G, S, K, M]
    return jnp.einsum("gskm,gsk->gsm", back, routing.gate.astype(out.dtype))


def scatter_dispatch(x: Array, routing: Routing, capacity: int, expert_fn: ExpertFn) -> Array:
    """Scatter into static [E, G, C, M] buffers, gather back. See the module docstring for arguments."""
    num_experts = _sizes(x, routing)
    g, _, m = x.shape
    if capacity == 0:  # nothing fits anywhere (and a gather of size-0 slots is not defined)
        return jnp.zeros_like(x)
    buffers = scatter_to_buffers(x, routing, capacity)
    out = expert_fn(buffers.reshape(num_experts, g * capacity, m)).reshape(num_experts, g, capacity, m)
    return combine_from_buffers(out, routing, capacity)


def dropless_dispatch(x: Array, routing: Routing, ragged_expert_fn: RaggedExpertFn) -> Array:
    """Sort all G * S * K assignments by expert, run them as one grouped FFN, unsort and weight by gate.

    Args:
      x: <dtype>[G, S, M] grouped activations.
      routing: expert_index / gate / kept <[G, S, K]>; assignments with kept False still flow through the
        experts (static shapes) but get weight 0, so their tokens' outputs are exactly 0.
      ragged_expert_fn: <dtype>[A, M] rows sorted by expert, <int32>[E] rows per expert -> <dtype>[A, M].
    """
    num_experts = _sizes(x, routing)
    g, s, m = x.shape
    k = routing.expert_index.shape[-1]
    expert = routing.expert_index.reshape(-1)                    # <int32>[A], A = G * S * K, token-major
    order = jnp.argsort(expert, stable=True)                     # stable: sequence order within an expert
    rows = x.reshape(g * s, m)[order // k]                       # assignment a belongs to token a // K
    sizes = jnp.bincount(expert, length=num_experts).astype(jnp.int32)
    out = ragged_expert_fn(rows, sizes)
    unsorted = out[jnp.argsort(order)].reshape(g, s, k, m)      # the inverse permutation
    weight = jnp.where(routing.kept, routing.gate, 0.0).astype(x.dtype)
    return jnp.einsum("gskm,gsk->gsm", unsorted, weight)


BACKENDS = {"einsum": einsum_dispatch, "scatter": scatter_dispatch}


def run_experts(kind: str, x: Array, routing: Routing, capacity: int, expert_fn: ExpertFn,
                ragged_expert_fn: Optional[RaggedExpertFn] = None) -> Array:
    """Run the experts on the routed tokens with backend `kind` ('scatter', 'einsum' or 'dropless', which
    needs `ragged_expert_fn` and ignores `capacity` and `expert_fn`)."""
    if kind == "dropless":
        if ragged_expert_fn is None:
            raise ValueError("the dropless backend needs ragged_expert_fn (rows sorted by expert, sizes)")
        return dropless_dispatch(x, routing, ragged_expert_fn)
    if kind not in BACKENDS:
        raise ValueError(f"dispatch must be one of {DISPATCHES}, got {kind!r}")
    return BACKENDS[kind](x, routing, capacity, expert_fn)
