"""Routers: which expert(s) each token goes to, its buffer slot, its gate, and the router losses.

Everything here is a pure function of arrays (plus an explicit PRNG key, or None for the deterministic
evaluation path), so routers can be tested on hand-written logits. A router returns a frozen `Routing`;
the dispatch backends (`dispatch.py`) only read that.

Semantics shared by every router (see docs/semantics.md, and section 2.1 of the paper):

* Routing works on groups: `<float32>[groups, tokens_per_group, num_experts]` logits. Capacity, priority
  and the load-balancing loss are all per group.
* Priority is sequence order inside the group. With k > 1 choices per token, every 1st choice of the group
  queues before any 2nd choice, every 2nd before any 3rd, and so on (GShard / mesh-tensorflow top-2).
* A token's assignment is kept iff its position (the number of earlier assignments in the group queued
  for the same expert) is < capacity. Dropped assignments get gate 0: the expert output is exactly 0 and
  the caller's residual connection carries the token.
* Padding (token_mask False) requests no expert, takes no capacity and is left out of every loss.
* Router probabilities are returned in float32 whatever dtype the logits had.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct
from jax.scipy.stats import norm

from switchrepro.backends.cpu.matmul import matmul
from switchrepro.config import MoeConfig

Array = jax.Array

# Shazeer et al. (2017) code adds this to softplus(x W_noise) so the load loss never divides by ~0.
NOISE_EPSILON = 1e-2


# ---------------------------------------------------------------------------------------------------
# Groups and capacity (plain Python ints: they fix static shapes)
# ---------------------------------------------------------------------------------------------------


def num_groups(num_tokens: int, group_size: int, multiple_of: int = 1) -> int:
    """The smallest divisor G of num_tokens with num_tokens / G <= group_size (and G % multiple_of == 0).

    Groups are therefore as large as allowed and all of equal size. Note: when num_tokens has no divisor
    close to num_tokens / group_size (e.g. a prime), groups get small; choose batch * length accordingly.
    `multiple_of` is the device count of an expert-parallel mesh: every device routes whole groups.
    """
    if num_tokens < 1 or group_size < 1:
        raise ValueError(f"need num_tokens >= 1 and group_size >= 1, got {num_tokens} and {group_size}")
    if num_tokens % multiple_of:
        raise ValueError(f"{num_tokens} tokens do not split over {multiple_of} devices: make batch_size a multiple "
                         f"of {multiple_of}")
    for g in range(-(-num_tokens // group_size), num_tokens + 1):
        if num_tokens % g == 0 and g % multiple_of == 0:
            return g
    raise AssertionError("unreachable: G = num_tokens always divides")


def expert_capacity(tokens_per_group: int, num_experts: int, capacity_factor: float, min_capacity: int,
                    rounding: str = "round") -> int:
    """Buffer slots per expert per group: max(min_capacity, R(capacity_factor * tokens_per_group / E)).

    R is "round" (round half UP: floor(x + 0.5), so 2.5 -> 3, unlike Python's round-half-to-even),
    "floor" (mesh-tensorflow) or "ceil". As in flaxformer there is no factor k for top-k routers: a top-2
    layer at capacity factor 1 has room for only half of its assignments.
    """
    raw = capacity_factor * tokens_per_group / num_experts
    if rounding == "round":
        c = math.floor(raw + 0.5)
    elif rounding == "floor":
        c = math.floor(raw)
    elif rounding == "ceil":
        c = math.ceil(raw)
    else:
        raise ValueError(f"capacity rounding must be 'round', 'floor' or 'ceil', got {rounding!r}")
    return max(int(min_capacity), int(c))


# ---------------------------------------------------------------------------------------------------
# The router output
# ---------------------------------------------------------------------------------------------------


@struct.dataclass
class Routing:
    """Where every token goes. G groups, S tokens per group, K choices per token, E experts.

    Attributes:
      expert_index: <int32>[G, S, K] chosen expert of each assignment (choice k = k-th best).
      position: <int32>[G, S, K] buffer slot in that expert; meaningful only where `kept`.
      gate: <float32>[G, S, K] combine weight; exactly 0 where not kept.
      kept: <bool>[G, S, K] assignment was requested and fits in capacity.
      routed: <bool>[G, S, K] assignment was requested, before capacity (False for padding, and for a
        top-2 second expert that the random policy skipped).
      probs: <float32>[G, S, E] router softmax over all experts (for metrics and losses).
      token_mask: <bool>[G, S] True for real tokens.
      load_balance_loss: <float32>[] Switch loss N * sum_i f_i P_i (raw, no coefficient).
      z_loss: <float32>[] router z-loss mean(logsumexp(logits)^2) (raw).
      importance_loss: <float32>[] Shazeer CV(importance)^2 (raw; 0 unless noisy_topk).
      load_loss: <float32>[] Shazeer CV(load)^2 (raw; 0 unless noisy_topk).
    """

    expert_index: Array
    position: Array
    gate: Array
    kept: Array
    routed: Array
    probs: Array
    token_mask: Array
    load_balance_loss: Array
    z_loss: Array
    importance_loss: Array
    load_loss: Array


# ---------------------------------------------------------------------------------------------------
# Shared pieces: masks, queue positions, losses
# ---------------------------------------------------------------------------------------------------


def _token_mask(token_mask: Optional[Array], logits: Array) -> Array:
    """<bool>[G, S]: the given mask, or all True."""
    if token_mask is None:
        return jnp.ones(logits.shape[:2], jnp.bool_)
    if token_mask.shape != logits.shape[:2]:
        raise ValueError(f"token_mask must have shape [groups, tokens_per_group] = {logits.shape[:2]}, "
                         f"got {token_mask.shape}")
    return token_mask.astype(jnp.bool_)


# From this many experts on, queue_positions sorts instead of taking a cumulative sum over one-hot rows:
# the one-hot cumsum costs O(K*S*E) per group, the sort O(K*S log(K*S)). Both give the same integers; on
# one CPU core at 16 groups x 1024 tokens the crossover is about 32 experts (128 experts, top-2: 5x faster).
SORTED_QUEUE_MIN_EXPERTS = 64


def queue_positions(expert_index: Array, routed: Array, num_experts: int) -> Array:
    """Slot of each assignment in its expert's queue: the count of earlier routed assignments to it.

    Args:
      expert_index: <int32>[G, S, K] chosen experts.
      routed: <bool>[G, S, K] which assignments request a slot.
      num_experts: E.

    Returns:
      <int32>[G, S, K] positions. "Earlier" means choice-major order: all 1st choices of the group in
      sequence order, then all 2nd choices, ... An assignment that is not routed still gets the count of
      routed ones before it (it is never kept, whatever its position).
    """
    g, s, k = expert_index.shape
    order = jnp.swapaxes(expert_index, 1, 2).reshape(g, k * s).astype(jnp.int32)  # [G, K*S], choice-major
    request = jnp.swapaxes(routed, 1, 2).reshape(g, k * s).astype(jnp.int32)
    if num_experts >= SORTED_QUEUE_MIN_EXPERTS:
        position = _queue_positions_sorted(order, request)
    else:
        onehot = jax.nn.one_hot(order, num_experts, dtype=jnp.int32) * request[..., None]
        earlier = jnp.cumsum(onehot, axis=1) - onehot  # exclusive cumsum: requests strictly before this one
        position = jnp.take_along_axis(earlier, order[..., None], axis=-1)[..., 0]
    return jnp.swapaxes(position.reshape(g, k, s), 1, 2)


def _queue_positions_sorted(order: Array, request: Array) -> Array:
    """queue_positions by sorting: <int32>[G, N] experts and 0/1 requests, queue order -> <int32>[G, N].

    A stable sort by expert keeps queue order inside each expert's run; an assignment's position is the
    requests before it in the sorted row minus those before its run's start."""
    perm = jnp.argsort(order, axis=1, stable=True)
    sorted_expert = jnp.take_along_axis(order, perm, axis=1)
    sorted_request = jnp.take_along_axis(request, perm, axis=1)
    before = jnp.cumsum(sorted_request, axis=1) - sorted_request
    run_start = jax.vmap(lambda e: jnp.searchsorted(e, e, side="left"))(sorted_expert)
    sorted_position = before - jnp.take_along_axis(before, run_start, axis=1)
    rows = jnp.arange(order.shape[0])[:, None]
    return jnp.zeros_like(sorted_position).at[rows, perm].set(sorted_position, unique_indices=True)


def _mean_over_groups(per_group: Array, token_mask: Array) -> Array:
    """Mean of a <float32>[G] per-group value over the groups that hold at least one real token."""
    has_tokens = jnp.any(token_mask, axis=1).astype(jnp.float32)
    return jnp.sum(per_group * has_tokens) / jnp.maximum(jnp.sum(has_tokens), 1.0)


def expert_counts(expert_index: Array, weight: Array, num_experts: int) -> Array:
    """Per group, the summed weight of the tokens sent to each expert: <float32>[G, E].

    Args:
      expert_index: <int>[G, ...] chosen experts.
      weight: <float>[G, ...] same shape; 0/1 weights give exact counts.
    A scatter-add, O(tokens); the same sums as one_hot(expert_index, E) * weight summed over tokens,
    without the [G, ..., E] one-hot."""
    g = expert_index.shape[0]
    rows = jnp.broadcast_to(jnp.arange(g).reshape((g,) + (1,) * (expert_index.ndim - 1)), expert_index.shape)
    return jnp.zeros((g, num_experts), jnp.float32).at[rows, expert_index].add(weight.astype(jnp.float32))


def load_balance_loss(probs: Array, top1_index: Array, token_mask: Array) -> Array:
    """Switch load-balancing loss N * sum_i f_i * P_i (paper eq. 4), per group, averaged over groups.

    Args:
      probs: <float32>[G, S, E] router probabilities.
      top1_index: <int32>[G, S] each token's first choice, BEFORE capacity dropping.
      token_mask: <bool>[G, S] real tokens; f and P are fractions/means over these only.

    Returns:
      <float32>[] the loss; exactly 1.0 when both f and P are uniform.
    """
    num_experts = probs.shape[-1]
    m = token_mask.astype(jnp.float32)[..., None]  # [G, S, 1]
    n = jnp.maximum(jnp.sum(m, axis=1), 1.0)  # [G, 1] real tokens per group
    f = expert_counts(top1_index, m[..., 0], num_experts) / n  # [G, E] fraction dispatched
    p = jnp.sum(probs * m, axis=1) / n  # [G, E] mean router probability (the differentiable part)
    return _mean_over_groups(num_experts * jnp.sum(f * p, axis=-1), token_mask)


def router_z_loss(logits: Array, token_mask: Array) -> Array:
    """ST-MoE eq. 5: mean over real tokens of logsumexp(logits)^2, in float32.

    Args:
      logits: <float>[G, S, E] router logits.
      token_mask: <bool>[G, S] real tokens.
    """
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    m = token_mask.astype(jnp.float32)
    return jnp.sum(lse**2 * m) / jnp.maximum(jnp.sum(m), 1.0)


def cv_squared(x: Array) -> Array:
    """Squared coefficient of variation over the last axis (population variance), as in Shazeer 2017."""
    mean = jnp.mean(x, axis=-1)
    return jnp.var(x, axis=-1) / (mean**2 + 1e-10)


def _finish(logits, probs, expert_index, gate, routed, capacity, token_mask, top1_index,
            importance_loss=None, load_loss=None) -> Routing:
    """Positions and capacity mask from the choices, then the losses; common tail of every router."""
    position = queue_positions(expert_index, routed, probs.shape[-1])
    kept = routed & (position < capacity)
    zero = jnp.zeros((), jnp.float32)
    return Routing(
        expert_index=expert_index.astype(jnp.int32),
        position=position,
        gate=jnp.where(kept, gate, 0.0).astype(jnp.float32),
        kept=kept,
        routed=routed,
        probs=probs,
        token_mask=token_mask,
        load_balance_loss=load_balance_loss(probs, top1_index, token_mask),
        z_loss=router_z_loss(logits, token_mask),
        importance_loss=zero if importance_loss is None else importance_loss,
        load_loss=zero if load_loss is None else load_loss,
    )


# Up to this many entries jnp.argmax is fastest; beyond, XLA CPU's (value, index) reduction is slow (16 ms
# for 16 x 1024 rows of 128 on one core, 9x argmax_last_axis's time; 20x over a 32k vocabulary).
FAST_ARGMAX_MIN = 17


def argmax_last_axis(x: Array) -> Array:
    """jnp.argmax(x, axis=-1), the same integers (first maximum; a NaN counts as the maximum, the first
    NaN wins), computed as a max then a min over matching positions: two plain reductions."""
    n = x.shape[-1]
    if n < FAST_ARGMAX_MIN:
        return jnp.argmax(x, axis=-1)
    top = jnp.max(x, axis=-1, keepdims=True)  # XLA CPU's max may or may not propagate a NaN: NaNs go apart
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    # NaN positions map below 0, so the first NaN beats any maximum; then back to its index
    first = jnp.min(jnp.where(jnp.isnan(x), iota - n, jnp.where(x == top, iota, n)), axis=-1)
    return jnp.where(first < 0, first + n, first)


def _softmax_f32(logits: Array) -> Array:
    # The softmax runs in the logits' dtype (a bfloat16 router really is bfloat16), then float32 for losses.
    return jax.nn.softmax(logits, axis=-1).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------
# Routers
# ---------------------------------------------------------------------------------------------------


def switch_route(logits: Array, capacity: int, token_mask: Optional[Array] = None, *,
                 sample_key: Optional[Array] = None) -> Routing:
    """Switch (top-1) routing: expert = argmax, gate = its raw softmax probability (not renormalised).

    Args:
      logits: <float>[G, S, E] router logits (float32 unless the router runs in bfloat16).
      capacity: slots per expert per group.
      token_mask: <bool>[G, S] True for real tokens; None means all real.
      sample_key: PRNG key for the "sample_softmax" exploration (training): the expert is sampled from
        the softmax instead of taken by argmax; the gate is still that expert's probability.

    Returns:
      Routing with K = 1.
    """
    mask = _token_mask(token_mask, logits)
    probs = _softmax_f32(logits)
    if sample_key is None:
        expert = argmax_last_axis(probs)
    else:
        expert = jax.random.categorical(sample_key, logits.astype(jnp.float32), axis=-1)
    gate = jnp.take_along_axis(probs, expert[..., None], axis=-1)  # [G, S, 1]
    return _finish(logits, probs, expert[..., None], gate, mask[..., None], capacity, mask, top1_index=expert)


def top2_route(logits: Array, capacity: int, token_mask: Optional[Array] = None, *,
               second_expert_threshold: float = 0.2, key: Optional[Array] = None) -> Routing:
    """Top-2 routing as mesh-tensorflow `_top_2_gating` (GShard), the paper's MoE baseline.

    g1 = best probability, g2 = best remaining probability, both renormalised by (g1 + g2 + 1e-9). In
    training (key given) the 2nd expert is used with probability min(1, g2 / second_expert_threshold),
    with g2 the renormalised gate; at evaluation (key None) it is always used, so evaluation is
    deterministic. Second choices queue after all first choices of the group. The load-balancing loss
    counts first choices only. Gates are not renormalised again after capacity dropping.

    Args:
      logits: <float>[G, S, E] router logits.
      capacity: slots per expert per group.
      token_mask: <bool>[G, S] True for real tokens; None means all real.
      second_expert_threshold: the "random" second-expert policy threshold (0.2 in mesh-tensorflow).
      key: PRNG key (training) for the second-expert coin, drawn as uniform(key, [G, S]); None at eval.

    Returns:
      Routing with K = 2.
    """
    mask = _token_mask(token_mask, logits)
    probs = _softmax_f32(logits)
    first = argmax_last_axis(probs)
    is_first = jax.nn.one_hot(first, probs.shape[-1], dtype=jnp.bool_)
    second = argmax_last_axis(jnp.where(is_first, -1.0, probs))
    g1 = jnp.take_along_axis(probs, first[..., None], axis=-1)[..., 0]
    g2 = jnp.take_along_axis(probs, second[..., None], axis=-1)[..., 0]
    denom = g1 + g2 + 1e-9
    g1, g2 = g1 / denom, g2 / denom
    if key is None:
        use_second = jnp.ones_like(mask)
    else:
        use_second = jax.random.uniform(key, g2.shape) < g2 / max(second_expert_threshold, 1e-9)
    expert_index = jnp.stack([first, second], axis=-1)
    gate = jnp.stack([g1, g2], axis=-1)
    routed = jnp.stack([mask, mask & use_second], axis=-1)
    return _finish(logits, probs, expert_index, gate, routed, capacity, mask, top1_index=first)


def noisy_topk_route(logits: Array, noise_logits: Array, capacity: int, k: int,
                     token_mask: Optional[Array] = None, *, key: Optional[Array] = None) -> Routing:
    """Noisy top-k gating (Shazeer et al. 2017) with its importance and load losses.

    Training (key given): H = x W_g + N(0, 1) * (softplus(x W_noise) + 1e-2); evaluation: H = x W_g.
    G = softmax over the k largest entries of H (renormalised over k, 0 elsewhere). Assignments queue
    choice-major as for top-2. Losses, per group then averaged over groups:
      importance = CV(sum_x G(x))^2;
      load = CV(Load)^2 with, in training, the smooth Load_i = sum_x Phi((xW_g_i - kth_excluding_i) /
      noise_std_i), kth_excluding_i being the k-th largest H among the other experts; at evaluation (no
      noise, Phi undefined) Load_i is the hard count of tokens whose top k holds i.
    The Switch load-balancing loss (on the top-1 of H) and the z-loss (on H) are reported as well.

    Args:
      logits: <float>[G, S, E] clean logits x W_g.
      noise_logits: <float>[G, S, E] x W_noise.
      capacity: slots per expert per group.
      k: experts per token.
      token_mask: <bool>[G, S] True for real tokens; None means all real.
      key: PRNG key (training) for the noise, drawn as normal(key, [G, S, E]); None at eval.

    Returns:
      Routing with K = k.
    """
    mask = _token_mask(token_mask, logits)
    num_experts = logits.shape[-1]
    noise_std = jax.nn.softplus(noise_logits) + NOISE_EPSILON
    if key is None:
        h = logits
    else:
        h = logits + jax.random.normal(key, logits.shape, logits.dtype) * noise_std
    top_h, expert_index = jax.lax.top_k(h, k)  # [G, S, k], best first
    gate = _softmax_f32(top_h)
    chosen = jnp.sum(jax.nn.one_hot(expert_index, num_experts), axis=-2)  # [G, S, E] 1 where in top k
    m = mask.astype(jnp.float32)[..., None]

    dense_gates = jnp.sum(jax.nn.one_hot(expert_index, num_experts) * gate[..., None], axis=-2)
    importance = jnp.sum(dense_gates * m, axis=1)  # [G, E]
    if key is None:
        load = jnp.sum(chosen * m, axis=1)
    else:
        top_h1 = jax.lax.top_k(h, min(k + 1, num_experts))[0].astype(jnp.float32)
        # For an expert inside the top k, the bar to stay in is the (k+1)-th value; outside, the k-th.
        bar_in = top_h1[..., k] if k < num_experts else jnp.full(top_h1.shape[:-1], -jnp.inf)
        bar = jnp.where(chosen > 0, bar_in[..., None], top_h1[..., k - 1][..., None])
        clean = logits.astype(jnp.float32)
        p_in_top_k = norm.cdf((clean - bar) / noise_std.astype(jnp.float32))
        load = jnp.sum(p_in_top_k * m, axis=1)
    importance_loss = _mean_over_groups(cv_squared(importance), mask)
    load_loss = _mean_over_groups(cv_squared(load), mask)

    routed = jnp.broadcast_to(mask[..., None], expert_index.shape)
    return _finish(h, _softmax_f32(h), expert_index, gate, routed, capacity, mask, top1_index=expert_index[..., 0],
                   importance_loss=importance_loss, load_loss=load_loss)


# ---------------------------------------------------------------------------------------------------
# From activations to a Routing, as the layer does it
# ---------------------------------------------------------------------------------------------------


def needs_key(cfg: MoeConfig) -> bool:
    """Whether training with this config draws random numbers in the router."""
    if cfg.router != "switch":
        return True  # top-2 second-expert coin; noisy top-k noise
    return ((cfg.exploration == "input_jitter" and cfg.jitter_eps > 0)
            or (cfg.exploration == "input_dropout" and cfg.input_dropout_rate > 0)
            or cfg.exploration == "sample_softmax")


def route(cfg: MoeConfig, x: Array, router_kernel: Array, capacity: int, token_mask: Optional[Array] = None, *,
          noise_kernel: Optional[Array] = None, key: Optional[Array] = None) -> Routing:
    """Router logits from activations, then the configured router.

    The router input is cast to cfg.router_dtype first (float32 = selective precision). Exploration
    (cfg.exploration, paper Table 11) applies to the Switch router in training only; the top-2 and noisy
    top-k routers have their own randomness instead (as in mesh-tensorflow, whose top-2 has no jitter).

    Random draws, for anyone reproducing them: k_input, k_route = jax.random.split(key);
      input_jitter:   x * uniform(k_input, x.shape, router_dtype, 1 - eps, 1 + eps)
      input_dropout:  x * bernoulli(k_input, 1 - rate, x.shape) / (1 - rate)
      sample_softmax: categorical(k_route, logits) ; top2: uniform(k_route, [G, S]) ;
      noisy_topk:     normal(k_route, [G, S, E]).

    Args:
      cfg: the layer's MoeConfig.
      x: <dtype>[G, S, M] grouped activations.
      router_kernel: <float32>[M, E] W_r (W_g for noisy top-k).
      capacity: slots per expert per group.
      token_mask: <bool>[G, S] True for real tokens; None means all real.
      noise_kernel: <float32>[M, E] W_noise, noisy top-k only.
      key: PRNG key in training (when `needs_key(cfg)`), None for the deterministic path.
    """
    dtype = jnp.dtype(cfg.router_dtype)
    x = x.astype(dtype)
    k_input = k_route = None
    if key is not None:
        k_input, k_route = jax.random.split(key)
    if cfg.router == "switch" and key is not None:
        if cfg.exploration == "input_jitter" and cfg.jitter_eps > 0:
            eps = cfg.jitter_eps
            x = x * jax.random.uniform(k_input, x.shape, dtype, 1.0 - eps, 1.0 + eps)
        elif cfg.exploration == "input_dropout" and cfg.input_dropout_rate > 0:
            keep = jax.random.bernoulli(k_input, 1.0 - cfg.input_dropout_rate, x.shape)
            x = jnp.where(keep, x / (1.0 - cfg.input_dropout_rate), 0).astype(dtype)
    logits = matmul(x, router_kernel.astype(dtype))  # <[G, S, E]>; on CPU a fast kernel gradient

    if cfg.router == "switch":
        sample_key = k_route if cfg.exploration == "sample_softmax" else None
        return switch_route(logits, capacity, token_mask, sample_key=sample_key)
    if cfg.router == "top2":
        return top2_route(logits, capacity, token_mask, second_expert_threshold=cfg.second_expert_threshold,
                          key=k_route)
    if cfg.router == "noisy_topk":
        if noise_kernel is None:
            raise ValueError("router='noisy_topk' needs noise_kernel (the W_noise parameter)")
        noise_logits = matmul(x, noise_kernel.astype(dtype))
        return noisy_topk_route(logits, noise_logits, capacity, cfg.noisy_top_k, token_mask, key=k_route)
    raise ValueError(f"router must be 'switch', 'top2' or 'noisy_topk', got {cfg.router!r}")
