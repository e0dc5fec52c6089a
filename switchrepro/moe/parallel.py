"""Expert and data parallelism on a JAX device mesh (paper section 5; docs/scale-out.md).

The mesh has two axes, ('data', 'expert'). A batch is split over all D = data x expert devices
(T5X's P(('data', 'expert'))); each device's tokens form its own routing groups, as in the paper.
Expert kernels <[E, ...]> are split over 'expert' and replicated over 'data'; every other parameter
is replicated. Only the expert computation runs under `shard_map`:

    route (GSPMD, per group)          -> Routing, sharded like the groups
    scatter into [E, G_local, C, M]   (local)
    all_to_all over 'expert'          -> [E / D_e, D_e * G_local, C, M]: my experts, everyone's tokens
    expert FFNs                       (local)
    all_to_all back                   -> [E, G_local, C, M]
    combine                           (local)

The buffers have a fixed capacity, so both all-to-alls have static shapes (ragged collectives are not
implemented on CPU). The router losses are means over all groups, computed outside shard_map, so they
are already averaged over the whole mesh; plain `jax.grad` gives the right expert gradients (shard_map
sums the gradients of the 'data' replicas), with no rescaling.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from switchrepro.moe import dispatch
from switchrepro.moe.routing import Routing, num_groups

Array = jax.Array
AXES = ("data", "expert")
BATCH = P(AXES)  # leading (batch or group) axis split over every device


# ------------------------------------------------------------------------------------------- the mesh


def parse_mesh(text: str) -> Dict[str, int]:
    """'data=2,expert=4' -> {'data': 2, 'expert': 4}; a missing axis has size 1."""
    sizes = {"data": 1, "expert": 1}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in sizes:
            raise ValueError(f"mesh axis {name!r} is unknown; use 'data' and 'expert', e.g. --mesh data=2,expert=4")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ValueError(f"mesh axis {name} needs an integer size, got {value!r} (e.g. {name}=4)") from None
        if sizes[name] < 1:
            raise ValueError(f"mesh axis {name} must be >= 1, got {sizes[name]}")
    return sizes


def make_mesh(sizes: Mapping[str, int], devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A ('data', 'expert') mesh over all devices (of every process) or over `devices`."""
    devices = list(jax.devices() if devices is None else devices)
    shape = (sizes.get("data", 1), sizes.get("expert", 1))
    if shape[0] * shape[1] != len(devices):
        hint = ("for CPU tests set XLA_FLAGS=--xla_force_host_platform_device_count=N before jax starts"
                if devices and devices[0].platform == "cpu" else "make data x expert equal the device count")
        raise ValueError(f"mesh data={shape[0]},expert={shape[1]} needs {shape[0] * shape[1]} devices, but "
                         f"{len(devices)} are available; {hint}")
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def describe(mesh: Mesh) -> str:
    return f"data={mesh.shape['data']},expert={mesh.shape['expert']}"


def check_experts(num_experts: int, mesh: Mesh) -> None:
    """Experts must split evenly over the 'expert' axis."""
    de = mesh.shape["expert"]
    if num_experts % de:
        raise ValueError(f"{num_experts} experts do not divide over mesh axis expert={de}: choose an expert axis "
                         f"that divides {num_experts} (e.g. expert={np.gcd(num_experts, de)}) or change "
                         f"MoeConfig.num_experts")


def check_batch(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"DataConfig.batch_size={batch_size} does not split over the {mesh.size} devices of mesh "
                         f"{describe(mesh)}: use a multiple of {mesh.size}")


def check_fits(mesh: Mesh, num_experts: Optional[int], batch_size: int) -> None:
    """A run's experts (None for a dense model) and batch must divide over `mesh`; ValueError says how."""
    if num_experts is not None:
        check_experts(num_experts, mesh)
    check_batch(batch_size, mesh)


# --------------------------------------------------------------------------------------- shardings


def param_spec(names: Sequence[Optional[str]]) -> P:
    """Logical axis names -> mesh spec: 'expert' -> 'expert', everything else replicated."""
    return P(*[("expert" if n == "expert" else None) for n in names])


def tree_shardings(mesh: Mesh, logical: Any) -> Any:
    """A NamedSharding per leaf of a pytree of logical PartitionSpecs (t5.logical_axes)."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, param_spec(tuple(spec))), logical,
                        is_leaf=lambda x: isinstance(x, P))


def opt_state_shardings(mesh: Mesh, opt_state: Any, params: Any, param_shardings: Any) -> Any:
    """Optimizer-state shardings that follow their parameters.

    Adafactor keeps, per parameter, either a full second moment (the parameter's shape) or factored row
    and column moments (the shape without the last, or the second-to-last, axis). Each state leaf under a
    parameter takes that parameter's spec on the axes it keeps; scalars (the step count) are replicated.
    """
    flat_params = {jax.tree_util.keystr(k): (v.shape, s.spec) for (k, v), s in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_shardings), strict=True)}

    def for_leaf(path, leaf):
        key = jax.tree_util.keystr(path)
        shape = getattr(leaf, "shape", ())
        for pkey, (pshape, spec) in flat_params.items():
            if key.endswith(pkey) and len(shape) >= 1:
                full = tuple(spec) + (None,) * (len(pshape) - len(tuple(spec)))
                if shape == pshape:
                    return NamedSharding(mesh, P(*full))
                if shape == pshape[:-1]:  # row moments
                    return NamedSharding(mesh, P(*full[:-1]))
                if shape == pshape[:-2] + pshape[-1:]:  # column moments
                    return NamedSharding(mesh, P(*(full[:-2] + full[-1:])))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(for_leaf, opt_state)


def shard_batch(mesh: Mesh, batch: Mapping[str, np.ndarray]) -> Dict[str, Array]:
    """Place a global batch (the same numpy arrays on every process) split over all devices; each process
    contributes only the rows of its own devices."""
    sharding = NamedSharding(mesh, BATCH)
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        rows = jax.process_count()
        per = value.shape[0] // rows
        local = value[jax.process_index() * per:(jax.process_index() + 1) * per]
        out[name] = jax.make_array_from_process_local_data(sharding, local, value.shape)
    return out


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of (possibly sharded) arrays."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shards = getattr(leaf, "addressable_shards", None)
        total += shards[0].data.nbytes if shards else np.asarray(leaf).nbytes
    return total


# ---------------------------------------------------------------------------------- expert parallel


def expert_parallel(mesh: Mesh, x: Array, routing: Routing, capacity: int,
                    expert_fn: Callable[[Array, Any], Array], weights: Any) -> Array:
    """Run the experts with their kernels split over 'expert' and the tokens split over every device.

    Args:
      mesh: a ('data', 'expert') mesh.
      x: <dtype>[G, S, M] grouped activations; G must be a multiple of mesh.size.
      routing: the Routing of x (expert_index, position, kept, gate: [G, S, K]; probs: [G, S, E]).
      capacity: C, slots per expert per group.
      expert_fn: (h <dtype>[E_local, N, M], weights) -> <dtype>[E_local, N, M].
      weights: pytree of <float32>[E, ...] expert kernels.

    Returns:
      <dtype>[G, S, M], equal to dispatch.scatter_dispatch on one device.
    """
    num_experts = routing.probs.shape[-1]
    check_experts(num_experts, mesh)
    if x.shape[0] % mesh.size:
        raise ValueError(f"{x.shape[0]} routing groups do not split over {mesh.size} devices")
    de = mesh.shape["expert"]
    if capacity == 0:
        return x * 0

    def local(x, expert_index, position, kept, gate, weights):
        # Only these four fields are read by scatter_to_buffers / combine_from_buffers.
        r = Routing(expert_index=expert_index, position=position, gate=gate, kept=kept, routed=kept, probs=None,
                    token_mask=None, load_balance_loss=None, z_loss=None, importance_loss=None, load_loss=None)
        buffers = dispatch.scatter_to_buffers(x, r, capacity, num_experts)  # [E, Gl, C, M]
        e, gl, c, m = buffers.shape
        # Send experts [j * E/De, (j+1) * E/De) to expert-shard j; receive every shard's groups for mine.
        mine = jax.lax.all_to_all(buffers, "expert", split_axis=0, concat_axis=1, tiled=True)  # [E/De, De*Gl, C, M]
        out = expert_fn(mine.reshape(e // de, de * gl * c, m), weights).reshape(e // de, de * gl, c, m)
        back = jax.lax.all_to_all(out, "expert", split_axis=1, concat_axis=0, tiled=True)  # [E, Gl, C, M]
        return dispatch.combine_from_buffers(back, r, capacity)

    wspec = jax.tree.map(lambda _: P("expert"), weights)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(BATCH,) * 5 + (wspec,), out_specs=BATCH)
    return fn(x, routing.expert_index, routing.position, routing.kept, routing.gate, weights)


def all_to_all_bytes(tokens: int, group_size: int, num_experts: int, capacity: int, d_model: int,
                     itemsize: int, mesh: Mesh, layers: int = 1) -> Dict[str, float]:
    """Bytes one device sends in the all-to-alls of one forward pass, from shapes alone.

    Each device holds [E, G_local, C, M] buffers and keeps 1/De of them; the rest crosses the wire, out
    and back. The backward pass sends the same again.
    """
    local = tokens // mesh.size
    g = num_groups(local, group_size)
    de = mesh.shape["expert"]
    buffer = num_experts * g * capacity * d_model * itemsize
    forward = 2 * buffer * (de - 1) / de * layers
    return {"buffer_bytes": float(buffer), "forward_bytes_per_device": forward,
            "train_step_bytes_per_device": 2 * forward}


# ---------------------------------------------------------------------------------------- multi-host


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """What `jax.distributed.initialize` is called with. All None means auto-detect (TPU VMs, SLURM)."""

    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None

    def kwargs(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def distributed_settings(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                         process_id: Optional[int] = None,
                         env: Optional[Mapping[str, str]] = None) -> DistributedSettings:
    """Flags first, then SWITCHREPRO_COORDINATOR / SWITCHREPRO_NUM_PROCESSES / SWITCHREPRO_PROCESS_ID.

    Either all three are given (any cluster) or none (jax auto-detects TPU pods and SLURM jobs).
    """
    env = os.environ if env is None else env
    coordinator = coordinator or env.get("SWITCHREPRO_COORDINATOR")
    num_processes = num_processes if num_processes is not None else _int_env(env, "SWITCHREPRO_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env(env, "SWITCHREPRO_PROCESS_ID")
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("give all of --coordinator HOST:PORT, --num-processes N and --process-id I, or none of "
                         "them to let jax detect the cluster (TPU VM, SLURM)")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    if coordinator is not None and ":" not in coordinator:
        raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    return DistributedSettings(coordinator, num_processes, process_id)


def _int_env(env: Mapping[str, str], name: str) -> Optional[int]:
    if name not in env:
        return None
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {env[name]!r}") from None


def initialize_distributed(settings: DistributedSettings) -> None:
    """jax.distributed.initialize with `settings`; must run before any other jax call."""
    jax.distributed.initialize(**settings.kwargs())
