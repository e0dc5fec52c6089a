"""Fine-tuning: greedy decoding against a plain loop, peak-score selection, the pre-trained start, byte
detokenisation, and the downstream evaluation hook on a hand-made scorer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_MODEL, TINY_MOE

from switchrepro.config import ConfigError, ExperimentConfig, FinetuneConfig, MoeConfig, to_dict
from switchrepro.config.store import config_hash
from switchrepro.data import cache as data_cache
from switchrepro.data.vocab import decode_ids
from switchrepro.model.build import init_params
from switchrepro.model.decoding import greedy_decode
from switchrepro.train import finetune, trainer
from switchrepro.train.metrics_log import read_metrics

SMALL = dataclasses.replace(TINY_MODEL, vocab_size=384, d_model=32, d_ff=64, d_kv=8)


def _loop_decode(model, params, inputs, length, eos=1):
    """Reference: at each position run the whole model on the prefix decoded so far (no padding after it)."""
    out = np.zeros((inputs.shape[0], length), np.int32)
    for row in range(inputs.shape[0]):
        dec = [0]
        for i in range(length):
            x = jnp.asarray(inputs[row:row + 1])
            d = jnp.asarray([dec])
            batch = {"encoder_input_tokens": x, "encoder_segment_ids": (x > 0).astype(jnp.int32),
                     "decoder_input_tokens": d, "decoder_target_tokens": jnp.ones_like(d),
                     "decoder_segment_ids": jnp.ones_like(d)}
            logits, _ = model.apply({"params": params}, batch, deterministic=True)
            token = int(jnp.argmax(logits[0, i]))
            out[row, i] = token
            if token == eos:
                break
            dec.append(token)
    return out


@pytest.mark.parametrize("moe", [None, dataclasses.replace(TINY_MOE, capacity_factor_eval=8.0)])
def test_greedy_decode_equals_a_loop_over_prefixes(moe):
    # Eval capacity 8x: no token is ever dropped, so the prefix loop (other row lengths) routes the same.
    cfg = dataclasses.replace(SMALL, moe=moe)
    model, params = init_params(cfg, jax.random.PRNGKey(3), inputs_length=12, targets_length=6)
    rng = np.random.default_rng(0)
    inputs = rng.integers(3, 384, size=(3, 12)).astype(np.int32)
    inputs[1, 7:] = 0  # a padded input
    got = np.asarray(greedy_decode(model, params, inputs, 6))
    np.testing.assert_array_equal(got, _loop_decode(model, params, inputs, 6))


def test_greedy_decode_stops_at_eos_and_zeroes_the_rest():
    model, params = init_params(SMALL, jax.random.PRNGKey(0), inputs_length=8, targets_length=5)
    inputs = np.full((2, 8), 5, np.int32)
    first = int(np.asarray(greedy_decode(model, params, inputs, 5))[0, 0])
    assert first > 1  # this seed's first token is an ordinary byte
    # Give EOS (id 1) the output column of that token: a tie, which argmax breaks towards the lower id.
    kernel = params["logits_dense"]["kernel"]
    params = {**params, "logits_dense": {"kernel": kernel.at[:, 1].set(kernel[:, first])}}
    out = np.asarray(greedy_decode(model, params, inputs, 5))
    assert out[0, 0] == 1 and not out[0, 1:].any()


def test_peak_score_takes_the_best_evaluation_earliest_on_ties():
    rows = [{"step": 10, "loss": 3.0}, {"step": 100, "eval_score": 60.0}, {"step": 200, "eval_score": 75.5},
            {"step": 300, "eval_score": 75.5}, {"step": 400, "eval_score": 70.0},
            {"step": 400, "event": "done", "eval_score": 99.0}, {"step": 500, "eval_score": float("nan")}]
    assert finetune.peak_score(rows) == {"step": 200, "value": 75.5}
    assert finetune.peak_score([{"step": 1, "loss": 2.0}]) is None
    assert finetune.peak_score(rows, key="eval_f1") is None


def test_primary_metric():
    assert finetune.primary_metric(("accuracy",)) == "accuracy"
    assert finetune.primary_metric(("em", "f1")) == "em"  # the paper reports exact match for QA
    with pytest.raises(ValueError):
        finetune.primary_metric(())


def test_check_same_shapes_names_the_difference():
    _, dense = init_params(SMALL, jax.random.PRNGKey(0), inputs_length=4, targets_length=4)
    finetune.check_same_shapes(dense, dense)
    _, sparse = init_params(dataclasses.replace(SMALL, moe=TINY_MOE), jax.random.PRNGKey(0), inputs_length=4,
                            targets_length=4)
    with pytest.raises(ValueError, match="differ in parameters"):
        finetune.check_same_shapes(dense, sparse)
    _, wide = init_params(dataclasses.replace(SMALL, d_ff=96), jax.random.PRNGKey(0), inputs_length=4,
                          targets_length=4)
    with pytest.raises(ValueError, match=r"\(32, 64\) in the pre-trained model but \(32, 96\)"):
        finetune.check_same_shapes(dense, wide)


def test_decode_ids_bytes_literal():
    # "hi" = bytes 104, 105 -> ids 107, 108; pad, unk and a sentinel (383) are dropped; EOS ends the text.
    assert decode_ids([107, 0, 108, 2, 383, 1, 107], "bytes") == "hi"
    # UTF-8 across two bytes: "é" = c3 a9.
    assert decode_ids([0xC3 + 3, 0xA9 + 3], "bytes") == "\u00e9"


def test_finetune_config_validation_and_hash_compatibility():
    with pytest.raises(ConfigError, match="pretrained"):
        FinetuneConfig().validate()
    plain = ExperimentConfig()
    assert "finetune" not in to_dict(plain)  # old run directories keep their saved form and hash
    tuned = dataclasses.replace(plain, finetune=FinetuneConfig(pretrained="abc"))
    assert to_dict(tuned)["finetune"] == {"pretrained": "abc", "decode_examples": 256}
    assert config_hash(tuned) != config_hash(plain)
    assert config_hash(dataclasses.replace(plain, model=dataclasses.replace(plain.model, moe=MoeConfig()))) != \
        config_hash(plain)


def test_trainer_starts_from_the_pretrained_params_and_logs_the_peak(tiny_experiment, tmp_path):
    """A fine-tuning run starts from the given parameters (its first step stays close to them, far from a fresh
    initialisation), calls the downstream evaluation at each eval, and logs the peak in its done event."""
    base = tiny_experiment(steps=4, eval_every=2, log_every=1, checkpoint_every=100)
    cfg = dataclasses.replace(base, finetune=FinetuneConfig(pretrained="p"))
    _, fresh = init_params(cfg.model, jax.random.PRNGKey(cfg.train.seed), inputs_length=64, targets_length=16)
    pretrained = jax.tree_util.tree_map(lambda x: x + 0.5, fresh)  # anything far from the seed's own init
    dist = lambda a, b: float(sum(jnp.sum((x - y) ** 2) for x, y in
                                  zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))) ** 0.5
    seen = []

    def hook(params, step):
        seen.append((step, dist(params, pretrained)))
        return {"eval_score": [70.0, 65.0][len(seen) - 1]}

    caches = dict(train_cache=data_cache.cache_for_config(cfg.data, "train"),
                  eval_cache=data_cache.cache_for_config(cfg.data, "validation"))
    trainer.train(cfg, tmp_path / "ft", pretrained=pretrained, downstream_eval=hook, echo=lambda s: None, **caches)
    assert [s for s, _ in seen] == [2, 4]
    assert seen[0][1] < 0.5 * dist(fresh, pretrained)  # Adafactor moves by a share of the params' own scale
    rows = read_metrics(tmp_path / "ft" / "metrics.jsonl")
    assert rows[0]["finetuned_from"] == "p"
    done = [r for r in rows if r.get("event") == "done"][0]
    assert (done["peak_eval_score"], done["peak_step"]) == (70.0, 2)
    with pytest.raises(ValueError, match="pre-trained params exactly"):
        trainer.train(cfg, tmp_path / "x", echo=lambda s: None, **caches)
    _, other = init_params(dataclasses.replace(cfg.model, d_ff=96), jax.random.PRNGKey(0), 4, 4)
    with pytest.raises(ValueError, match="in the pre-trained model but"):
        trainer.train(cfg, tmp_path / "y", pretrained=other, echo=lambda s: None, **caches)


def test_downstream_name_maps_seqio_tasks_to_the_scorer_names():
    assert finetune.downstream_name("switchrepro_byte_sentiment") == "sentiment"
    assert finetune.downstream_name("switchrepro_cloze_qa") == "cloze_qa"
    assert finetune.downstream_name("switchrepro_glue_sst2") == "glue_sst2"
    for bad in ("switchrepro_span_corruption", "nope"):
        with pytest.raises(ValueError, match="is not a downstream"):
            finetune.downstream_name(bad)
