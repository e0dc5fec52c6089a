"""Mixture-of-experts core: routers (routing.py), dispatch backends (dispatch.py), the layer (layer.py)."""

from switchrepro.moe.dispatch import BACKENDS, einsum_dispatch, run_experts, scatter_dispatch
from switchrepro.moe.layer import MoeFeedForward, MoeMetrics, expert_init, routing_metrics
from switchrepro.moe.routing import (
    Routing,
    expert_capacity,
    load_balance_loss,
    noisy_topk_route,
    num_groups,
    route,
    router_z_loss,
    switch_route,
    top2_route,
)

__all__ = [
    "BACKENDS", "MoeFeedForward", "MoeMetrics", "Routing", "einsum_dispatch", "expert_capacity",
    "expert_init", "load_balance_loss", "noisy_topk_route", "num_groups", "route", "router_z_loss",
    "routing_metrics", "run_experts", "scatter_dispatch", "switch_route", "top2_route",
]
