"""The native grouped expert matmuls (switchrepro/backends/cpu/native/expert_gemm.cc) against jnp.einsum at full
precision: values, gradients, edge shapes, thread-count independence; and the MoE layer with them against the batched
and looped layers (which tests/test_moe_layer.py checks against the for-loop oracle)."""

import contextlib
import ctypes
import dataclasses
import io
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from switchrepro.backends.cpu import native
from switchrepro.backends.cpu.native import expert_gemm
from switchrepro.backends.experts import expert_impl, resolve_expert_path
from switchrepro.config import MoeConfig
from switchrepro.moe import MoeFeedForward

needs_kernels = pytest.mark.skipif(bool(expert_gemm.unavailable_reason()), reason=expert_gemm.unavailable_reason())
HIGHEST = jax.lax.Precision.HIGHEST


def _f32(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _einsum(x, w):
    return jnp.einsum("enk,ekf->enf", x, w, precision=HIGHEST)


# Rows: fewer than, not a multiple of, and many more than the 6-row micro-tile. K: one partial k-block, and
# more than one k-block of 512 (so C is accumulated across blocks). Columns: one and several 64-wide panels.
SHAPES = [(1, 1, 64, 64), (3, 7, 64, 128), (2, 13, 576, 192), (3, 130, 128, 64), (1, 600, 64, 64)]


@needs_kernels
@pytest.mark.parametrize("experts,rows,k,f", SHAPES)
def test_values_and_gradients_equal_einsum(experts, rows, k, f):
    """Forward (nn) and both gradients (nt: dy w^T, tn: x^T dy) equal einsum's and its autodiff's; the
    600-row case also runs the tn kernel's k-blocks (the rows are its contraction)."""
    rng = np.random.default_rng(rows)
    x, w, dy = _f32(rng, experts, rows, k), _f32(rng, experts, k, f), _f32(rng, experts, rows, f)
    y, vjp = jax.vjp(jax.jit(expert_gemm.expert_matmul), x, w)
    y_ref, vjp_ref = jax.vjp(_einsum, x, w)
    dx, dw = vjp(dy)
    dx_ref, dw_ref = vjp_ref(dy)
    # Summation in any order is within n * eps * sum_k |a_k b_k| of the exact sum (n terms); both sides round.
    a = np.abs
    _within_rounding(y, y_ref, k, np.einsum("enk,ekf->enf", a(x), a(w)))
    _within_rounding(dx, dx_ref, f, np.einsum("enf,ekf->enk", a(dy), a(w)))
    _within_rounding(dw, dw_ref, rows, np.einsum("enk,enf->ekf", a(x), a(dy)))


def _within_rounding(got, want, n, magnitude):
    assert got.shape == want.shape
    bound = 2 * n * np.finfo(np.float32).eps * magnitude + 1e-30
    worst = np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)) / bound)
    assert worst <= 1.0, f"off by {worst:.2f}x the float32 rounding bound"
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.max(magnitude)))  # and visibly close


@needs_kernels
def test_empty_operands():
    """No rows gives an empty output and zero kernel gradients; no experts gives empty everything."""
    x, w = jnp.zeros((2, 0, 64), jnp.float32), jnp.ones((2, 64, 128), jnp.float32)
    y, vjp = jax.vjp(expert_gemm.expert_matmul, x, w)
    assert y.shape == (2, 0, 128)
    dx, dw = vjp(jnp.zeros((2, 0, 128), jnp.float32))
    assert dx.shape == (2, 0, 64) and np.all(np.asarray(dw) == 0.0)
    assert expert_gemm.expert_matmul(jnp.zeros((0, 5, 64)), jnp.zeros((0, 64, 64))).shape == (0, 5, 64)


@needs_kernels
def test_kernel_rejects_a_width_it_cannot_tile():
    """The C++ handler checks shapes itself (the layer never sends these: unsupported_reason says so first)."""
    with pytest.raises(Exception, match="multiple of 64"):
        jax.block_until_ready(expert_gemm._nn(jnp.ones((1, 4, 64)), jnp.ones((1, 64, 32))))


_BITS = """
import hashlib, jax, jax.numpy as jnp, numpy as np
from switchrepro.backends.cpu.native import expert_gemm
rng = np.random.default_rng(0)
x, w = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((4, 200, 256), (4, 256, 512)))
y, vjp = jax.vjp(expert_gemm.expert_matmul, x, w)
outs = [y, *vjp(jnp.asarray(rng.standard_normal(y.shape), jnp.float32))]
print(hashlib.sha256(b"".join(np.asarray(o).tobytes() for o in outs)).hexdigest())
"""


@needs_kernels
def test_results_do_not_depend_on_the_thread_count():
    """Each output element is summed by one thread in k order: one thread per call and the default (the caller
    and XLA's pool) give equal bits."""
    env = {**os.environ, "SWITCHREPRO_EXPERT_GEMM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-c", _BITS], capture_output=True, text=True, env=env, check=True)
    here = io.StringIO()
    with contextlib.redirect_stdout(here):  # this process: the default, every thread of XLA's pool
        exec(_BITS, {})
    assert len(here.getvalue().strip()) == 64 and one.stdout.strip() == here.getvalue().strip()


# --- the MoE layer -----------------------------------------------------------------------------------------


def _layer_outputs(cfg, activation, d_model=64, d_ff=128):
    """Output and gradients (params, x) of a training step with expert dropout, for each expert_matmul."""
    rng = np.random.default_rng(1)
    x = _f32(rng, 2, 16, d_model)
    layer = MoeFeedForward(cfg, d_model=d_model, d_ff=d_ff, activation=activation)
    params = nn.meta.unbox(layer.init(jax.random.PRNGKey(0), x, deterministic=True))["params"]
    out = {}
    for impl in ("batched", "loop", "native"):
        variant = layer.clone(cfg=dataclasses.replace(cfg, expert_matmul=impl))

        def objective(p, x, variant=variant):
            y, metrics = variant.apply({"params": p}, x, deterministic=False,
                                       rngs={"jitter": jax.random.PRNGKey(2), "dropout": jax.random.PRNGKey(3)})
            return jnp.sum(y ** 2) + metrics.total_aux_loss, y

        out[impl] = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(params, x)
    return out


@needs_kernels
@pytest.mark.parametrize("router,activation", [("switch", "relu"), ("top2", "geglu")])
def test_layer_with_native_matmuls_equals_batched_and_loop(router, activation):
    cfg = MoeConfig(num_experts=4, router=router, group_size=16, capacity_factor_train=1.0, expert_dropout=0.3,
                    second_expert_threshold=0.5)
    out = _layer_outputs(cfg, activation)
    (_, y_b), g_b = out["batched"]
    assert np.any(np.asarray(y_b) != 0.0)
    for impl in ("native", "loop"):
        (_, y), g = out[impl]
        np.testing.assert_allclose(y, y_b, rtol=2e-5, atol=2e-6, err_msg=impl)
        jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5), g, g_b)


def test_choice_and_errors(monkeypatch):
    """auto takes the native kernels wherever they run (a run resolves it once: resolve_expert_path); asking for
    them where they cannot run says what to do."""
    loaded = not expert_gemm.unavailable_reason()
    xla = "xla" if jax.default_backend() == "cpu" else "batched"
    assert resolve_expert_path("auto", 64, 192, jnp.float32) == ("native" if loaded else xla)
    assert resolve_expert_path("auto", 6, 10, jnp.float32) == xla  # widths the kernels cannot tile
    assert expert_impl("native", 7) == "native" and expert_impl("native", 10**6) == "native"
    with monkeypatch.context() as m:
        m.setattr(expert_gemm, "unavailable_reason", lambda: "no AVX-512F")
        with pytest.raises(ValueError, match="Set MoeConfig.expert_matmul to 'auto'"):
            resolve_expert_path("native", 64, 64, jnp.float32)
        assert resolve_expert_path("auto", 64, 64, jnp.float32) == xla
    with pytest.raises(ValueError, match="cannot run: .*multiples of 64" if loaded else "cannot run"):
        MoeFeedForward(MoeConfig(num_experts=2, expert_matmul="native"), d_model=6, d_ff=10).init(
            jax.random.PRNGKey(0), jnp.ones((1, 4, 6)), deterministic=True)
    if not loaded:
        return
    assert expert_gemm.unsupported_reason((2, 8, 64), (2, 64, 192), jnp.float32) == ""
    assert "float32 only" in expert_gemm.unsupported_reason((2, 8, 64), (2, 64, 64), jnp.bfloat16)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert "CPU only" in expert_gemm.unsupported_reason((2, 8, 64), (2, 64, 64), jnp.float32)


def test_library_builds_without_the_x86_kernels(tmp_path):
    """On other architectures (no immintrin.h) the library must still build, for its uninitialised buffers: the
    matmul handlers then only return errors and the CPU check says no."""
    if not native.find_compiler():
        pytest.skip("no C++ compiler here")
    library = tmp_path / "portable.so"
    native.build(library=library, flags=["-DSWITCHREPRO_X86=0"])
    lib = ctypes.cdll.LoadLibrary(str(library))
    assert lib.SwitchreproExpertGemmSupported() == 0
    assert lib.SwitchreproUninitialized and lib.SwitchreproExpertGemmNN


def test_switched_off_library_says_why(monkeypatch):
    monkeypatch.setattr(native, "_state", "off (SWITCHREPRO_NATIVE=0): buffers are zero-filled")
    reason = expert_gemm.unsupported_reason((2, 8, 64), (2, 64, 64), jnp.float32)
    assert reason.startswith("the native expert matmul is unavailable: library not loaded") and "SWITCHREPRO" in reason
    assert resolve_expert_path("auto", 64, 64, jnp.float32) in ("xla", "batched")
