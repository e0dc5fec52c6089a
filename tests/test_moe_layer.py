"""MoeFeedForward against a plain-loop reference, plus init, randomness, dtypes, capacity extremes and jit."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import moe_reference as ref
import numpy as np
import pytest

from switchrepro.backends.experts import LOOP_MIN_ROWS, expert_impl
from switchrepro.config import MoeConfig
from switchrepro.moe import MoeFeedForward, routing

pytestmark = pytest.mark.usefixtures("cheap_compiles")


B, L, M, F, E = 2, 8, 6, 10, 4  # two routing groups of 8 tokens
GROUP = 8


def _cfg(router="switch", **kw):
    # Capacity 2 per expert and group of 8 both in training (cf 1.0) and at eval (cf 1.2 -> 2.4 -> 2): enough
    # pressure to drop tokens, and equal shapes in both modes, so compiled ops are shared between tests.
    base = dict(num_experts=E, router=router, group_size=GROUP, capacity_factor_train=1.0,
                capacity_factor_eval=1.2, min_capacity=1, aux_loss_coef=0.1, z_loss_coef=0.01,
                importance_loss_coef=0.1, load_loss_coef=0.1, second_expert_threshold=0.5, jitter_eps=0.1)
    base.update(kw)
    return MoeConfig(**base)


def _setup(cfg, activation="relu", masked=False, seed=0):
    """Layer, random float32 params (decisive router), inputs and an optional padding mask.

    Test data comes from numpy: jax.random would compile a sampler for every shape.
    """
    layer = MoeFeedForward(cfg, d_model=M, d_ff=F, activation=activation)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((B, L, M)), jnp.float32)
    shapes = nn.meta.unbox(jax.eval_shape(lambda: layer.init(jax.random.PRNGKey(0), x, deterministic=True)))["params"]
    params = {name: jnp.asarray(rng.standard_normal(s.shape) * (1.0 if name.startswith("router") else 0.5),
                                jnp.float32) for name, s in shapes.items()}
    mask = None
    if masked:  # second sequence has 3 padding positions at the end
        mask = jnp.asarray(np.arange(L)[None, :] < np.asarray([[L], [L - 3]]))
    return layer, params, x, mask


def _spy_route(monkeypatch):
    """Record the PRNG key the layer hands to routing.route, so the reference can redraw the same noise."""
    seen = []
    original = routing.route

    def spy(*args, **kw):
        seen.append(kw.get("key"))
        return original(*args, **kw)

    monkeypatch.setattr(routing, "route", spy)
    return seen


def _close(a, b, rtol=2e-5, atol=2e-6):
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


# --- the oracle ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked,activation", [(False, "relu"), (True, "geglu")], ids=["dense-relu", "padded-geglu"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("router", ["switch", "top2", "noisy_topk"])
def test_layer_matches_loop_reference(router, train, masked, activation, monkeypatch):
    """einsum and scatter backends, experts batched or looped, agree with the loop reference: outputs, losses,
    metrics, gradients."""
    cfg = _cfg(router)
    _, params, x, mask = _setup(cfg, activation, masked)
    cot = jnp.asarray(np.random.default_rng(7).standard_normal(x.shape), jnp.float32)
    rngs = {"jitter": jax.random.PRNGKey(3)} if train else None
    seen = _spy_route(monkeypatch)

    results = {}
    # op by op: shapes repeat across cases, so XLA's op cache pays off
    for backend, matmul in (("einsum", "batched"), ("scatter", "batched"), ("scatter", "loop")):
        layer = MoeFeedForward(dataclasses.replace(cfg, dispatch=backend, expert_matmul=matmul), d_model=M, d_ff=F,
                               activation=activation)

        def objective(p, x, layer=layer):
            y, metrics = layer.apply({"params": p}, x, mask, deterministic=not train, rngs=rngs)
            return jnp.sum(y * cot) + metrics.total_aux_loss, (y, metrics)

        (_, (y, metrics)), grads = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(params, x)
        results[backend, matmul] = (y, metrics, grads)

    capacity = results["scatter", "loop"][1].expert_capacity
    assert capacity == 2
    key = seen[0]
    assert (key is not None) == (train and routing.needs_key(cfg))
    assignments = ref.decide(cfg, params, x, mask, capacity, GROUP, key)
    assert any(not a.kept for a in assignments), "the test should exercise dropping"

    def ref_objective(p, x):
        y, losses = ref.forward(cfg, p, x, mask, assignments, GROUP, activation, key)
        return jnp.sum(y * cot) + losses["total_aux_loss"], (y, losses)

    (_, (y_ref, losses)), grads_ref = jax.value_and_grad(ref_objective, argnums=(0, 1), has_aux=True)(params, x)
    requested = len(assignments)
    per_expert = np.bincount([a.expert for a in assignments], minlength=E) / requested
    for y, metrics, grads in results.values():
        _close(y, y_ref)
        for name, value in losses.items():
            _close(getattr(metrics, name), value)
        _close(metrics.fraction_dropped, sum(not a.kept for a in assignments) / requested)
        _close(metrics.tokens_per_expert, per_expert)
        _close(grads, grads_ref, rtol=1e-4, atol=1e-5)
    if mask is not None:  # padding outputs exactly zero
        assert np.all(np.asarray(results["scatter", "loop"][0])[~np.asarray(mask)] == 0.0)


@pytest.mark.parametrize("masked,activation", [(False, "relu"), (True, "geglu")], ids=["dense-relu", "padded-geglu"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("router", ["switch", "top2", "noisy_topk"])
def test_dropless_matches_loop_reference_with_unlimited_capacity(router, train, masked, activation, monkeypatch):
    """dropless (both grouped matmuls) = the loop reference with room for every token: outputs, losses,
    metrics (nothing dropped but top-2's coin and padding) and gradients; capacity factors are ignored."""
    cfg = _cfg(router, dispatch="dropless")  # capacity factor 1.0 would drop tokens in the other backends
    _, params, x, mask = _setup(cfg, activation, masked)
    cot = jnp.asarray(np.random.default_rng(7).standard_normal(x.shape), jnp.float32)
    rngs = {"jitter": jax.random.PRNGKey(3)} if train else None
    seen = _spy_route(monkeypatch)
    results = []
    for impl in ("ragged_dot", "blocks"):
        layer = MoeFeedForward(dataclasses.replace(cfg, grouped_matmul=impl), d_model=M, d_ff=F,
                               activation=activation)

        def objective(p, x, layer=layer):
            y, metrics = layer.apply({"params": p}, x, mask, deterministic=not train, rngs=rngs)
            return jnp.sum(y * cot) + metrics.total_aux_loss, (y, metrics)

        results.append(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(params, x))
    assert results[0][0][1][1].expert_capacity == GROUP
    assignments = ref.decide(cfg, params, x, mask, GROUP, GROUP, seen[0])
    assert all(a.kept for a in assignments) or router == "top2"  # only top-2's second-expert coin drops

    def ref_objective(p, x):
        y, losses = ref.forward(cfg, p, x, mask, assignments, GROUP, activation, seen[0])
        return jnp.sum(y * cot) + losses["total_aux_loss"], (y, losses)

    (_, (y_ref, losses)), grads_ref = jax.value_and_grad(ref_objective, argnums=(0, 1), has_aux=True)(params, x)
    for (_, (y, metrics)), grads in results:
        _close(y, y_ref)
        for name, value in losses.items():
            _close(getattr(metrics, name), value)
        _close(metrics.fraction_dropped, sum(not a.kept for a in assignments) / len(assignments))
        _close(grads, grads_ref, rtol=1e-4, atol=1e-5)
    if mask is not None:
        assert np.all(np.asarray(results[1][0][1][0])[~np.asarray(mask)] == 0.0)


@pytest.mark.parametrize("exploration", ["input_dropout", "sample_softmax", "argmax"])
def test_switch_explorations_match_reference(exploration, monkeypatch):
    cfg = _cfg("switch", exploration=exploration, input_dropout_rate=0.3)
    layer, params, x, _ = _setup(cfg)
    seen = _spy_route(monkeypatch)
    y, metrics = layer.apply({"params": params}, x, deterministic=False, rngs={"jitter": jax.random.PRNGKey(5)})
    assignments = ref.decide(cfg, params, x, None, metrics.expert_capacity, GROUP, seen[0])
    y_ref, losses = ref.forward(cfg, params, x, None, assignments, GROUP, "relu", seen[0])
    _close(y, y_ref)
    _close(metrics.total_aux_loss, losses["total_aux_loss"])
    if exploration == "argmax":  # no randomness: no key needed
        assert seen[0] is None
        y2, _ = layer.apply({"params": params}, x, deterministic=False)
        np.testing.assert_array_equal(y, y2)


# --- capacity extremes and padding -------------------------------------------------------------------------


@pytest.mark.parametrize("router", ["switch", "top2"])
@pytest.mark.parametrize("backend", ["einsum", "scatter"])
def test_tiny_capacity_drops_everything(router, backend):
    cfg = _cfg(router, dispatch=backend, capacity_factor_train=1e-6, capacity_factor_eval=1e-6, min_capacity=0)
    layer, params, x, _ = _setup(cfg)
    y, metrics = layer.apply({"params": params}, x, deterministic=True)
    assert metrics.expert_capacity == 0
    assert np.all(np.asarray(y) == 0.0)
    assert float(metrics.fraction_dropped) == 1.0


@pytest.mark.parametrize("router", ["switch", "top2", "noisy_topk"])
def test_large_capacity_drops_nothing(router):
    cfg = _cfg(router, capacity_factor_eval=100.0)
    layer, params, x, _ = _setup(cfg)
    y, metrics = layer.apply({"params": params}, x, deterministic=True)
    assert float(metrics.fraction_dropped) == 0.0
    np.testing.assert_allclose(jnp.sum(metrics.tokens_per_expert), 1.0, rtol=1e-6)
    assert np.all(np.abs(np.asarray(y)).sum(-1) > 0)  # every token was processed


def test_padding_is_invisible_to_real_tokens():
    cfg = _cfg("switch")
    layer, params, x, mask = _setup(cfg, masked=True)
    y, metrics = layer.apply({"params": params}, x, mask, deterministic=True)
    x_other = jnp.where(mask[..., None], x, 100.0)  # change only the padding
    y_other, metrics_other = layer.apply({"params": params}, x_other, mask, deterministic=True)
    np.testing.assert_array_equal(y, y_other)
    _close(metrics, metrics_other, rtol=0, atol=0)
    assert np.all(np.asarray(y)[~np.asarray(mask)] == 0.0)


# --- parameters and initialisation -------------------------------------------------------------------------


def test_param_shapes_and_logical_axes():
    for router, activation, names in [("switch", "relu", {"router", "wi", "wo"}),
                                      ("noisy_topk", "geglu", {"router", "router_noise", "wi_0", "wi_1", "wo"})]:
        layer = MoeFeedForward(_cfg(router), d_model=M, d_ff=F, activation=activation)
        params = jax.eval_shape(lambda layer=layer: layer.init(jax.random.PRNGKey(0), jnp.zeros((B, L, M)),
                                                               deterministic=True))["params"]
        assert set(params) == names
        assert params["router"].names == ("embed", "unmodeled") and params["router"].value.shape == (M, E)
        assert params["wo"].names == ("expert", "mlp", "embed") and params["wo"].value.shape == (E, F, M)
        wi = params["wi" if activation == "relu" else "wi_0"]
        assert wi.names == ("expert", "embed", "mlp") and wi.value.shape == (E, M, F)
        assert all(p.value.dtype == jnp.float32 for p in params.values())


def _per_expert_std_matches_dense(kernel, scale):
    """True iff every expert's std is within 3% of a dense variance_scaling kernel of the same shape."""
    dense = nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")(
        jax.random.PRNGKey(42), kernel.shape[1:])
    target = np.std(np.asarray(dense))
    np.testing.assert_allclose(target, np.sqrt(scale / kernel.shape[1]), rtol=0.03)  # sanity: sqrt(s / fan_in)
    return all(abs(np.std(np.asarray(k)) / target - 1) < 0.03 for k in kernel)


def test_each_expert_initialised_like_a_dense_ffn():
    scale, d_model, d_ff, experts = 0.1, 128, 256, 4  # 32k draws per expert: std known to ~0.5%
    layers = [MoeFeedForward(MoeConfig(num_experts=experts, group_size=16, router=router), d_model=d_model,
                             d_ff=d_ff, init_scale=scale) for router in ("switch", "noisy_topk")]

    @jax.jit  # one compilation for both layers; the forward pass is dead code
    def init(key):
        return [nn.meta.unbox(layer.init(key, jnp.zeros((1, 16, d_model)), deterministic=True))["params"]
                for layer in layers]

    switch, noisy = init(jax.random.PRNGKey(0))
    for params in (switch, noisy):
        assert _per_expert_std_matches_dense(params["wi"], scale)
        assert _per_expert_std_matches_dense(params["wo"], scale)
    np.testing.assert_allclose(np.std(np.asarray(switch["router"])), 0.02, rtol=0.05)
    assert not np.any(noisy["router"]) and not np.any(noisy["router_noise"])  # Shazeer: W_g = W_noise = 0
    # The same check catches the classic bug: without batch_axis the expert axis counts into fan-in.
    wrong = nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1)
    assert not _per_expert_std_matches_dense(wrong(jax.random.PRNGKey(0), (experts, d_model, d_ff)), scale)


# --- randomness, dtypes, jit --------------------------------------------------------------------------------


def test_jitter_only_in_training():
    layer, params, x, _ = _setup(_cfg("switch", exploration="input_jitter", jitter_eps=0.3))
    evals = [layer.apply({"params": params}, x, deterministic=True, rngs=rngs)[0]
             for rngs in (None, {"jitter": jax.random.PRNGKey(1)}, {"jitter": jax.random.PRNGKey(2)})]
    np.testing.assert_array_equal(evals[0], evals[1])
    np.testing.assert_array_equal(evals[0], evals[2])
    train = [layer.apply({"params": params}, x, deterministic=False, rngs={"jitter": jax.random.PRNGKey(k)})[0]
             for k in (1, 1, 2)]
    np.testing.assert_array_equal(train[0], train[1])
    assert not np.allclose(train[0], train[2])  # gates move with the jitter
    with pytest.raises(ValueError, match="rngs=\\{'jitter'"):
        layer.apply({"params": params}, x, deterministic=False)


def test_expert_dropout_only_in_training():
    layer, params, x, _ = _setup(_cfg("switch", expert_dropout=0.5, exploration="argmax"))
    y_eval, _ = layer.apply({"params": params}, x, deterministic=True)
    y_ref, _ = layer.clone(cfg=_cfg("switch", exploration="argmax")).apply({"params": params}, x,
                                                                             deterministic=True)
    np.testing.assert_array_equal(y_eval, y_ref)
    y_train, _ = layer.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    assert not np.allclose(y_train, layer.apply({"params": params}, x, deterministic=False,
                                                rngs={"dropout": jax.random.PRNGKey(1)})[0])


@pytest.mark.parametrize("activation", ["relu", "geglu"])
def test_expert_loop_equals_batched_with_expert_dropout(activation):
    """The CPU loop over experts draws the batched path's dropout mask: same zeros, same values and
    gradients up to float32 rounding."""
    cfg = _cfg("switch", expert_dropout=0.5, exploration="argmax")
    _, params, x, _ = _setup(cfg, activation)
    out = {}
    for matmul in ("batched", "loop"):
        layer = MoeFeedForward(dataclasses.replace(cfg, expert_matmul=matmul), d_model=M, d_ff=F, activation=activation)

        def objective(p, x, layer=layer):
            y, _ = layer.apply({"params": p}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(4)})
            return jnp.sum(y ** 2), y

        out[matmul] = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(params, x)
    (_, y_b), g_b = out["batched"]
    (_, y_l), g_l = out["loop"]
    # dropout hits some expert hidden units: outputs differ from the undropped layer
    y_full, _ = MoeFeedForward(dataclasses.replace(cfg, expert_dropout=0.0), d_model=M, d_ff=F,
                               activation=activation).apply({"params": params}, x, deterministic=True)
    assert not np.allclose(y_b, y_full)
    _close(y_l, y_b)
    _close(g_l, g_b, rtol=1e-4, atol=1e-5)


def test_expert_matmul_choice_and_errors():
    cpu = jax.default_backend() == "cpu"
    assert expert_impl("auto", LOOP_MIN_ROWS) == ("loop" if cpu else "batched")
    assert expert_impl("auto", LOOP_MIN_ROWS - 1) == "batched"
    assert expert_impl("batched", 10**6) == "batched" and expert_impl("loop", 1) == "loop"
    with pytest.raises(ValueError, match="expert_matmul must be one of"):
        MoeConfig(expert_matmul="vmap").validate()
    with pytest.raises(ValueError, match=r"expert_dropout must be in \[0, 1\)"):
        MoeConfig(expert_dropout=1.0).validate()


@pytest.mark.parametrize("router_dtype", ["float32", "bfloat16"])
def test_bfloat16_activations(router_dtype):
    cfg = _cfg("switch", router_dtype=router_dtype)
    layer, params, x, _ = _setup(cfg)
    y32, m32 = layer.apply({"params": params}, x, deterministic=True)
    y16, m16 = layer.clone(dtype=jnp.bfloat16).apply({"params": params}, x, deterministic=True)
    assert y16.dtype == jnp.bfloat16 and y32.dtype == jnp.float32
    assert m16.load_balance_loss.dtype == jnp.float32 and m16.tokens_per_expert.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y16, np.float32)))
    if router_dtype == "float32":  # same routing, so only the expert matmuls differ by bf16 rounding
        np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.1, rtol=0.05)
        # Same routing decisions; the router input went through bfloat16, so probabilities move slightly.
        np.testing.assert_allclose(m16.load_balance_loss, m32.load_balance_loss, rtol=1e-3)


@pytest.mark.parametrize("router,deterministic", [("switch", True), ("noisy_topk", False)])
def test_jit(router, deterministic):
    layer, params, x, mask = _setup(_cfg(router), masked=True)
    rngs = {"jitter": jax.random.PRNGKey(0)}
    apply = jax.jit(layer.apply, static_argnames="deterministic")
    y, metrics = apply({"params": params}, x, mask, deterministic=deterministic, rngs=rngs)
    y_eager, metrics_eager = layer.apply({"params": params}, x, mask, deterministic=deterministic, rngs=rngs)
    _close(y, y_eager, rtol=1e-5, atol=1e-6)
    assert metrics.expert_capacity == metrics_eager.expert_capacity
