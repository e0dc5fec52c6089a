"""Distillation: the hard/soft loss on literal logits, and the non-expert weight transfer."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY_MODEL, TINY_MOE
from flax import traverse_util

from switchrepro.config import DistillConfig, TrainConfig
from switchrepro.model.build import init_params
from switchrepro.model.t5 import dummy_batch
from switchrepro.train import distill, trainer

LN2 = math.log(2.0)


def _loss(student, teacher, target, **kw):
    s, t = jnp.asarray([[student]], jnp.float32), jnp.asarray([[teacher]], jnp.float32)
    return distill.distillation_loss(s, t, jnp.asarray([[target]]), jnp.ones((1, 1)), **kw)


def test_loss_is_cross_entropy_against_the_mixed_targets_at_temperature_1():
    # student softmax [1/4, 1/2, 1/4]; uniform teacher; label 1.
    # hard = ln 2; soft = -(1/3)(ln 1/4 + ln 1/2 + ln 1/4) = 5/3 ln 2
    # w = 0.25: 0.75 ln 2 + 0.25 * 5/3 ln 2 = 7/6 ln 2, which is also the CE against the mixed targets
    # [1/12, 10/12, 1/12]: -(2/12 ln 1/4 + 10/12 ln 1/2) = 14/12 ln 2.
    total, hard, n = _loss([0.0, LN2, 0.0], [0.0, 0.0, 0.0], 1)
    assert float(total) == pytest.approx(7 / 6 * LN2, rel=1e-6)
    assert float(hard) == pytest.approx(LN2, rel=1e-6) and float(n) == 1.0
    assert float(_loss([0.0, LN2, 0.0], [0.0, 0.0, 0.0], 1, teacher_weight=0.0)[0]) == pytest.approx(LN2, rel=1e-6)
    assert float(_loss([0.0, LN2, 0.0], [0.0, 0.0, 0.0], 1, teacher_weight=1.0)[0]) == pytest.approx(5 / 3 * LN2,
                                                                                                    rel=1e-6)


def test_temperature_softens_both_sides_and_scales_the_soft_term_by_t_squared():
    # T = 2: teacher [0, 2 ln 2, 0] / 2 -> softmax [1/4, 1/2, 1/4]; student the same; soft = 3/2 ln 2, x T^2 = 6 ln 2
    # hard (at T = 1): student softmax [1, 4, 1] / 6, label 1 -> ln 1.5. w = 0.5: 0.5 ln 1.5 + 0.5 * 6 ln 2
    total, hard, _ = _loss([0.0, 2 * LN2, 0.0], [0.0, 2 * LN2, 0.0], 1, teacher_weight=0.5, temperature=2.0)
    assert float(total) == pytest.approx(0.5 * math.log(1.5) + 3 * LN2, rel=1e-6)
    assert float(hard) == pytest.approx(math.log(1.5), rel=1e-6)


def test_gradient_is_softmax_minus_mixed_targets_and_none_reaches_the_teacher():
    student = jnp.asarray([[[0.3, -1.2, 2.0, 0.1]]])
    teacher = jnp.asarray([[[1.0, 0.5, -0.5, 0.0]]])
    target, w = jnp.asarray([[2]]), 0.25

    def f(s, t):
        return distill.distillation_loss(s, t, target, jnp.ones((1, 1)), teacher_weight=w)[0]

    g_student, g_teacher = jax.grad(f, argnums=(0, 1))(student, teacher)
    mixed = (1 - w) * jax.nn.one_hot(target, 4) + w * jax.nn.softmax(teacher)
    np.testing.assert_allclose(g_student, jax.nn.softmax(student) - mixed, atol=1e-6)
    assert not np.any(np.asarray(g_teacher))


def test_padding_weights_and_bad_settings():
    s = jnp.zeros((1, 2, 3)).at[0, 1].set(jnp.asarray([5.0, -5.0, 0.0]))
    total, hard, n = distill.distillation_loss(s, jnp.zeros((1, 2, 3)), jnp.asarray([[0, 1]]),
                                               jnp.asarray([[1.0, 0.0]]))
    assert float(n) == 1.0 and float(hard) == pytest.approx(math.log(3.0), rel=1e-6)  # position 1 is padding
    assert float(total) == pytest.approx(math.log(3.0), rel=1e-6)  # uniform student: soft = hard = ln 3
    with pytest.raises(ValueError, match=r"teacher_weight must be in \[0, 1\]"):
        distill.distillation_loss(s, s, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2)), teacher_weight=1.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distill.distillation_loss(s, s, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2)), temperature=0.0)
    with pytest.raises(ValueError, match="must share the vocabulary"):
        distill.distillation_loss(s, jnp.zeros((1, 2, 4)), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2)))


def test_transfer_on_a_literal_tree():
    teacher = {"emb": np.full((4, 2), 1.0, np.float32), "layer": {"attn": np.full((2, 2), 2.0, np.float32), "ffn": {
        "moe": {"router": np.ones((2, 3)), "wi": np.ones((3, 2, 5)), "wo": np.ones((3, 5, 2))}}},
        "head": np.full((2, 9), 3.0)}
    student = {"emb": np.zeros((4, 2), np.float32), "layer": {"attn": np.zeros((2, 2), np.float32), "ffn": {
        "mlp": {"wi": np.zeros((2, 5)), "wo": np.zeros((5, 2))}}}, "head": np.zeros((2, 4))}
    out, report = distill.transfer_non_expert(teacher, student)
    assert set(report.copied) == {"emb", "layer/attn"}
    assert set(report.expert_or_router) == {"layer/ffn/moe/router", "layer/ffn/moe/wi", "layer/ffn/moe/wo"}
    assert report.shape_mismatch == ("head",)
    assert set(report.student_only) == {"layer/ffn/mlp/wi", "layer/ffn/mlp/wo"}
    np.testing.assert_array_equal(out["emb"], teacher["emb"])
    np.testing.assert_array_equal(out["layer"]["attn"], teacher["layer"]["attn"])
    assert not np.any(np.asarray(out["head"])) and not np.any(np.asarray(out["layer"]["ffn"]["mlp"]["wi"]))


def test_transfer_from_a_switch_teacher_to_its_flop_matched_dense_student():
    _, teacher = init_params(dataclasses.replace(TINY_MODEL, moe=TINY_MOE), jax.random.PRNGKey(0))
    _, student = init_params(TINY_MODEL, jax.random.PRNGKey(1))
    out, report = distill.transfer_non_expert(teacher, student)
    flat_t, flat_s = traverse_util.flatten_dict(teacher), traverse_util.flatten_dict(student)
    flat_out = traverse_util.flatten_dict(out)
    assert report.copied and not report.shape_mismatch
    for path in flat_out:
        name = "/".join(path)
        if name in report.copied:
            np.testing.assert_array_equal(flat_out[path], flat_t[path])
        else:  # the student's own init, untouched: only the dense FFNs of the teacher's sparse layers
            assert "/ffn/mlp/" in f"/{name}/"
            np.testing.assert_array_equal(flat_out[path], flat_s[path])
    assert not any("moe" in name for name in report.copied)
    assert report.expert_or_router and all("/moe/" in f"/{n}" for n in report.expert_or_router)
    # every teacher tensor outside the experts and router reached the student
    assert set(report.copied) == {"/".join(p) for p in flat_t if "moe" not in p}


def test_distillation_step_at_teacher_weight_zero_is_the_plain_step():
    """The trainer's distillation step with no soft share takes the plain step (same loss and gradients, so
    the same SGD update, up to float32 rounding), while a soft share changes the update."""
    teacher_model, teacher_params = init_params(dataclasses.replace(TINY_MODEL, moe=TINY_MOE), jax.random.PRNGKey(0))
    model, params = init_params(TINY_MODEL, jax.random.PRNGKey(1))
    tc = TrainConfig(steps=10)
    opt = optax.sgd(1.0)  # params move by exactly the gradient (Adafactor would amplify rounding in tiny grads)
    batch = dict(dummy_batch(2, 16, 8))
    batch["decoder_target_tokens"] = jax.random.randint(jax.random.PRNGKey(3), (2, 8), 3, TINY_MODEL.vocab_size)
    def new_state():  # a fresh copy each time: the step donates its state
        p = jax.tree_util.tree_map(jnp.array, params)
        return trainer.TrainState(step=jnp.int32(0), params=p, opt_state=opt.init(p))
    key = jax.random.PRNGKey(5)
    plain, plain_m = trainer.make_train_step(model, opt, tc)(new_state(), batch, key)

    def distilled(weight):
        step = trainer.make_train_step(model, opt, tc, teacher_model=teacher_model,
                                       distill=DistillConfig(teacher="t", teacher_weight=weight))
        return step(new_state(), batch, key, teacher_params)

    zero, zero_m = distilled(0.0)
    np.testing.assert_allclose(float(zero_m["loss"]), float(plain_m["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(zero_m["distillation_loss"]), float(plain_m["cross_entropy"]), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(zero.params), jax.tree_util.tree_leaves(plain.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    soft, soft_m = distilled(1.0)
    assert float(soft_m["cross_entropy"]) == pytest.approx(float(plain_m["cross_entropy"]), rel=1e-6)  # same forward
    assert float(soft_m["distillation_loss"]) != pytest.approx(float(plain_m["cross_entropy"]), rel=1e-3)
    assert not all(np.allclose(np.asarray(a), np.asarray(b)) for a, b in
                   zip(jax.tree_util.tree_leaves(soft.params), jax.tree_util.tree_leaves(plain.params), strict=True))
