"""The fused Adafactor (train/adafactor.py) against optax.adafactor: the same bits, the same state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from switchrepro.config import TrainConfig
from switchrepro.train import adafactor, trainer

SETTINGS = dict(min_dim_size_to_factor=128, decay_rate=0.8, clipping_threshold=1.0, eps=1e-30)


def _reference(lr):
    return optax.adafactor(learning_rate=lr, multiply_by_parameter_scale=True, momentum=None, **SETTINGS)


def _tree(seed: int, scale: float):
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    return {
        "experts_wi": scale * jax.random.normal(keys[0], (4, 128, 256)),   # factored over the last two axes
        "experts_wo": scale * jax.random.normal(keys[1], (4, 256, 128)),
        "embedding": scale * jax.random.normal(keys[2], (300, 128)),      # factored 2-D
        "small": scale * jax.random.normal(keys[3], (64, 128)),           # a dim < 128: full second moment
        "norm": scale * jax.random.normal(keys[4], (128,)),               # a vector
        "tiny": 0.002 * scale * jax.random.normal(keys[5], (128, 128)),  # params' RMS below min_param_scale
    }


def _run(opt, params, grads_by_step):
    state = opt.init(params)
    step = jax.jit(lambda g, s, p: (lambda u, s2: (optax.apply_updates(p, u), s2))(*opt.update(g, s, p)))
    for grads in grads_by_step:
        params, state = step(grads, state, params)
    return params, state


def test_fused_adafactor_matches_optax_bit_for_bit():
    lr = trainer.learning_rate_schedule(TrainConfig(steps=10, learning_rate=1.0, warmup_steps=2))
    params = _tree(0, 0.05)
    grads = [_tree(10 + i, 10.0 ** -(i + 2)) for i in range(3)]
    # a row of zero gradients (an unused vocabulary entry) and one large update that gets clipped
    grads[1]["embedding"] = grads[1]["embedding"].at[7].set(0.0)
    grads[2]["norm"] = grads[2]["norm"].at[0].set(5.0)
    want_p, want_s = _run(_reference(lr), params, grads)
    got_p, got_s = _run(adafactor.adafactor(lr, **SETTINGS), params, grads)
    assert jax.tree.structure(got_s) == jax.tree.structure(want_s)  # checkpoints move between the two
    for name in params:
        np.testing.assert_array_equal(np.asarray(got_p[name]), np.asarray(want_p[name]), err_msg=name)
        assert not np.array_equal(np.asarray(got_p[name]), np.asarray(params[name])), name
    for got, want in zip(jax.tree.leaves(got_s), jax.tree.leaves(want_s), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_factored_dims_are_optax_choices():
    """The fused leaf update factors exactly the parameters optax factors (state shapes agree)."""
    params = _tree(0, 0.05)
    lr = lambda count: 0.01
    want = _reference(lr).init(params)
    got = adafactor.adafactor(lr, **SETTINGS).init(params)
    assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, want)
    assert got[0].v_row["experts_wi"].shape == (4, 128) and got[0].v_col["experts_wi"].shape == (4, 256)
    assert got[0].v["small"].shape == (64, 128)


def test_trainer_optimizer_is_the_fused_one_and_needs_params():
    opt = trainer.make_optimizer(TrainConfig())
    params = {"w": jnp.ones((4, 4))}
    with pytest.raises(ValueError, match="pass params"):
        opt.update(params, opt.init(params), None)
