"""backends/cpu/matmul: the CPU-fast weight gradient keeps jax's values; the model's numbers do not change with it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_model import twenty_step_losses

from switchrepro.backends import experts as expert_backend
from switchrepro.backends.cpu import matmul as cpu_matmul
from switchrepro.backends.cpu.native import expert_gemm


def _plain_dense(x, w, precision=None):
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


@pytest.mark.parametrize("shape", [(8, 5, 3, 7), (1100, 6, 4), (1100, 4, 6), (2, 600, 5, 9)],
                         ids=["few-rows", "rows-narrow-out", "rows-narrow-in", "3d-many-rows"])
def test_matmul_values_and_gradients_equal_jax(shape, monkeypatch):
    """Forward bit for bit; both gradients within float32 rounding of jax's own, on both sides of
    WEIGHT_GRAD_MIN_ROWS and with either operand the narrower (the two transposition branches)."""
    *lead, k, n = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((*lead, k)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((*lead, n)), jnp.float32)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # the fast path, whatever runs the tests
    y, vjp = jax.vjp(cpu_matmul.matmul, x, w)
    y_ref, vjp_ref = jax.vjp(_plain_dense, x, w)
    np.testing.assert_array_equal(y, y_ref)
    for got, want in zip(vjp(cot), vjp_ref(cot), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # hand-worked: dW = x^T cot over every row
    dw = vjp(cot)[1]
    np.testing.assert_allclose(dw, np.asarray(x).reshape(-1, k).T @ np.asarray(cot).reshape(-1, n), rtol=1e-4,
                               atol=1e-3)


def test_weight_grad_branches_literal(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "WEIGHT_GRAD_MIN_ROWS", 1)
    x = jnp.asarray([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # [T=3, K=2]
    g_wide = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 2.0]])  # N=3 > K: x transposed
    g_narrow = jnp.asarray([[1.0], [2.0], [3.0]])  # N=1 < K: g transposed
    np.testing.assert_array_equal(cpu_matmul.weight_grad(x, g_wide), [[6.0, 8.0, 11.0], [8.0, 10.0, 14.0]])
    np.testing.assert_array_equal(cpu_matmul.weight_grad(x, g_narrow), [[22.0], [28.0]])


def test_dense_dot_general_in_flax_dense_and_fallback(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5, 4)), jnp.float32)
    fast, plain = nn.Dense(6, use_bias=False, dot_general=cpu_matmul.dense_dot_general), nn.Dense(6, use_bias=False)
    params = plain.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(fast.apply(params, x), plain.apply(params, x))
    g_fast = jax.grad(lambda p: jnp.sum(fast.apply(p, x) ** 2))(params)
    g_plain = jax.grad(lambda p: jnp.sum(plain.apply(p, x) ** 2))(params)
    np.testing.assert_allclose(g_fast["params"]["kernel"], g_plain["params"]["kernel"], rtol=1e-5, atol=1e-5)
    # anything but a dense layer's own contraction goes to lax.dot_general unchanged
    a = jnp.ones((2, 3, 4))
    b = jnp.ones((2, 4, 5))
    dims = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(cpu_matmul.dense_dot_general(a, b, dims), jax.lax.dot_general(a, b, dims))


def test_twenty_training_steps_match_plain_dots_and_batched_experts(monkeypatch):
    """The speed changes keep the model's numbers: 20 Switch training steps with the fast weight gradient
    (forced on every dense layer) and the experts in a loop, or through the native grouped matmuls, give the
    losses of plain dots and one batched expert dot, within float32 rounding."""
    def experts_by(impl):
        monkeypatch.setattr(expert_backend, "expert_impl", lambda *args: impl)

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(cpu_matmul, "WEIGHT_GRAD_MIN_ROWS", 1)
    experts_by("loop")
    fast = {"loop": twenty_step_losses(0.1)}  # smooth at this rate: rounding is not amplified
    if not expert_gemm.unavailable_reason():  # the model's widths are multiples of 64
        experts_by("native")
        fast["native"] = twenty_step_losses(0.1)
    monkeypatch.setattr(cpu_matmul, "dense_with_fast_weight_grad", _plain_dense)
    experts_by("batched")
    plain = twenty_step_losses(0.1)
    for impl, losses in fast.items():
        assert losses[-1] < losses[0] - 0.1, impl  # it trains
        np.testing.assert_allclose(losses, plain, rtol=2e-5, err_msg=impl)
