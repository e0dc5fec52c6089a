"""Data and expert parallelism on 8 simulated CPU devices (tests/conftest.py sets the device count).

Every sharded result is checked against the one-device computation: the MoE layer (outputs and
gradients) on four meshes, a whole train step, the CLI `train --mesh`, and checkpoints moved between
device counts. A single-process `jax.distributed` launch runs the real multi-host entry point.
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from switchrepro.api import load_caches
from switchrepro.backends.cpu.native import expert_gemm
from switchrepro.cli import main
from switchrepro.config import MoeConfig
from switchrepro.data import cache as data_cache
from switchrepro.moe import parallel
from switchrepro.moe.layer import MoeFeedForward
from switchrepro.train import trainer
from switchrepro.train.checkpoint import Checkpointer

MESHES = [(1, 8), (2, 4), (4, 2), (8, 1)]
# Groups of 16 tokens: the 1-device grouping puts whole groups on each of 8 devices, so the sharded and
# unsharded runs route exactly the same groups.
MESH_MOE = MoeConfig(num_experts=8, group_size=16, capacity_factor_train=1.0, capacity_factor_eval=1.0,
                     min_capacity=1, jitter_eps=0.01)


def _mesh(data, expert):
    return parallel.make_mesh({"data": data, "expert": expert})


def test_eight_simulated_devices():
    assert jax.device_count() == 8, "tests/conftest.py must set --xla_force_host_platform_device_count=8"


def test_parse_mesh_and_clear_errors():
    assert parallel.parse_mesh("data=2,expert=4") == {"data": 2, "expert": 4}
    assert parallel.parse_mesh("expert=8") == {"data": 1, "expert": 8}
    with pytest.raises(ValueError, match="unknown; use 'data' and 'expert'"):
        parallel.parse_mesh("model=2")
    with pytest.raises(ValueError, match="needs an integer size"):
        parallel.parse_mesh("data=two")
    with pytest.raises(ValueError, match="needs 12 devices, but 8 are available"):
        parallel.make_mesh({"data": 3, "expert": 4})
    with pytest.raises(ValueError, match="6 experts do not divide over mesh axis expert=4.*expert=2"):
        parallel.check_experts(6, _mesh(2, 4))
    with pytest.raises(ValueError, match="batch_size=12 does not split over the 8 devices"):
        parallel.check_batch(12, _mesh(2, 4))


@pytest.fixture(scope="module")
def layer_reference():
    """One-device MoE layer: parameters, input, output and gradients of a loss through outputs and aux."""
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16, 32))
    params = MoeFeedForward(MESH_MOE, 32, 64).init({"params": jax.random.PRNGKey(1)}, x, deterministic=True)
    return params, x, _layer_loss_and_grads(MoeFeedForward(MESH_MOE, 32, 64), params, x)


def _layer_loss_and_grads(layer, params, x):
    def loss(p, x):
        y, metrics = layer.apply(p, x, deterministic=False, rngs={"jitter": jax.random.PRNGKey(3)})
        return jnp.sum(y**2) + metrics.total_aux_loss, (y, metrics.fraction_dropped)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params, x)


@pytest.mark.parametrize("data,expert", MESHES)
def test_expert_parallel_layer_equals_one_device(cheap_compiles, layer_reference, data, expert):
    params, x, ((loss0, (y0, dropped0)), grads0) = layer_reference
    mesh = _mesh(data, expert)
    xs = jax.device_put(x, NamedSharding(mesh, parallel.BATCH))
    (loss1, (y1, dropped1)), grads1 = _layer_loss_and_grads(MoeFeedForward(MESH_MOE, 32, 64, mesh=mesh), params, xs)
    assert float(dropped0) > 0  # capacity 1.0 drops tokens, so the capacity logic is exercised
    np.testing.assert_allclose(y1, y0, atol=1e-6)
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    assert float(dropped1) == float(dropped0)
    for g0, g1 in zip(jax.tree.leaves(grads0), jax.tree.leaves(grads1), strict=True):
        np.testing.assert_allclose(g1, g0, atol=1e-6, rtol=1e-5)


def _layer_on_mesh_2x4_equals_one_device(cfg, seed, d_model=32, d_ff=64):
    """Outputs, loss and gradients of `cfg`'s layer on a data=2,expert=4 mesh equal the one-device layer's."""
    x = jax.random.normal(jax.random.PRNGKey(seed), (8, 16, d_model))
    params = MoeFeedForward(cfg, d_model, d_ff).init({"params": jax.random.PRNGKey(1)}, x, deterministic=True)
    (l0, (y0, _)), g0 = _layer_loss_and_grads(MoeFeedForward(cfg, d_model, d_ff), params, x)
    mesh = _mesh(2, 4)
    (l1, (y1, _)), g1 = _layer_loss_and_grads(MoeFeedForward(cfg, d_model, d_ff, mesh=mesh), params,
                                               jax.device_put(x, NamedSharding(mesh, parallel.BATCH)))
    np.testing.assert_allclose(y1, y0, atol=1e-6)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5)


def test_expert_parallel_top2_equals_one_device(cheap_compiles):
    _layer_on_mesh_2x4_equals_one_device(dataclasses.replace(MESH_MOE, router="top2", capacity_factor_train=1.25), 5)


def test_expert_parallel_with_the_expert_loop_equals_one_device(cheap_compiles):
    """The CPU expert loop (custom VJP, uninitialised buffers) inside shard_map."""
    _layer_on_mesh_2x4_equals_one_device(dataclasses.replace(MESH_MOE, expert_matmul="loop"), 6)


def test_expert_parallel_with_the_native_matmuls_equals_one_device(cheap_compiles):
    """The native expert matmuls (an XLA FFI call and a custom VJP) inside shard_map: widths they can tile."""
    reason = expert_gemm.unavailable_reason()
    if reason:
        pytest.skip(reason)
    _layer_on_mesh_2x4_equals_one_device(dataclasses.replace(MESH_MOE, expert_matmul="native"), 7, 64, 128)


def test_dropless_on_a_mesh_says_what_to_change(cheap_compiles):
    cfg = dataclasses.replace(MESH_MOE, dispatch="dropless")
    x = jnp.zeros((8, 16, 32))
    params = MoeFeedForward(cfg, 32, 64).init({"params": jax.random.PRNGKey(1)}, x, deterministic=True)
    with pytest.raises(ValueError, match="dropless backend runs on one device.*dispatch = 'scatter'"):
        MoeFeedForward(cfg, 32, 64, mesh=_mesh(2, 4)).apply(params, x, deterministic=True)


def test_all_to_all_bytes_from_shapes():
    # 1024 tokens over 8 devices = 128 local tokens, 1 group of 128; E=8, C=16, M=32, float32.
    # Buffer 8*1*16*32*4 = 16384 bytes; 3/4 of it leaves a device on expert=4, out and back.
    b = parallel.all_to_all_bytes(1024, 128, 8, 16, 32, 4, _mesh(2, 4))
    assert b["buffer_bytes"] == 16384
    assert b["forward_bytes_per_device"] == 2 * 16384 * 3 / 4
    assert b["train_step_bytes_per_device"] == 4 * 16384 * 3 / 4
    assert parallel.all_to_all_bytes(1024, 128, 8, 16, 32, 4, _mesh(8, 1))["forward_bytes_per_device"] == 0


@pytest.fixture(scope="module")
def mesh_experiment(tiny_experiment):
    cfg = tiny_experiment(moe=MESH_MOE, steps=4, eval_every=2, checkpoint_every=2, log_every=1)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_examples=16))


def test_sharded_train_step_equals_unsharded(cheap_compiles, mesh_experiment):
    cfg = mesh_experiment
    mesh = _mesh(2, 4)
    caches = load_caches(cfg, echo=lambda s: None)
    batch = data_cache.train_batch(caches[0], 0, cfg.data.batch_size, cfg.train.seed)
    model0, opt0, state0, key = trainer.initial_state(cfg)
    model1, opt1, state1, _ = trainer.initial_state(cfg, mesh)
    place = trainer.placement(cfg, mesh, state1.params, opt1)

    # Expert kernels and their factored Adafactor moments live on 'expert'; the rest is replicated.
    wi = state1.params["encoder_layer_1"]["ffn"]["moe"]["wi"]
    assert wi.sharding.spec == P("expert", None, None) and wi.addressable_shards[0].data.shape[0] == 2
    emb = state1.params["token_embedder"]["embedding"]
    assert emb.sharding.is_fully_replicated
    expert_state = [leaf for leaf in jax.tree.leaves(state1.opt_state)
                    if getattr(leaf, "ndim", 0) >= 2 and leaf.shape[0] == 8]  # second moments of expert kernels
    assert expert_state and all(leaf.sharding.spec[0] == "expert" for leaf in expert_state)

    unsharded_params = jax.tree.map(np.asarray, state0.params)
    s0, m0 = trainer.make_train_step(model0, opt0, cfg.train)(state0, batch, key)
    s1, m1 = trainer.make_train_step(model1, opt1, cfg.train, place)(state1, place.place_batch(batch), key)
    for k in ("loss", "cross_entropy", "aux_loss", "fraction_dropped", "grad_norm"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=2e-6, atol=1e-7, err_msg=k)
    for a, b, before in zip(jax.tree.leaves(s0.params),
                             jax.tree.leaves(s1.params), jax.tree.leaves(unsharded_params), strict=True):
        assert not np.array_equal(a, before) or np.all(before == 0)  # the step did update
        np.testing.assert_allclose(b, a, atol=2e-6, rtol=1e-5)


def _assert_trees_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=0)


def test_checkpoint_moves_between_8_devices_and_1(cheap_compiles, mesh_experiment, tmp_path):
    cfg = mesh_experiment
    mesh = _mesh(2, 4)
    _, _, sharded, _ = trainer.initial_state(cfg, mesh)
    _, _, single, _ = trainer.initial_state(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=7)))
    # 8 devices -> 1: restore the sharded seed-0 state into a one-device state of another seed.
    ck = Checkpointer(tmp_path / "from8")
    ck.save(3, sharded)
    restored = ck.restore_latest(single)
    ck.close()
    _assert_trees_close(restored.params, sharded.params)
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(restored.params))
    # 1 device -> 8: restore the one-device seed-7 state onto the mesh layout of the seed-0 state.
    ck = Checkpointer(tmp_path / "from1")
    ck.save(5, single)
    onto_mesh = ck.restore_latest(sharded)
    ck.close()
    _assert_trees_close(onto_mesh.params, single.params)
    _assert_trees_close(onto_mesh.opt_state, single.opt_state)
    wi = onto_mesh.params["encoder_layer_1"]["ffn"]["moe"]["wi"]
    assert wi.sharding.spec == P("expert", None, None) and len(wi.sharding.device_set) == 8


TRAIN_ARGS = ["--gin-file", "models/tiny_switch.gin", "--gin", "DataConfig.batch_size = 8",
              "--gin", "DataConfig.inputs_length = 64", "--gin", "DataConfig.targets_length = 16",
              "--gin", "DataConfig.eval_examples = 16", "--gin", "DataConfig.max_train_examples = 256",
              "--gin", "TrainConfig.steps = 4", "--gin", "TrainConfig.eval_every = 2",
              "--gin", "TrainConfig.checkpoint_every = 2", "--gin", "TrainConfig.log_every = 1",
              "--gin", "MoeConfig.group_size = 16", "--no-progress"]


def _metrics(run_dir):
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("examples_per_sec", "tokens_per_sec", "wall_seconds")}
            for r in rows]


def _assert_same_metrics(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k, va in ra.items():
            if isinstance(va, float):
                assert rb[k] == pytest.approx(va, rel=1e-5, abs=1e-6), k
            elif k != "eval_moe_layers":
                assert rb[k] == va, k


@pytest.mark.parametrize("extra,message", [
    (["--mesh", "data=3,expert=4"], "needs 12 devices, but 8 are available"),
    (["--mesh", "expert=8", "--gin", "MoeConfig.num_experts = 4"], "4 experts do not divide over mesh axis expert=8"),
    (["--mesh", "data=8", "--gin", "DataConfig.batch_size = 12"], "batch_size=12 does not split over the 8 devices"),
    (["--coordinator", "localhost:1234"], "give all of --coordinator HOST:PORT, --num-processes N"),
])
def test_cli_mesh_errors_say_what_to_change(extra, message, tmp_path):
    out = CliRunner().invoke(main, ["train", *TRAIN_ARGS, "--run-dir", str(tmp_path), *extra])
    assert out.exit_code == 2 and message in out.output, out.output


def test_distributed_settings():
    assert parallel.distributed_settings(env={}).kwargs() == {}  # auto-detect: TPU VM, SLURM
    s = parallel.distributed_settings("10.0.0.1:8476", 4, 3, env={})
    assert s.kwargs() == {"coordinator_address": "10.0.0.1:8476", "num_processes": 4, "process_id": 3}
    env = {"SWITCHREPRO_COORDINATOR": "h:1", "SWITCHREPRO_NUM_PROCESSES": "2", "SWITCHREPRO_PROCESS_ID": "1"}
    assert parallel.distributed_settings(env=env).kwargs() == {"coordinator_address": "h:1", "num_processes": 2,
                                                               "process_id": 1}
    assert parallel.distributed_settings(process_id=0, env=env).process_id == 0  # flags win
    with pytest.raises(ValueError, match="must be in \\[0, 2\\)"):
        parallel.distributed_settings("h:1", 2, 2, env={})
    with pytest.raises(ValueError, match="HOST:PORT"):
        parallel.distributed_settings("h", 2, 0, env={})


def test_train_on_a_mesh_with_jax_distributed_matches_one_device(cheap_compiles, cache_root, tmp_path):
    """`switchrepro train --mesh data=2,expert=4` through the multi-host entry point for real (jax.distributed,
    one process, its own coordinator) gives the one-device run's metrics."""
    args = [*TRAIN_ARGS, "--gin", f"DataConfig.cache_dir = '{cache_root}'"]
    one = CliRunner().invoke(main, ["train", *args, "--run-dir", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "switchrepro.cli", "train", *args, "--run-dir", str(tmp_path / "mesh"),
           "--mesh", "data=2,expert=4", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "1",
           "--process-id", "0"]
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # compile time; numerics are compared at 1e-5
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "jax.distributed: process 0 of 1, 8 local / 8 global devices" in out.stdout
    assert "mesh data=2,expert=4 (8 devices, 1 process(es)); per device: params" in out.stdout
    _assert_same_metrics(_metrics(tmp_path / "one"), _metrics(tmp_path / "mesh"))


def test_bench_moe_on_a_mesh_reports_time_and_all_to_all_bytes(cheap_compiles):
    out = CliRunner().invoke(main, ["bench", "moe", "--mesh", "data=2,expert=4", "--experts", "8",
                                    "--repeats", "1", "--tokens", "1024"])
    assert out.exit_code == 0, out.output
    row = [ln for ln in out.output.splitlines() if ln.startswith("| 8 |")][0].split("|")
    # 128 local tokens in one group of 128: C = round(1.25 * 128 / 8) = 20; buffer 8*1*20*256*4 bytes,
    # 3/4 of it sent out and back, forward and backward: 0.47 MiB.
    assert row[2].strip() == "2" and row[3].strip() == "20"
    assert float(row[4]) > 0 and float(row[5]) > 0
    assert row[6].strip() == f"{4 * 8 * 20 * 256 * 4 * 3 / 4 / 2**20:.2f}"
    bad = CliRunner().invoke(main, ["bench", "moe", "--mesh", "expert=8", "--experts", "4"])
    assert bad.exit_code == 2 and "4 experts do not divide over mesh axis expert=8" in bad.output


def test_run_table_checks_the_mesh_before_training(tmp_path):
    out = CliRunner().invoke(main, ["run", "table1", "--scale", "smoke", "--rows", "Switch-Base cf1.0",
                                    "--mesh", "expert=8", "--gin", "MoeConfig.num_experts = 4",
                                    "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")])
    assert out.exit_code == 2 and "4 experts do not divide over mesh axis expert=8" in out.output, out.output
    assert not (tmp_path / "runs").exists()
