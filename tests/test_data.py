"""Data stage: embedded artefacts, vocabulary, span-corruption task, numpy cache and its loader.

Materialisation is kept small (validation split, 64 packed examples) and done twice: once
through ensure_cache's subprocess, once in-process, which also checks determinism.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from switchrepro.config import ConfigError, DataConfig, ExperimentConfig, ModelConfig
from switchrepro.data import (
    BYTE_SPAN20_CORRUPTION_TASK,
    BYTE_SPAN_CORRUPTION_TASK,
    EMBEDDED_DIR,
    SPAN_CORRUPTION_TASK,
    DataError,
    cache,
    verify,
    vocab,
)

REPO = Path(__file__).resolve().parents[1]
LENGTHS = dict(inputs_length=128, targets_length=32)
N_SMALL = 64


# --------------------------------------------------------------------------- embedded artefacts


def test_manifest_verifies_and_corruption_is_named(tmp_path):
    summary = verify.verify_embedded()
    assert summary["docs"] > 4000 and summary["mb"] < 20
    assert set(summary["sources"]) == {"sotu", "brown", "spamassassin"}

    copy = tmp_path / "embedded"
    shutil.copytree(EMBEDDED_DIR, copy)
    shard = copy / json.loads((copy / "manifest.json").read_text())["shards"][1]["path"]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=shard.name):
        verify.verify_embedded(copy)


def test_verify_command_prints_one_ok_line():
    out = subprocess.run([sys.executable, "-m", "switchrepro.data.verify"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("switchrepro data: OK:") and out.count("\n") == 1


# --------------------------------------------------------------------------- vocabulary


def test_vocab_conventions_and_roundtrip():
    v = vocab.get_vocabulary()
    assert (v.pad_id, v.eos_id, v.unk_id, v.vocab_size) == (0, 1, 2, 8192)
    assert v.encode("<extra_id_0>") == [8191] and v.decode([8190]) == "<extra_id_1>"
    text = "The President's 1862 address, and an e-mail: Klez is back! (naïve café, 3.5%)"
    assert v.decode(v.encode(text)) == text

    sp = vocab.load_sentencepiece()  # TF-free twin: same ids, same decoding
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id(), sp.get_piece_size()) == (0, 1, 2, -1, 8192)
    ids = v.encode(text) + [8191, 12, 8190]
    assert sp.encode(text) == v.encode(text) and sp.decode(ids) == v.decode(ids)
    assert vocab.decode(sp, ids + [1, 5, 0]) == v.decode(ids)


# --------------------------------------------------------------------------- seqio task


def test_span_corruption_task_has_sentinels_and_t5_noise_density():
    import t5.data.preprocessors as t5_pre

    from switchrepro.data import tasks

    task = tasks.get_task(SPAN_CORRUPTION_TASK)
    ds = task.get_dataset({"inputs": 128, "targets": 32}, split="validation", shuffle=False, seed=0)
    noise = kept = 0
    for i, ex in enumerate(ds.take(300).as_numpy_iterator()):
        inputs, targets = ex["inputs"], ex["targets"]
        if i == 0:
            assert 8191 in inputs and 8191 in targets and inputs[-1] == 1 and targets[-1] == 1
        is_text = lambda ids: (ids > 1) & (ids < 8092)  # not pad/EOS, not a sentinel
        noise += int(is_text(targets).sum())
        kept += int(is_text(inputs).sum())
    assert i == 299
    assert abs(noise / (noise + kept) - 0.15) < 0.01

    for length in (128, 512):  # the TF-free copy of T5's length arithmetic agrees with T5
        assert cache.span_corruption_lengths(length) == t5_pre.random_spans_helper(
            inputs_length=length, noise_density=0.15, mean_noise_span_length=3.0,
            extra_tokens_per_span_inputs=1, extra_tokens_per_span_targets=1)


@pytest.mark.parametrize("task_name, mean_span, lengths", [
    (BYTE_SPAN_CORRUPTION_TASK, 8.0, (146, 26)),  # ~3 spans of ~7 bytes per 128-byte input
    (BYTE_SPAN20_CORRUPTION_TASK, 20.0, (148, 24)),  # ByT5's setting: one span of 22 bytes
])
def test_byte_task_is_bytes_with_sentinels_counting_down_from_383(task_name, mean_span, lengths):
    import t5.data.preprocessors as t5_pre

    from switchrepro.data import tasks

    task = tasks.get_task(task_name)
    assert task.output_features["targets"].vocabulary.vocab_size == 384
    ds = task.get_dataset({"inputs": 128, "targets": 32}, split="validation", shuffle=False, seed=0)
    noise = kept = spans = 0
    for i, ex in enumerate(ds.take(300).as_numpy_iterator()):
        inputs, targets = ex["inputs"], ex["targets"]
        assert inputs.max() <= 383 and targets.max() <= 383 and inputs[-1] == 1 and targets[-1] == 1
        sentinels = inputs[inputs >= 259]
        # one sentinel per span, numbered from the top, the same ones in inputs and targets
        assert list(sentinels) == list(range(383, 383 - len(sentinels), -1)) == list(targets[targets >= 259])
        text = lambda ids: ids[(ids >= 3) & (ids < 259)]
        noise, kept, spans = noise + len(text(targets)), kept + len(text(inputs)), spans + len(sentinels)
        if i == 0:  # ids are UTF-8 bytes + 3: the kept bytes are mostly English letters and spaces
            raw = bytes(int(t) - 3 for t in text(inputs))
            assert sum(chr(c).isalpha() or c == 32 for c in raw) > 0.8 * len(raw)
    assert i == 299
    assert abs(noise / (noise + kept) - 0.15) < 0.01
    raw, targets_length = lengths
    noise_per_example = round(0.15 * raw)
    spans_per_example = round(noise_per_example / mean_span)
    assert spans == 300 * spans_per_example and noise == 300 * noise_per_example  # T5 fixes both per example

    assert cache.span_corruption_lengths(128, task_name) == t5_pre.random_spans_helper(
        inputs_length=128, noise_density=0.15, mean_noise_span_length=mean_span,
        extra_tokens_per_span_inputs=1, extra_tokens_per_span_targets=1) == lengths


def test_cache_key_names_the_tasks_vocabulary_and_span_settings():
    keys = {t: cache.cache_key(t, "train", 128, 32) for t in (SPAN_CORRUPTION_TASK, BYTE_SPAN_CORRUPTION_TASK)}
    assert keys[SPAN_CORRUPTION_TASK].split("-")[-1] != keys[BYTE_SPAN_CORRUPTION_TASK].split("-")[-1]
    with pytest.raises(DataError, match="unknown task 'bytes'"):
        cache.cache_key("bytes", "train", 128, 32)


def test_model_vocab_must_match_the_tasks_vocabulary():
    byte_data = DataConfig(task=BYTE_SPAN_CORRUPTION_TASK)
    ExperimentConfig(model=ModelConfig(vocab_size=384), data=byte_data).validate()
    # 8192 ids on 384-id data would train, but waste most of the softmax; 384 on 8192-id data would
    # silently clamp ids in the embedding lookup. Both are refused with the value to set.
    with pytest.raises(ConfigError, match="set ModelConfig.vocab_size = 384"):
        ExperimentConfig(model=ModelConfig(vocab_size=8192), data=byte_data).validate()
    with pytest.raises(ConfigError, match="set ModelConfig.vocab_size = 8192"):
        ExperimentConfig(model=ModelConfig(vocab_size=384), data=DataConfig()).validate()


def test_c4_task_needs_a_tfds_dir(tmp_path):
    from switchrepro.data import tasks

    with pytest.raises(DataError, match="tfds_data_dir"):
        tasks.get_task("c4_span_corruption")
    with pytest.raises(DataError, match="c4/en/3.1.0"):
        tasks.get_task("c4_span_corruption", tfds_data_dir=str(tmp_path))
    with pytest.raises(DataError, match="tfds_data_dir"):  # refused before any subprocess starts
        cache.ensure_cache("c4_span_corruption", "train", 128, 32, cache_dir=str(tmp_path))


def test_subprocess_failure_surfaces_its_error_and_leaves_no_cache(tmp_path):
    fake = tmp_path / "tfds" / "c4" / "en" / "3.1.0"  # passes the cheap check, fails inside TFDS
    fake.mkdir(parents=True)
    (fake / "dataset_info.json").write_text("{}")
    with pytest.raises(DataError, match=r"failed \(exit 1\): .*c4"):
        cache.ensure_cache("c4_span_corruption", "validation", 128, 32, 8, cache_dir=str(tmp_path / "cache"),
                           tfds_data_dir=str(tmp_path / "tfds"))
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- cache


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    path = cache.ensure_cache(SPAN_CORRUPTION_TASK, "validation", max_examples=N_SMALL,
                              cache_dir=str(root), **LENGTHS)
    return cache.load(path)


def test_ensure_cache_is_reused_and_rejects_unfillable_lengths(small_cache, tmp_path):
    again = cache.ensure_cache(SPAN_CORRUPTION_TASK, "validation", max_examples=N_SMALL,
                               cache_dir=str(small_cache.path.parents[2]), **LENGTHS)
    assert again == small_cache.path
    assert not list(small_cache.path.parent.glob(".tmp-*"))
    with pytest.raises(DataError, match="cannot fill"):
        cache.ensure_cache(SPAN_CORRUPTION_TASK, "train", 128, 16, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="cannot fill"):
        cache.train_batch(small_cache, 0, N_SMALL + 1, seed=0)


def test_cache_shapes_and_packing_semantics(small_cache):
    m, a = small_cache.meta, {k: np.asarray(v) for k, v in small_cache.arrays.items()}
    assert small_cache.num_examples == m["num_examples"] == N_SMALL
    assert set(a) == set(cache.FEATURES)
    for k, v in a.items():
        length = 128 if k.startswith("encoder") else 32
        assert v.shape == (N_SMALL, length) and v.dtype in (np.int8, np.int16, np.int32)
    assert m["tokens"]["inputs"] == int((a["encoder_input_tokens"] != 0).sum())

    for side, tokens in (("encoder", a["encoder_input_tokens"]), ("decoder", a["decoder_target_tokens"])):
        seg, pos = a[f"{side}_segment_ids"], a[f"{side}_positions"]
        assert ((seg != 0) == (tokens != 0)).all()
        assert (np.diff(seg, axis=1)[seg[:, 1:] != 0] >= 0).all()  # segments 1, 2, ... in order
        starts = np.ones_like(seg, dtype=bool)
        starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
        expected_pos = np.zeros_like(pos)
        for j in range(1, pos.shape[1]):
            expected_pos[:, j] = np.where(starts[:, j], 0, expected_pos[:, j - 1] + 1)
        assert (pos == np.where(seg != 0, expected_pos, 0)).all()

    targets, seg = a["decoder_target_tokens"], a["decoder_segment_ids"]
    shifted = np.zeros_like(targets)
    shifted[:, 1:] = targets[:, :-1]
    shifted[a["decoder_positions"] == 0] = 0  # each segment starts from 0
    assert (a["decoder_input_tokens"] == np.where(seg != 0, shifted, 0)).all()
    assert (a["decoder_loss_weights"] == (targets != 0)).all()


def test_materialisation_is_byte_identical(small_cache, tmp_path):
    from switchrepro.data import materialize  # imports TensorFlow (seqio), as the subprocess does

    materialize.materialize(SPAN_CORRUPTION_TASK, "validation", out_dir=tmp_path, max_examples=N_SMALL,
                            progress=False, **LENGTHS)
    for k in cache.FEATURES:
        assert (tmp_path / f"{k}.npy").read_bytes() == (small_cache.path / f"{k}.npy").read_bytes(), k


def test_train_batch_is_a_pure_function_of_step_and_seed(small_cache):
    b = cache.train_batch(small_cache, 5, 24, seed=3)
    assert all(v.dtype == np.int32 and v.shape[0] == 24 for v in b.values())
    for k, v in cache.train_batch(small_cache, 5, 24, seed=3).items():
        assert (v == b[k]).all()
    # Positions 0..3N-1 visit every example exactly once per epoch; a batch straddles epochs.
    idx = np.concatenate([cache.batch_indices(N_SMALL, s, 24, seed=3) for s in range(8)])
    for e in range(3):
        assert sorted(idx[e * N_SMALL:(e + 1) * N_SMALL]) == list(range(N_SMALL))
    assert not (idx[:N_SMALL] == idx[N_SMALL:2 * N_SMALL]).all()  # fresh permutation per epoch
    assert not (cache.batch_indices(N_SMALL, 0, 24, seed=4) == idx[:24]).all()
    rows = np.asarray(small_cache.arrays["encoder_input_tokens"])[cache.batch_indices(N_SMALL, 2, 24, seed=3)]
    assert (cache.train_batch(small_cache, 2, 24, seed=3)["encoder_input_tokens"] == rows).all()
    assert cache.epochs_for(8, 24, N_SMALL) == 3.0


def test_eval_batches_pad_the_last_batch(small_cache):
    batches = list(cache.eval_batches(small_cache, 24, max_examples=50))
    assert [n for _, n in batches] == [24, 24, 2]
    last, n = batches[-1]
    assert all(v.shape[0] == 24 and not v[n:].any() for v in last.values())
    first = np.asarray(small_cache.arrays["decoder_target_tokens"])
    assert (batches[1][0]["decoder_target_tokens"] == first[24:48]).all()


def test_loader_never_imports_tensorflow(small_cache):
    code = (
        "import sys\n"
        "from switchrepro.data import cache\n"
        f"c = cache.load({str(small_cache.path)!r})\n"
        "b = cache.train_batch(c, 3, 8, seed=0)\n"
        "list(cache.eval_batches(c, 16))\n"
        f"cache.ensure_cache({SPAN_CORRUPTION_TASK!r}, 'validation', 128, 32, {N_SMALL}, "
        f"{str(small_cache.path.parents[2])!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio', 't5'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
