"""The sparse feed-forward layer: group tokens, route, dispatch to stacked expert FFNs, report metrics.

    x <dtype>[batch, length, d_model]
      -> T = batch * length tokens, row-major, split into G groups of S tokens (routing.num_groups)
      -> Routing (float32 router, capacity per group)
      -> experts: an FFN per expert over [E, G * C, d_model] buffers (dispatch backend of cfg.dispatch; which
         matmuls compute them is switchrepro.backends.experts', per cfg.expert_matmul as the run resolved it),
         or, for dispatch 'dropless', a grouped matmul over all assignments sorted by expert (no capacity)
      -> y <dtype>[batch, length, d_model], the FFN branch only: the caller adds the residual.

Dropped and padding tokens get y = 0 exactly, so x + y passes them through unchanged.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from switchrepro.backends import experts as expert_backend
from switchrepro.config import MoeConfig
from switchrepro.moe import dispatch as dispatch_lib
from switchrepro.moe import grouped, parallel, routing

Array = jax.Array


@struct.dataclass
class MoeMetrics:
    """What one MoE layer reports; the model sums total_aux_loss over its sparse layers.

    Attributes:
      total_aux_loss: <float32>[] what the trainer adds to the loss: aux_loss_coef * load_balance_loss
        + z_loss_coef * z_loss; for noisy_topk importance_loss_coef * importance_loss +
        load_loss_coef * load_loss take the place of the load-balancing term.
      load_balance_loss: <float32>[] raw Switch loss N * sum_i f_i P_i (1.0 when balanced).
      z_loss: <float32>[] raw router z-loss.
      importance_loss: <float32>[] raw CV(importance)^2; 0 unless noisy_topk.
      load_loss: <float32>[] raw CV(load)^2; 0 unless noisy_topk.
      fraction_dropped: <float32>[] share of requested (non-padding) token-assignments that overflowed.
      tokens_per_expert: <float32>[E] share of requested assignments per expert, before dropping.
      router_entropy: <float32>[] mean entropy (nats) of the router softmax over real tokens.
      router_confidence: <float32>[] mean top-1 router probability over real tokens.
      expert_capacity: static int, slots per expert per group in this call.
    """

    total_aux_loss: Array
    load_balance_loss: Array
    z_loss: Array
    importance_loss: Array
    load_loss: Array
    fraction_dropped: Array
    tokens_per_expert: Array
    router_entropy: Array
    router_confidence: Array
    expert_capacity: int = struct.field(pytree_node=False)


def routing_metrics(cfg: MoeConfig, r: routing.Routing, capacity: int) -> MoeMetrics:
    """MoeMetrics from a Routing (all float32)."""
    if cfg.router == "noisy_topk":
        balance = cfg.importance_loss_coef * r.importance_loss + cfg.load_loss_coef * r.load_loss
    else:
        balance = cfg.aux_loss_coef * r.load_balance_loss
    requested = r.routed.astype(jnp.float32)
    n_requested = jnp.maximum(jnp.sum(requested), 1.0)
    per_expert = jnp.sum(routing.expert_counts(r.expert_index, requested, r.probs.shape[-1]), axis=0)
    real = r.token_mask.astype(jnp.float32)
    n_real = jnp.maximum(jnp.sum(real), 1.0)
    entropy = -jnp.sum(jax.scipy.special.xlogy(r.probs, r.probs), axis=-1)
    return MoeMetrics(
        total_aux_loss=balance + cfg.z_loss_coef * r.z_loss,
        load_balance_loss=r.load_balance_loss,
        z_loss=r.z_loss,
        importance_loss=r.importance_loss,
        load_loss=r.load_loss,
        fraction_dropped=jnp.sum(requested * (1.0 - r.kept)) / n_requested,
        tokens_per_expert=per_expert / n_requested,
        router_entropy=jnp.sum(entropy * real) / n_real,
        router_confidence=jnp.sum(jnp.max(r.probs, axis=-1) * real) / n_real,
        expert_capacity=capacity,
    )


def expert_init(scale: float) -> nn.initializers.Initializer:
    """Truncated normal, std sqrt(scale / fan_in), for stacked [E, fan_in, fan_out] kernels.

    batch_axis=(0,) keeps the expert axis out of fan-in: each expert starts exactly like a dense FFN
    kernel of shape [fan_in, fan_out]. Without it every expert would start sqrt(E) times too small.
    """
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1,
                                            batch_axis=(0,))


class MoeFeedForward(nn.Module):
    """A Switch / top-2 / noisy top-k feed-forward layer with E stacked expert FFNs.

    Attributes:
      cfg: router, capacity, losses and dispatch (switchrepro.config.MoeConfig).
      d_model: width of the input and output.
      d_ff: width of each expert's hidden layer.
      activation: 'relu' (relu(x wi) wo) or 'geglu' (gelu(x wi_0) * (x wi_1)) wo).
      init_scale: expert kernels start at std sqrt(init_scale / fan_in) (paper: 0.1).
      dtype: activation dtype; parameters are float32 and the router runs in cfg.router_dtype.
      mesh: a ('data', 'expert') device mesh for expert parallelism (switchrepro.moe.parallel), or None for
        one device. With a mesh every device routes whole groups of its own tokens and the experts run
        under shard_map with all-to-all; the outputs equal the one-device layer's when the groups are the
        same (batch * length / group_size a multiple of the device count).

    Training (deterministic=False) uses capacity_factor_train and the RNG streams 'jitter' (router
    randomness: cfg.exploration for the Switch router, the top-2 second-expert coin, noisy top-k noise;
    exploration does not apply to top2 / noisy_topk, as in mesh-tensorflow) and 'dropout' (only when
    cfg.expert_dropout > 0). Evaluation (deterministic=True) uses capacity_factor_eval and no randomness.
    """

    cfg: MoeConfig
    d_model: int
    d_ff: int
    activation: str = "relu"
    init_scale: float = 0.1
    dtype: Any = jnp.float32
    mesh: Any = None

    @nn.compact
    def __call__(self, x: Array, token_mask: Optional[Array] = None, *,
                 deterministic: bool) -> tuple[Array, MoeMetrics]:
        """Apply the layer.

        Args:
          x: <dtype>[batch, length, d_model] activations.
          token_mask: <bool>[batch, length] True for real tokens; None means all real.
          deterministic: True for evaluation (no randomness, capacity_factor_eval).

        Returns:
          y: <dtype>[batch, length, d_model], the FFN branch (no residual).
          metrics: MoeMetrics.
        """
        cfg = self.cfg
        cfg.validate()
        if self.activation not in ("relu", "geglu"):
            raise ValueError(f"activation must be 'relu' or 'geglu', got {self.activation!r}")
        batch, length, d_model = x.shape
        if d_model != self.d_model:
            raise ValueError(f"x has d_model={d_model} but MoeFeedForward.d_model={self.d_model}; make them equal")
        if token_mask is not None and token_mask.shape != (batch, length):
            raise ValueError(f"token_mask must have shape [batch, length] = {(batch, length)}, got {token_mask.shape}")
        num_experts = cfg.num_experts

        # --- parameters (float32), with logical axis names for partitioning ---
        router_init = nn.initializers.zeros if cfg.router == "noisy_topk" else \
            nn.initializers.normal(cfg.router_init_std)
        router_kernel = self.param("router", nn.with_logical_partitioning(router_init, ("embed", "unmodeled")),
                                   (d_model, num_experts), jnp.float32)
        noise_kernel = None
        if cfg.router == "noisy_topk":
            noise_kernel = self.param("router_noise", nn.with_logical_partitioning(
                nn.initializers.zeros, ("embed", "unmodeled")), (d_model, num_experts), jnp.float32)
        init = expert_init(self.init_scale)
        wi_names = ["wi_0", "wi_1"] if self.activation == "geglu" else ["wi"]
        wi = [self.param(name, nn.with_logical_partitioning(init, ("expert", "embed", "mlp")),
                         (num_experts, d_model, self.d_ff), jnp.float32) for name in wi_names]
        wo = self.param("wo", nn.with_logical_partitioning(init, ("expert", "mlp", "embed")),
                        (num_experts, self.d_ff, d_model), jnp.float32)

        # --- groups and capacity (static Python ints) ---
        devices = 1 if self.mesh is None else self.mesh.size
        groups = routing.num_groups(batch * length, cfg.group_size, multiple_of=devices)
        group_len = batch * length // groups
        xg = x.reshape(groups, group_len, d_model).astype(self.dtype)  # row-major: sequence order kept
        mask = None if token_mask is None else token_mask.reshape(groups, group_len)
        factor = cfg.capacity_factor_eval if deterministic else cfg.capacity_factor_train
        capacity = routing.expert_capacity(group_len, num_experts, factor, cfg.min_capacity, cfg.capacity_rounding)
        if cfg.dispatch == "dropless":  # an expert can get every token of a group: nothing overflows
            capacity = group_len

        # --- route (float32 unless cfg.router_dtype says otherwise) ---
        key = None
        if not deterministic and routing.needs_key(cfg):
            if not (self.has_rng("jitter") or self.is_initializing()):
                raise ValueError("training MoeFeedForward draws router noise: pass rngs={'jitter': key, ...} to "
                                 "apply(), or call it with deterministic=True")
            key = self.make_rng("jitter")
        r = routing.route(cfg, xg, router_kernel, capacity, mask, noise_kernel=noise_kernel, key=key)
        # Kept only when the caller makes "intermediates" mutable (switchrepro inspect); free otherwise.
        self.sow("intermediates", "first_choice", {
            "expert_index": r.expert_index[..., 0].reshape(batch, length),
            "gate": r.gate[..., 0].reshape(batch, length),
            "kept": r.kept[..., 0].reshape(batch, length)})

        # --- experts: an FFN per expert over its buffer rows ---
        hidden_dropout = nn.Dropout(rate=cfg.expert_dropout, name="expert_dropout")

        def activate(proj):
            return nn.gelu(proj[0]) * proj[1] if self.activation == "geglu" else nn.relu(proj[0])

        def experts(h: Array, weights=(wi, wo)) -> Array:  # <dtype>[E, N, d_model] -> <dtype>[E, N, d_model]
            w_in, w_out = [w.astype(self.dtype) for w in weights[0]], weights[1].astype(self.dtype)
            drop = None
            if cfg.expert_dropout > 0 and not deterministic:  # paper's "expert dropout" (fine-tuning)
                drop = lambda a: hidden_dropout(a, deterministic=False)
            # which matmuls run (XLA's dot, one expert at a time, native kernels) is the backend's: cfg.expert_matmul
            return expert_backend.expert_ffn(cfg.expert_matmul, h, w_in, w_out, activate, drop, cfg.expert_dropout)

        def ragged_experts(rows: Array, sizes: Array, weights=(wi, wo)) -> Array:
            """<dtype>[A, d_model] rows sorted by expert, <int32>[E] rows per expert -> <dtype>[A, d_model]."""
            w_in, w_out = weights
            a = activate([grouped.grouped_matmul(rows, w.astype(self.dtype), sizes, cfg.grouped_matmul) for w in w_in])
            a = hidden_dropout(a, deterministic=deterministic)
            return grouped.grouped_matmul(a, w_out.astype(self.dtype), sizes, cfg.grouped_matmul)

        if devices > 1:
            if cfg.dispatch == "dropless":
                raise ValueError("the dropless backend runs on one device; with a device mesh set "
                                 "MoeConfig.dispatch = 'scatter'")

            if cfg.expert_dropout > 0 and not deterministic:
                raise ValueError("expert dropout is not supported with a device mesh yet; set "
                                 "MoeConfig.expert_dropout = 0 or train without --mesh")
            y = parallel.expert_parallel(self.mesh, xg, r, capacity, experts, (wi, wo))
        else:
            y = dispatch_lib.run_experts(cfg.dispatch, xg, r, capacity, experts, ragged_experts)
        return y.reshape(batch, length, d_model), routing_metrics(cfg, r, capacity)
