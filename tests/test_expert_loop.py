"""expert_loop.expert_ffn (hand-written forward and backward loops over experts, uninitialised buffers) against
`jax.lax.map` over the experts with jax's own autodiff; and the native uninitialised buffer itself."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from switchrepro.backends.cpu import expert_loop, native

ACTIVATIONS = {
    "relu": lambda z: jax.nn.relu(z[0]),
    "geglu": lambda z: jax.nn.gelu(z[0]) * z[1],
}


def _map_reference(h, w_in, w_out, activate, keep, rate):
    """The plain reference: one expert at a time through jax.lax.map, differentiated by jax."""
    def one(args):
        h_e, w_in_e, w_out_e, keep_e = args
        a = activate([h_e @ w for w in w_in_e])
        if keep_e is not None:
            a = jnp.where(keep_e, a / (1.0 - rate), 0)
        return a @ w_out_e
    return jax.lax.map(one, (h, list(w_in), w_out, keep))


def _inputs(activation, experts=3, rows=5, d_model=4, d_ff=6, dropout=False, seed=0):
    rng = np.random.default_rng(seed)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    k = 2 if activation == "geglu" else 1
    keep = jnp.asarray(rng.random((experts, rows, d_ff)) > 0.3) if dropout else None
    return (f32(experts, rows, d_model), [f32(experts, d_model, d_ff) for _ in range(k)], f32(experts, d_ff, d_model),
            keep, f32(experts, rows, d_model))


@pytest.mark.parametrize("dropout", [False, True], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("activation", ["relu", "geglu"])
@pytest.mark.parametrize("native_buffers", [True, False], ids=["native", "zeros"])
def test_values_and_gradients_equal_lax_map_autodiff(activation, dropout, native_buffers, monkeypatch):
    """Outputs and the gradients of h, every input kernel and the output kernel equal the reference's, with
    the native uninitialised buffers and with the zero-filled fallback."""
    if native_buffers and native.status() != "loaded":
        pytest.skip(f"native library: {native.status()}")
    if not native_buffers:
        monkeypatch.setattr(native, "_state", "off (test)")
    h, w_in, w_out, keep, cot = _inputs(activation, dropout=dropout)
    act, rate = ACTIVATIONS[activation], 0.3

    def loss(fn):
        return jax.jit(jax.value_and_grad(lambda h, w_in, w_out: jnp.sum(fn(h, w_in, w_out, act, keep, rate) * cot),
                                          argnums=(0, 1, 2)))

    ours_y = jax.jit(lambda h, w_in, w_out: expert_loop.expert_ffn(h, w_in, w_out, act, keep, rate))(h, w_in, w_out)
    ref_y = _map_reference(h, w_in, w_out, act, keep, rate)
    np.testing.assert_allclose(ours_y, ref_y, rtol=1e-5, atol=1e-5)
    (v, grads), (v_ref, grads_ref) = loss(expert_loop.expert_ffn)(h, w_in, w_out), loss(_map_reference)(h, w_in, w_out)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_ref), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_literal_two_experts_relu():
    """Hand-worked: expert 0 doubles its one input unit through a 1-unit ReLU, expert 1 negates it (ReLU of a
    negative is 0). Gradients of sum(y) follow from y_e = relu(h w_in_e) w_out_e."""
    h = jnp.asarray([[[1.0], [-2.0]], [[3.0], [4.0]]])                # [E=2, N=2, M=1]
    w_in = [jnp.asarray([[[1.0]], [[-1.0]]])]                         # [2, 1, 1]
    w_out = jnp.asarray([[[2.0]], [[5.0]]])                           # [2, 1, 1]
    act = ACTIVATIONS["relu"]
    y = expert_loop.expert_ffn(h, w_in, w_out, act)
    np.testing.assert_array_equal(np.asarray(y)[..., 0], [[2.0, 0.0], [0.0, 0.0]])
    dh, dw_in, dw_out = jax.grad(lambda h, w_in, w_out: jnp.sum(expert_loop.expert_ffn(h, w_in, w_out, act)),
                                 argnums=(0, 1, 2))(h, w_in, w_out)
    np.testing.assert_array_equal(np.asarray(dh)[..., 0], [[2.0, 0.0], [0.0, 0.0]])   # w_in * w_out where active
    np.testing.assert_array_equal(np.asarray(dw_in[0]).ravel(), [2.0, 0.0])            # sum of active h * w_out
    np.testing.assert_array_equal(np.asarray(dw_out).ravel(), [1.0, 0.0])              # sum of active relu(h w_in)


def test_bfloat16_activations_match_the_reference_and_keep_dtypes():
    h, w_in, w_out, _, cot = _inputs("geglu")
    bf = lambda t: t.astype(jnp.bfloat16)
    act = ACTIVATIONS["geglu"]
    args = (bf(h), [bf(w) for w in w_in], bf(w_out))
    y = expert_loop.expert_ffn(*args, act)
    y_ref = _map_reference(*args, act, None, 0.0)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), rtol=2e-2, atol=2e-2)
    grads = jax.grad(lambda h, w_in, w_out: jnp.sum(expert_loop.expert_ffn(h, w_in, w_out, act).astype(jnp.float32)
                                                    * cot), argnums=(0, 1, 2))(*args)
    grads_ref = jax.grad(lambda h, w_in, w_out: jnp.sum(_map_reference(h, w_in, w_out, act, None, 0.0).astype(
        jnp.float32) * cot), argnums=(0, 1, 2))(*args)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_ref), strict=True):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=5e-2, atol=5e-2)


def test_bad_dropout_rate_is_refused():
    h, w_in, w_out, keep, _ = _inputs("relu", dropout=True)
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        expert_loop.expert_ffn(h, w_in, w_out, ACTIVATIONS["relu"], keep, rate=1.0)


def test_uninitialized_buffer_shape_dtype_and_overwrite():
    """The buffer has the asked shape and dtype, and a loop that writes every slice reads back exactly what it
    wrote, whatever the buffer held before."""
    def fill(x):
        buf = native.uninitialized((4, 3), jnp.float32)
        return jax.lax.fori_loop(0, 4, lambda i, b: jax.lax.dynamic_update_index_in_dim(b, x * i, i, 0), buf)

    out = jax.jit(fill)(jnp.arange(3.0))
    assert out.shape == (4, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, np.outer(np.arange(4.0), np.arange(3.0)))
    assert native.uninitialized((2, 5), jnp.bfloat16).dtype == jnp.bfloat16


def test_native_switch_off_gives_zeros_and_says_so():
    code = ("import jax.numpy as jnp; from switchrepro.backends.cpu import native; "
            "print(native.status()); print(float(jnp.abs(native.uninitialized((8,), jnp.float32)).sum()))")
    out = subprocess.run([sys.executable, "-c", code], env={"SWITCHREPRO_NATIVE": "0", "PATH": ""},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith("off (SWITCHREPRO_NATIVE=0)") and out[1] == "0.0"


def test_build_without_a_compiler_is_a_note_not_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert native.build().startswith("no C++ compiler found")
