"""Selective attention (model/selective.py) against a for-loop reference and a hand-worked example, and in
the decoder: equal to standard attention when nothing is selected."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from switchrepro.bench.attention import attention_verdict
from switchrepro.bench.timing import median_interval
from switchrepro.cli import main
from switchrepro.config import ModelConfig
from switchrepro.model import build, t5
from switchrepro.model.selective import BLOCK, exclusive_cumsum, segment_starts, selection_penalty


@pytest.mark.parametrize("queries", [1, BLOCK, 2 * BLOCK + 5])
def test_exclusive_cumsum_is_the_shifted_running_sum(queries):
    s = np.random.default_rng(queries).normal(size=(2, queries, 7)).astype(np.float32)
    expected = np.zeros_like(s)
    for i in range(1, queries):  # F[:, i] = s[:, 0] + ... + s[:, i - 1]
        expected[:, i] = expected[:, i - 1] + s[:, i - 1]
    np.testing.assert_allclose(np.asarray(exclusive_cumsum(jnp.asarray(s))), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("queries", [1, BLOCK, 2 * BLOCK + 5])
def test_exclusive_cumsum_gradient_is_the_reversed_running_sum(queries):
    """The hand-written gradient: dL/ds[:, k] = sum_{i > k} g[:, i], as jax differentiates the plain
    shift-then-cumsum."""
    rng = np.random.default_rng(queries + 1)
    s = jnp.asarray(rng.normal(size=(2, queries, 7)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, queries, 7)), jnp.float32)
    expected = np.zeros_like(np.asarray(g))
    for k in range(queries - 2, -1, -1):
        expected[:, k] = expected[:, k + 1] + np.asarray(g)[:, k + 1]
    got = jax.vjp(exclusive_cumsum, s)[1](g)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    plain = jax.vjp(lambda s: jnp.cumsum(s, axis=1) - s, s)[1](g)[0]
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5)


def _reference(head_logits, segments):
    """F[b, i, j] = sum over k < i of relu(L[b, k, j]) where query k may attend key j, j != k and j does not
    start its segment; written as loops."""
    batch, n, _ = head_logits.shape
    f = np.zeros((batch, n, n))
    for b in range(batch):
        seg = segments[b]
        for i in range(n):
            for j in range(n):
                total = 0.0
                for k in range(i):
                    allowed = j <= k and seg[k] == seg[j] and seg[k] > 0
                    start = j == 0 or seg[j] != seg[j - 1]
                    if allowed and j != k and not start:
                        total += max(head_logits[b, k, j], 0.0)
                f[b, i, j] = total
    return f


def _mask(segments):
    seg = jnp.asarray(segments)
    n = seg.shape[1]
    return t5.segment_mask(seg, seg)[:, 0] & jnp.tril(jnp.ones((n, n), bool))[None]


def test_penalty_matches_the_loop_reference_with_packing_and_padding():
    rng = np.random.default_rng(0)
    segments = np.array([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 2, 2, 2, 2, 2]])
    logits = rng.normal(size=(2, 8, 8)).astype(np.float32)
    got = selection_penalty(jnp.asarray(logits), _mask(segments), segment_starts(jnp.asarray(segments)))
    np.testing.assert_allclose(np.asarray(got), _reference(logits, segments), rtol=1e-6, atol=1e-6)
    assert np.asarray(segment_starts(jnp.asarray(segments))).tolist() == [
        [True] + [False] * 7, [True, False, False, True, False, False, False, False]]


def test_penalty_on_a_hand_worked_example():
    # 4 tokens. Query 2 selects key 1 with logit 0.7; query 3 selects key 2 (0.5) and not key 1 (-0.2).
    # Only later queries see a selection, so F[3, 1] = 0.7 and query 3's own selections reach nobody.
    # Query 1's logit 2.0 on key 0 is ignored (BOS), and every diagonal entry (9.0) too.
    logits = np.full((1, 4, 4), 9.0, np.float32) * np.eye(4)
    logits[0, 1, 0], logits[0, 2, 1], logits[0, 3, 2], logits[0, 3, 1] = 2.0, 0.7, 0.5, -0.2
    f = selection_penalty(jnp.asarray(logits), _mask(np.ones((1, 4), int)), segment_starts(jnp.ones((1, 4), int)))
    expected = np.zeros((1, 4, 4))
    expected[0, 3, 1] = 0.7
    np.testing.assert_allclose(np.asarray(f), expected, atol=1e-7)


@pytest.mark.parametrize("biases", ["tuple", "mask_and_position"])
def test_selective_attention_layer_matches_a_plain_reference(biases):
    """The layer recomputes head 0's logits from its own q and k (for a cheaper gradient): values and
    gradients equal the paper's recipe read off the full [batch, heads, q, k] logits, whether the biases come
    as a plain tuple (all added to head 0) or as attention_bias's MaskAndPositionBias (the mask left out of
    head 0, since selection_penalty zeroes the masked positions anyway)."""
    cfg = ModelConfig(d_model=16, num_heads=3, d_kv=4, attention="selective")
    layer = t5.Attention(cfg, jnp.float32)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 9, 16)), jnp.float32)
    segments = np.array([[1] * 9, [1, 1, 1, 2, 2, 2, 2, 2, 0]])
    mask, starts = _mask(segments), segment_starts(jnp.asarray(segments))
    position = jnp.asarray(rng.normal(size=(1, 3, 9, 9)), jnp.float32)  # a learnt bias: gets a gradient
    masking = jnp.where(mask, 0.0, -1e9)[:, None]
    pack = (lambda pos: (pos, masking)) if biases == "tuple" else (lambda pos: t5.MaskAndPositionBias(masking, pos))
    params = nn.meta.unbox(layer.init(jax.random.PRNGKey(0), x, x, pack(position), True, (mask, starts))["params"])

    def plain(p, x, position):
        w = lambda name: p[name]["kernel"]
        q, k, v = [(x @ w(n)).reshape(2, 9, 3, 4) for n in ("query", "key", "value")]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q / 2.0, k) + position + masking
        logits = logits - selection_penalty(logits[:, 0], mask, starts)[:, None]
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(2, 9, 12)
        return out @ w("out")

    def layer_output(p, x, position):
        return layer.apply({"params": p}, x, x, pack(position), True, (mask, starts))

    y_plain, vjp_plain = jax.vjp(plain, params, x, position)
    y_layer, vjp_layer = jax.vjp(layer_output, params, x, position)
    np.testing.assert_allclose(np.asarray(y_layer), np.asarray(y_plain), rtol=1e-5, atol=1e-6)
    g = jnp.asarray(rng.normal(size=y_plain.shape), jnp.float32)
    grads = vjp_layer(g)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(vjp_plain(g)), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(grads[2])[0, 0]).sum() > 0  # head 0's position bias learns from F too


def _model_and_batch(attention):
    cfg = ModelConfig(vocab_size=64, d_model=32, d_ff=64, num_heads=4, d_kv=8, attention=attention)
    rng = np.random.default_rng(1)
    batch = {"encoder_input_tokens": jnp.asarray(rng.integers(2, 64, (2, 10)), jnp.int32),
             "decoder_input_tokens": jnp.asarray(rng.integers(2, 64, (2, 9)), jnp.int32),
             "decoder_target_tokens": jnp.asarray(rng.integers(2, 64, (2, 9)), jnp.int32),
             "decoder_segment_ids": jnp.asarray([[1] * 9, [1, 1, 1, 1, 2, 2, 2, 2, 0]], jnp.int32)}
    model, params = build.init_params(cfg, jax.random.PRNGKey(0))
    return model, params, batch


def test_decoder_with_nothing_selected_equals_standard_attention():
    standard, params, batch = _model_and_batch("standard")
    selective, _, _ = _model_and_batch("selective")
    out_standard, _ = standard.apply({"params": params}, batch)
    out_selective, _ = selective.apply({"params": params}, batch)
    assert not np.allclose(out_standard, out_selective, atol=1e-4)  # head 0 selects something by default
    # Head 0 of every decoder self-attention sees logits <= 0 (zero query weights, a negative position bias):
    # relu gives S = 0, so F = 0 and selective attention is standard attention.
    params = jax.tree_util.tree_map(lambda x: x, params)
    for name, layer in params.items():
        if name.startswith("decoder_layer_"):
            q = np.array(layer["self_attention"]["query"]["kernel"])
            q[:, :8] = 0.0  # head 0's d_kv columns
            layer["self_attention"]["query"]["kernel"] = jnp.asarray(q)
    table = np.array(params["decoder_relpos"]["rel_embedding"])
    table[0] = -np.abs(table[0]) - 0.01
    params["decoder_relpos"]["rel_embedding"] = jnp.asarray(table)
    out_standard, _ = standard.apply({"params": params}, batch)
    out_selective, _ = selective.apply({"params": params}, batch)
    np.testing.assert_array_equal(np.asarray(out_standard), np.asarray(out_selective))


def test_selective_attention_trains_and_gradients_reach_the_selecting_head():
    model, params, batch = _model_and_batch("selective")

    def loss(p):
        logits, _ = model.apply({"params": p}, batch)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, batch["decoder_target_tokens"][..., None], -1)[..., 0])

    grads = jax.grad(loss)(params)
    g = np.asarray(grads["decoder_layer_0"]["self_attention"]["query"]["kernel"])
    assert np.isfinite(g).all() and np.abs(g[:, :8]).sum() > 0
    with pytest.raises(ValueError, match="attention must be one of"):
        dataclasses.replace(ModelConfig(), attention="sparse").validate()


def test_bench_attention_times_both_models_at_each_length(tmp_path):
    out = CliRunner().invoke(main, ["bench", "attention", "--lengths", "16,32", "--batch-size", "2", "--pairs", "3",
                                    "--warmup", "0", "--output", str(tmp_path / "a.md")])
    assert out.exit_code == 0, out.output
    rows = [line for line in (tmp_path / "a.md").read_text().splitlines() if line.startswith("| 16 |")
            or line.startswith("| 32 |")]
    assert len(rows) == 2 and all(len(r.split("|")) == 8 for r in rows)
    bad = CliRunner().invoke(main, ["bench", "attention", "--lengths", "1"])
    assert bad.exit_code == 2 and "--lengths needs context lengths >= 2" in bad.output


def test_median_interval_and_verdict_on_literal_ratios():
    # n = 100: ranks 50 -+ 1.96 * 10 / 2 = 40.2 .. 59.8 -> sorted positions 40 and 60
    ratios = [1.0 + i / 1000 for i in range(100)]
    median, low, high = median_interval(list(reversed(ratios)))
    assert median == pytest.approx(1.0495) and low == pytest.approx(1.040) and high == pytest.approx(1.060)
    assert attention_verdict(1.07, 1.09) == "met"
    assert attention_verdict(1.10, 1.12) == "NOT met"
    assert attention_verdict(1.09, 1.11).startswith("on the line")
