"""The decoder-only language model (model/decoder_only.py) and its data (the byte-level LM task): causality,
packed segments that do not see each other (standard and selective attention), FLOPs on literal shapes, and
the LM cache holding running text of the corpus."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from switchrepro.config import ModelConfig, MoeConfig
from switchrepro.data import BYTE_LM_TASK, cache
from switchrepro.data.corpus import iter_shard, shard_paths
from switchrepro.model.build import build_model, init_params
from switchrepro.model.decoder_only import DecoderOnly
from switchrepro.model.t5 import Transformer
from switchrepro.train.trainer import flops_per_token


def _cfg(attention="standard", moe=None):
    return ModelConfig(vocab_size=64, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_decoder_layers=2,
                       attention=attention, architecture="decoder_only", moe=moe)


def _batch(tokens, segments):
    tokens, segments = jnp.asarray(tokens, jnp.int32), jnp.asarray(segments, jnp.int32)
    return {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens, "decoder_segment_ids": segments}


@pytest.mark.parametrize("attention", ["standard", "selective"])
def test_a_later_token_never_changes_earlier_logits(attention):
    model, params = init_params(_cfg(attention), jax.random.PRNGKey(0))
    assert isinstance(model, DecoderOnly)
    tokens = np.random.default_rng(0).integers(2, 64, (1, 12))
    changed = tokens.copy()
    changed[0, 7:] = (changed[0, 7:] + 5) % 60 + 2
    a, _ = model.apply({"params": params}, _batch(tokens, np.ones((1, 12))))
    b, _ = model.apply({"params": params}, _batch(changed, np.ones((1, 12))))
    np.testing.assert_allclose(np.asarray(a[:, :7]), np.asarray(b[:, :7]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(a[:, 7:]), np.asarray(b[:, 7:]))


@pytest.mark.parametrize("attention", ["standard", "selective"])
def test_a_packed_segment_is_scored_as_if_alone(attention):
    """Segment 2 of a packed row gets the logits it gets alone at the start of a row: the mask, the relative
    positions and, for selective attention, its own BOS and selections do not leak across segments."""
    moe = MoeConfig(num_experts=2, capacity_factor_eval=8.0)  # ample capacity: no token is dropped in either
    model, params = init_params(_cfg(attention, moe), jax.random.PRNGKey(1))
    rng = np.random.default_rng(1)
    first, second = rng.integers(2, 64, 5), rng.integers(2, 64, 6)
    packed, _ = model.apply({"params": params}, _batch([np.concatenate([first, second])], [[1] * 5 + [2] * 6]))
    alone, _ = model.apply({"params": params}, _batch([np.concatenate([second, np.zeros(5, int)])],
                                                      [[1] * 6 + [0] * 5]))
    np.testing.assert_allclose(np.asarray(packed[0, 5:]), np.asarray(alone[0, :6]), rtol=1e-4, atol=1e-5)


def test_flops_of_the_decoder_only_model_on_literal_shapes():
    # per layer: 4 projections of 2 x 32 x 32, scores and values 4 x 16 x 32, FFN 2 x 2 x 32 x 64;
    # logits 2 x 32 x 64; 16 tokens
    per_token = 2 * (4 * 2 * 32 * 32 + 4 * 16 * 32 + 2 * 2 * 32 * 64) + 2 * 32 * 64
    got = flops_per_token(_cfg(), inputs_length=999, targets_length=16)
    assert got["flops_per_example"] == per_token * 16 and got["flops_per_target_token"] == per_token
    assert isinstance(build_model(ModelConfig()), Transformer)


def test_lm_cache_holds_running_text_of_the_corpus(cache_root):
    c = cache.load(cache.ensure_cache(BYTE_LM_TASK, "validation", 0, 64, 8, cache_root))
    assert sorted(c.arrays) == ["decoder_input_tokens", "decoder_loss_weights", "decoder_positions",
                                "decoder_segment_ids", "decoder_target_tokens"]
    text = "\n".join(doc["text"] for path in shard_paths("validation") for doc in iter_shard(path)).encode()
    targets = np.asarray(c.arrays["decoder_target_tokens"])
    inputs = np.asarray(c.arrays["decoder_input_tokens"])
    segments = np.asarray(c.arrays["decoder_segment_ids"])
    for row in range(c.num_examples):
        piece = bytes(int(t) - 3 for t in targets[row] if 3 <= t < 259)[:40]
        assert piece in text, row
        # teacher forcing: the input is the target shifted right by one within each segment
        same = segments[row, 1:] == segments[row, :-1]
        np.testing.assert_array_equal(inputs[row, 1:][same], targets[row, :-1][same])
    assert cache.cache_key(BYTE_LM_TASK, "train", 0, 64) == cache.cache_key(BYTE_LM_TASK, "train", 512, 64)
