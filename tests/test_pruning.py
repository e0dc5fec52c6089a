"""Context pruning (model/pruning.py): a budget that holds everything scores exactly as the parallel forward
pass (standard and selective attention, packed rows), a budget that holds nothing of the past scores each
token from itself and its BOS, and the eviction order on literal caches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from switchrepro.config import ModelConfig
from switchrepro.model.build import init_params
from switchrepro.model.pruning import eviction_slot, score_with_budget
from switchrepro.model.t5 import relative_position_bucket


def _model(attention, layers=2):
    cfg = ModelConfig(vocab_size=64, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_decoder_layers=layers,
                      attention=attention, architecture="decoder_only")
    return init_params(cfg, jax.random.PRNGKey(3))


def _batch():
    rng = np.random.default_rng(2)
    tokens = rng.integers(2, 64, (2, 14))
    segments = np.array([[1] * 14, [1] * 6 + [2] * 6 + [0] * 2])
    tokens[segments == 0] = 0
    return {"decoder_input_tokens": jnp.asarray(tokens, jnp.int32), "decoder_target_tokens": jnp.asarray(tokens),
            "decoder_segment_ids": jnp.asarray(segments, jnp.int32)}, segments > 0


@pytest.mark.parametrize("attention", ["standard", "selective"])
def test_a_budget_of_everything_equals_no_pruning(attention):
    model, params = _model(attention)
    batch, real = _batch()
    parallel, _ = model.apply({"params": params}, batch)
    for budget in (14, 20):
        cached = score_with_budget(model, params, batch, budget)
        np.testing.assert_allclose(np.asarray(cached)[real], np.asarray(parallel)[real], rtol=2e-5, atol=2e-5)


def test_pruning_changes_selective_scores_only_once_the_cache_is_full():
    model, params = _model("selective")
    batch, real = _batch()
    full = np.asarray(score_with_budget(model, params, batch, 14))
    small = np.asarray(score_with_budget(model, params, batch, 5))
    # row 0: the first 5 positions fit in the cache; the 6th is the first to lose a key
    np.testing.assert_allclose(small[0, :5], full[0, :5], rtol=2e-5, atol=2e-5)
    assert not np.allclose(small[0, 5:], full[0, 5:], atol=1e-4)


def _rms(x, scale):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * scale


def test_a_one_layer_budget_of_two_keeps_bos_and_the_newest_key():
    """With 2 slots, query t attends to its segment's first position and itself only: checked against a numpy
    oracle of the one-layer model on those two keys (relative distances t and 0)."""
    model, params = _model("standard", layers=1)
    batch, _ = _batch()
    scores = np.asarray(score_with_budget(model, params, batch, 2))
    p = jax.tree_util.tree_map(np.asarray, params)
    layer, heads, d_kv = p["decoder_layer_0"], 4, 8
    a = layer["self_attention"]
    tokens = np.asarray(batch["decoder_input_tokens"])[0]
    buckets = {0: 0}

    for t in (3, 9):
        buckets[t] = int(relative_position_bucket(np.array([-t]), False, 32, 128)[0])
        x = p["token_embedder"]["embedding"][[tokens[0], tokens[t]]]  # keys: BOS, then the query's own token
        h = _rms(x, layer["pre_self_attention_norm"]["scale"])
        q = (h[1] @ a["query"]["kernel"]).reshape(heads, d_kv) / np.sqrt(d_kv)
        k = (h @ a["key"]["kernel"]).reshape(2, heads, d_kv)
        v = (h @ a["value"]["kernel"]).reshape(2, heads, d_kv)
        rel = p["decoder_relpos"]["rel_embedding"][:, [buckets[t], buckets[0]]]  # [heads, 2]
        logits = np.einsum("hd,shd->hs", q, k) + rel
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        y = x[1] + np.einsum("hs,shd->hd", w, v).reshape(-1) @ a["out"]["kernel"]
        h2 = _rms(y, layer["pre_mlp_norm"]["scale"])
        y = y + np.maximum(h2 @ layer["ffn"]["mlp"]["wi"]["kernel"], 0) @ layer["ffn"]["mlp"]["wo"]["kernel"]
        expected = _rms(y, p["decoder_norm"]["scale"]) @ p["logits_dense"]["kernel"]
        np.testing.assert_allclose(scores[0, t], expected, rtol=1e-4, atol=1e-4)


def test_eviction_order_on_literal_caches():
    pos = jnp.asarray([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, -1, 3], [4, 5, 2, 3]])
    kseg = jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 1], [2, 2, 1, 1]])
    f = jnp.asarray([[9.0, 0.5, 2.0, 1.0], [0.0, 0.5, 2.0, 1.0], [0.0, 7.0, 0.0, 1.0], [0.0, 3.0, 5.0, 5.0]])
    seg = jnp.asarray([1, 1, 1, 2])
    start = jnp.asarray([0, 0, 0, 4])
    # row 0: BOS (F 9) is protected -> the largest other F, slot 2; row 2: the empty slot first;
    # row 3: a key of the earlier segment (slots 2, 3) first
    assert eviction_slot(pos, kseg, f, seg, start, selective=True).tolist() == [2, 2, 2, 2]
    # standard attention: the oldest key but BOS (position 1), or the empty / earlier-segment slot
    assert eviction_slot(pos, kseg, f, seg, start, selective=False).tolist() == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="budget must be >= 2"):
        score_with_budget(*_model("standard"), _batch()[0], 1)
