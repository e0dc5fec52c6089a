"""Packed, feature-converted examples as numpy arrays, so training never imports TensorFlow.

A task split is materialised once, in a subprocess (`python -m switchrepro.data.materialize`), through
seqio.get_dataset(..., EncDecFeatureConverter(pack=True), shuffle=False, fixed seed), and
stored as one .npy per model feature plus meta.json. Two materialisations give byte-identical
arrays. The validation split of a text-to-text (fine-tuning) task is different: unpacked, one example
per row in file order, none dropped (seqio trims what is too long; meta.json counts them), and its
original texts are written beside the arrays as texts.jsonl, so predictions can be scored as strings.
A multilingual task's validation split is unpacked too, so that each row holds one language: its language
ids are written as languages.npy, the codes in meta.json ("languages"), for per-language evaluation.
The training process only memory-maps the arrays:

    path = ensure_cache(task, split, inputs_length, targets_length, max_examples, cache_dir, tfds_data_dir)
    cache = load(path)                                  # or: cache_for_config(data_cfg, split)
    batch = train_batch(cache, step, batch_size, seed)  # exact resume: a pure function of (step, seed)
    for batch, n_real in eval_batches(cache, batch_size, max_examples): ...
    texts = load_texts(path)          # text-to-text validation: [{"inputs", "targets"}] in row order
    cache.languages, cache.meta["languages"]   # multilingual validation: per-row language id, and the codes

All batches are dicts of int32 arrays [batch, length] with the eight features in FEATURES; a language-modelling
task's (decoder-only models) have the five DECODER_FEATURES (seqio's DecoderFeatureConverter).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from switchrepro.data import (
    C4_LM_TASK,
    C4_TASK,
    DOWNSTREAM_TASKS,
    MC4_TASK,
    SPAN_CORRUPTION_TASK,
    TASKS,
    DataError,
    benchmark_of,
    cache_root,
    multilingual,
    require_benchmark,
    require_c4,
    require_mc4,
    task_info,
)
from switchrepro.data.corpus import SPLITS, embedded_dir, manifest_sha256
from switchrepro.data.downstream import file_entry
from switchrepro.data.tfprocess import last_error_line, run_teeing_stderr
from switchrepro.data.vocab import vocab_sha256

CACHE_FORMAT = 1
SEED = 0  # span-corruption randomness (chunk choice, noise masks) in the materialised data
ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
DECODER_FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions")
FEATURES = ENCODER_FEATURES + DECODER_FEATURES
META = "meta.json"
TEXTS = "texts.jsonl"
TEXTS_FORMAT = 1  # of texts.jsonl and the unpacked validation arrays (part of a text-to-text cache's key)
LANGUAGES = "languages.npy"
MULTILINGUAL_FORMAT = 1  # of the multilingual caches (unpacked validation with languages.npy)


# --------------------------------------------------------------------------- where a cache lives


def cache_key(task: str, split: str, inputs_length: int, targets_length: int,
              max_examples: Optional[int] = None) -> str:
    """Relative cache path; its hash covers everything that changes the arrays."""
    info = task_info(task)
    if info.kind == "lm":
        inputs_length = 0  # targets only
    ident = {
        "format": CACHE_FORMAT, "task": task, "split": split,
        "inputs_length": int(inputs_length), "targets_length": int(targets_length),
        "max_examples": max_examples, "seed": SEED,
        "vocabulary": _vocabulary_identity(info), "vocab_size": info.vocab_size,
        "noise_density": info.noise_density, "mean_noise_span_length": info.mean_noise_span_length,
        "corpus_manifest_sha256": manifest_sha256(),
    }
    if info.kind == "text2text":  # added only for these, so the span-corruption caches keep their keys
        ident.update({"kind": info.kind, "packed": is_packed(task, split), "texts_format": TEXTS_FORMAT,
                      "source": _source_identity(task, split)})
    if info.kind == "lm":
        ident["kind"] = info.kind
    if info.multilingual:
        ident.update({"multilingual_format": MULTILINGUAL_FORMAT, "packed": is_packed(task, split),
                      "source": _multilingual_identity(task)})
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return f"{task}/{split}/{inputs_length}x{targets_length}-{max_examples or 'all'}-{digest}"


def is_packed(task: str, split: str) -> bool:
    """Training rows are packed; a text-to-text or multilingual task's validation rows hold one example each."""
    info = task_info(task)
    return not ((info.kind == "text2text" or info.multilingual) and split == "validation")


def _multilingual_identity(task: str) -> str:
    """The embedded multilingual manifest's sha256 (its files, split and sampling table), or mC4's TFDS name."""
    if task == MC4_TASK:
        return f"tfds:{task_info(task).tfds_name}"
    return "embedded:" + hashlib.sha256((embedded_dir() / multilingual.MANIFEST).read_bytes()).hexdigest()


def downstream_short_name(task: str) -> Optional[str]:
    """"sentiment" for switchrepro_sentiment / switchrepro_byte_sentiment; None for other tasks."""
    for prefix in ("switchrepro_byte_", "switchrepro_"):
        if task.startswith(prefix) and task[len(prefix):] in DOWNSTREAM_TASKS:
            return task[len(prefix):]
    return None


def _source_identity(task: str, split: str) -> str:
    """What a text-to-text task's split is made of: the embedded file's sha256, or the TFDS dataset."""
    short = downstream_short_name(task)
    if short is not None:
        return f"embedded:{file_entry(short, split)['sha256']}"
    return f"tfds:{task_info(task).tfds_name}:{benchmark_of(task)}"


def _vocabulary_identity(info) -> str:
    if info.vocabulary == "spm8k":
        return f"spm8k:{vocab_sha256()}"
    return f"bytes:{info.vocab_size}"


def span_corruption_lengths(inputs_length: int, task: str = SPAN_CORRUPTION_TASK) -> Tuple[int, int]:
    """(raw tokens per example, targets length) of the task's span corruption for inputs_length.

    Same arithmetic as t5.data.preprocessors.random_spans_helper (one sentinel per span, EOS
    included), kept here so a bad request fails before TensorFlow is ever imported.
    """
    info = task_info(task)

    def lengths(tokens: int) -> Tuple[int, int]:
        noise = int(round(tokens * info.noise_density))
        spans = int(round(noise / info.mean_noise_span_length))
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = inputs_length - 1
    while lengths(tokens + 1)[0] <= inputs_length:
        tokens += 1
    return tokens, lengths(tokens)[1]


def check_request(task: str, split: str, inputs_length: int, targets_length: int,
                  max_examples: Optional[int]) -> None:
    """DataError (one line saying what to change) for a request the data cannot fill, checked before any
    subprocess starts, and again by the materialising subprocess itself."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {TASKS}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {SPLITS}")
    if task_info(task).kind == "lm":
        inputs_length = 8  # not used: a language-modelling example is targets only
    if inputs_length < 8 or targets_length < 4:
        raise DataError(f"feature lengths the data cannot fill: inputs_length={inputs_length} (need >= 8), "
                        f"targets_length={targets_length} (need >= 4)")
    span_targets = span_corruption_lengths(inputs_length, task)[1] if task_info(task).kind == "span_corruption" else 0
    if targets_length < span_targets:
        raise DataError(f"feature lengths the data cannot fill: span corruption with inputs_length="
                        f"{inputs_length} makes targets of {span_targets} tokens, so targets_length="
                        f"{targets_length} must be >= {span_targets}")
    if max_examples is not None and max_examples < 1:
        raise DataError(f"max_examples must be None or >= 1, got {max_examples}")


def ensure_cache(task: str, split: str, inputs_length: int, targets_length: int,
                 max_examples: Optional[int] = None, cache_dir: Optional[str] = None,
                 tfds_data_dir: Optional[str] = None) -> Path:
    """Directory of the materialised cache, building it in a subprocess if it does not exist yet.

    The subprocess imports TensorFlow, this process does not. It writes into a temporary
    directory that is renamed into place only when complete, so an interrupted run leaves
    nothing that looks valid. Failure raises DataError carrying the subprocess's last error line.
    """
    check_request(task, split, inputs_length, targets_length, max_examples)
    if task in (C4_TASK, C4_LM_TASK):
        require_c4(tfds_data_dir, task)
    if task == MC4_TASK:
        require_mc4(tfds_data_dir)
    if benchmark_of(task) is not None:
        require_benchmark(task, tfds_data_dir)  # one line saying what to prepare, before any subprocess
    path = cache_root(cache_dir) / cache_key(task, split, inputs_length, targets_length, max_examples)
    if (path / META).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "switchrepro.data.materialize", "--task", task, "--split", split,
           "--inputs_length", str(inputs_length), "--targets_length", str(targets_length), "--out", str(tmp)]
    if max_examples is not None:
        cmd += ["--max_examples", str(max_examples)]
    if tfds_data_dir is not None:
        cmd += ["--tfds_data_dir", str(tfds_data_dir)]
    try:
        code, tail = run_teeing_stderr(cmd)
        if code != 0:
            raise DataError(f"materialising {task}/{split} at {inputs_length}/{targets_length} failed "
                            f"(exit {code}): {last_error_line(tail)}")
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / META).is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# --------------------------------------------------------------------------- TF-free loader


@dataclasses.dataclass(frozen=True)
class Cache:
    path: Path
    meta: dict
    arrays: Dict[str, np.ndarray]  # read-only memory maps, [num_examples, length]
    languages: Optional[np.ndarray] = None  # <int16>[num_examples]: a multilingual validation row's language id

    @property
    def num_examples(self) -> int:
        return int(self.meta["num_examples"])


def load(path: Path) -> Cache:
    path = Path(path)
    if not (path / META).is_file():
        raise DataError(f"{path} is not a materialised cache (no {META}); use ensure_cache() to build it")
    meta = json.loads((path / META).read_text())
    arrays = {k: np.load(path / f"{k}.npy", mmap_mode="r") for k in meta.get("features", FEATURES)}
    for k, a in arrays.items():
        length = meta["inputs_length" if k.startswith("encoder") else "targets_length"]
        if a.shape != (meta["num_examples"], length):
            raise DataError(f"{path / (k + '.npy')} has shape {a.shape}, expected "
                            f"({meta['num_examples']}, {length}); delete {path} to rebuild it")
    languages = None
    if "languages" in meta:
        languages = np.load(path / LANGUAGES)
        if languages.shape != (meta["num_examples"],) or int(languages.max(initial=0)) >= len(meta["languages"]):
            raise DataError(f"{path / LANGUAGES} has shape {languages.shape} or ids beyond the "
                            f"{len(meta['languages'])} languages in {META}; delete {path} to rebuild it")
    return Cache(path, meta, arrays, languages)


def load_texts(path: Path) -> List[dict]:
    """texts.jsonl of a text-to-text validation cache: [{"inputs", "targets"}] aligned with its rows."""
    path = Path(path)
    if not (path / TEXTS).is_file():
        raise DataError(f"{path} has no {TEXTS}: only the validation split of a text-to-text task keeps its texts "
                        f"(delete {path} to rebuild it if it is one)")
    with (path / TEXTS).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def cache_for_config(data_cfg, split: str) -> Cache:
    """ensure_cache + load for a DataConfig: the whole (or max_train_examples) train split, or
    eval_examples of validation. Training needs at least one full batch."""
    max_examples = data_cfg.max_train_examples if split == "train" else data_cfg.eval_examples
    cache = load(ensure_cache(data_cfg.task, split, data_cfg.inputs_length, data_cfg.targets_length,
                              max_examples, data_cfg.cache_dir, data_cfg.tfds_data_dir))
    if split == "train":
        _require_batch(cache, data_cfg.batch_size)
    return cache


def _require_batch(cache: Cache, batch_size: int) -> None:
    if cache.num_examples < batch_size:
        raise DataError(
            f"feature lengths the data cannot fill: {cache.meta['task']}/{cache.meta['split']} at "
            f"{cache.meta['inputs_length']}/{cache.meta['targets_length']} has {cache.num_examples} "
            f"packed examples, fewer than one batch of {batch_size}; use shorter lengths, a smaller "
            "batch or more data")


@functools.lru_cache(maxsize=4)
def _permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng((seed, epoch)).permutation(num_examples)
    perm.flags.writeable = False
    return perm


def batch_indices(num_examples: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices of training batch `step`: position p = step * batch_size + i is example
    perm_e[p % N] with e = p // N, perm_e drawn from default_rng((seed, e))."""
    pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(pos, num_examples)
    idx = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):  # a batch can straddle an epoch boundary
        mask = epochs == e
        idx[mask] = _permutation(num_examples, seed, int(e))[offsets[mask]]
    return idx


def train_batch(cache: Cache, step: int, batch_size: int, seed: int) -> Dict[str, np.ndarray]:
    """Batch `step` of an endless shuffled stream; int32 arrays [batch_size, length]."""
    _require_batch(cache, batch_size)
    idx = batch_indices(cache.num_examples, step, batch_size, seed)
    return {k: np.asarray(a[idx], dtype=np.int32) for k, a in cache.arrays.items()}


def epochs_for(steps: int, batch_size: int, num_examples: int) -> float:
    """Passes over the data that `steps` training batches make."""
    return steps * batch_size / num_examples


def eval_batches(cache: Cache, batch_size: int,
                 max_examples: Optional[int] = None) -> Iterator[Tuple[Dict[str, np.ndarray], int]]:
    """The first max_examples examples in fixed order as (batch, real rows); the last batch is
    padded with all-zero rows, which have loss weight 0."""
    n = cache.num_examples if max_examples is None else min(max_examples, cache.num_examples)
    for start in range(0, n, batch_size):
        real = min(batch_size, n - start)
        batch = {}
        for k, a in cache.arrays.items():
            out = np.zeros((batch_size, a.shape[1]), dtype=np.int32)
            out[:real] = a[start:start + real]
            batch[k] = out
        yield batch, real
