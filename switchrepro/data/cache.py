"""Packed, feature-converted examples as numpy arrays, so training never imports TensorFlow.

A task split is materialised once, in a subprocess (`python -m switchrepro.data.cache`), through
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

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
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
    require_benchmark,
    require_c4,
    require_mc4,
    task_info,
)
from switchrepro.data.corpus import SPLITS, manifest_sha256

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
    from switchrepro.data.corpus import embedded_dir
    from switchrepro.data.multilingual import MANIFEST

    return "embedded:" + hashlib.sha256((embedded_dir() / MANIFEST).read_bytes()).hexdigest()


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
        from switchrepro.data.downstream import file_entry

        return f"embedded:{file_entry(short, split)['sha256']}"
    return f"tfds:{task_info(task).tfds_name}:{benchmark_of(task)}"


def _vocabulary_identity(info) -> str:
    if info.vocabulary == "spm8k":
        from switchrepro.data.vocab import vocab_sha256

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


def _check_request(task: str, split: str, inputs_length: int, targets_length: int,
                   max_examples: Optional[int]) -> None:
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
    _check_request(task, split, inputs_length, targets_length, max_examples)
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
    cmd = [sys.executable, "-m", "switchrepro.data.cache", "--task", task, "--split", split,
           "--inputs_length", str(inputs_length), "--targets_length", str(targets_length), "--out", str(tmp)]
    if max_examples is not None:
        cmd += ["--max_examples", str(max_examples)]
    if tfds_data_dir is not None:
        cmd += ["--tfds_data_dir", str(tfds_data_dir)]
    try:
        code, tail = _run_teeing_stderr(cmd)
        if code != 0:
            raise DataError(f"materialising {task}/{split} at {inputs_length}/{targets_length} failed "
                            f"(exit {code}): {_last_error_line(tail)}")
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / META).is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# TensorFlow's C++ start-up log lines (absl format, e.g. "E0000 00:00:1796184848.365766 3796 cuda_platform.cc:52]
# failed call to cuInit"): on a machine without a GPU they read as failures to a new user, and they say nothing
# about the data. They are kept in the tail used for error messages, but not shown.
_TF_LOG_NOISE = re.compile(rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]|WARNING: All log messages before "
                           rb"absl::InitializeLog\(\) is called)")


def subprocess_env() -> Dict[str, str]:
    """Environment of the TensorFlow subprocesses (materialisation, scoring)."""
    # CPU only: the data pipeline must not take accelerator memory from the training process.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    repo = str(Path(__file__).resolve().parents[2])  # works without an installed package too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    return env


def _run_teeing_stderr(cmd) -> Tuple[int, str]:
    """Run cmd, passing its stderr (the progress bar) through; return (exit code, stderr tail)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=subprocess_env())
    tail, pending = b"", b""

    def show(piece: bytes) -> None:
        if _TF_LOG_NOISE.match(piece):
            return
        try:
            sys.stderr.write(piece.decode("utf-8", errors="replace"))
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or replaced: keep draining the pipe
            pass

    while chunk := os.read(proc.stderr.fileno(), 65536):
        tail = (tail + chunk)[-65536:]
        *complete, pending = re.split(rb"(?<=[\r\n])", pending + chunk)  # whole lines (and \r progress updates)
        for piece in complete:
            show(piece)
    show(pending)
    proc.stderr.close()
    return proc.wait(), tail.decode("utf-8", errors="replace")


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
    return lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------- materialisation (TF)


def _dtype_for(max_value: int):
    return np.int16 if max_value <= np.iinfo(np.int16).max else np.int32


def materialize(task: str, split: str, inputs_length: int, targets_length: int,
                out_dir: Path, max_examples: Optional[int] = None,
                tfds_data_dir: Optional[str] = None, progress: bool = True) -> dict:
    """Run the seqio pipeline in this process and write FEATURES .npy files + meta.json to out_dir."""
    import seqio
    from tqdm import tqdm

    from switchrepro.data import tasks

    _check_request(task, split, inputs_length, targets_length, max_examples)
    t0 = time.time()
    lengths = {"inputs": int(inputs_length), "targets": int(targets_length)}
    info = task_info(task)
    raw_tokens, span_targets = (span_corruption_lengths(inputs_length, task) if info.kind == "span_corruption"
                                else (None, None))
    packed = is_packed(task, split)
    seq_task = tasks.get_task(task, tfds_data_dir)
    texts, truncated, languages = None, None, None
    features = DECODER_FEATURES if info.kind == "lm" else FEATURES
    if info.kind == "lm":
        ds = seqio.get_dataset(seq_task, {"targets": int(targets_length)}, seqio.DecoderFeatureConverter(pack=True),
                               dataset_split=split, shuffle=False, num_epochs=1, seed=SEED, use_cached=False,
                               verbose=False)
    elif packed:
        ds = seqio.get_dataset(seq_task, lengths, seqio.EncDecFeatureConverter(pack=True),
                               dataset_split=split, shuffle=False, num_epochs=1, seed=SEED,
                               use_cached=False, verbose=False)
    elif info.multilingual:
        # unpacked, one example per row; a second pass over the same examples (same seed: same noise) gives
        # each row's language id, which the feature converter drops
        one_pass = lambda: seq_task.get_dataset(lengths, split=split, use_cached=False, shuffle=False,  # noqa: E731
                                                seed=SEED, num_epochs=1)
        ds = seqio.EncDecFeatureConverter(pack=False)(one_pass(), task_feature_lengths=lengths)
        again = one_pass()
        if max_examples is not None:
            again = again.take(max_examples)
        languages = [(int(ex["lang"]), ex["targets"]) for ex in again.as_numpy_iterator()]
    else:
        # seqio.get_dataset's two steps, unpacked; a second, untrimmed pass over the same examples (no shuffle:
        # same order) gives the original texts and how many examples the trimming shortens.
        ds = seqio.EncDecFeatureConverter(pack=False)(
            seq_task.get_dataset(lengths, split=split, use_cached=False, shuffle=False, seed=SEED, num_epochs=1),
            task_feature_lengths=lengths)
        untrimmed = seq_task.get_dataset(None, split=split, use_cached=False, shuffle=False, seed=SEED,
                                         num_epochs=1, trim_output_features=False)
        if max_examples is not None:
            untrimmed = untrimmed.take(max_examples)
        texts, truncated = _texts_and_truncation(untrimmed, lengths)
    if max_examples is not None:
        ds = ds.take(max_examples)

    rows: Dict[str, list] = {k: [] for k in features}
    total = max_examples or (len(texts) if texts is not None else len(languages) if languages is not None else
                             _estimate_examples(split, raw_tokens, info.vocabulary, task))
    with tqdm(total=total, unit="ex", desc=f"{task}/{split} {inputs_length}/{targets_length}",
              disable=not progress, mininterval=1.0) as bar:
        for ex in ds.as_numpy_iterator():
            if not packed:
                ex = _single_segment(ex)
            for k in features:
                rows[k].append(ex[k])
            bar.update()
        bar.total = bar.n
        bar.refresh()
    n = len(rows[features[0]])
    if texts is not None and len(texts) != n:
        raise DataError(f"{task}/{split}: {n} unpacked rows but {len(texts)} texts; the two passes over the "
                        "task disagree (is its source deterministic?)")
    if languages is not None:
        _check_language_pass(task, split, rows["decoder_target_tokens"], languages)
    if n == 0:
        raise DataError(f"feature lengths the data cannot fill: {task}/{split} gave 0 packed examples "
                        f"at inputs_length={inputs_length}, targets_length={targets_length}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtypes = {}
    for k in features:
        arr = np.stack(rows[k])
        small = np.int8 if k == "decoder_loss_weights" else _dtype_for(int(arr.max(initial=0)))
        if not np.array_equal(arr.astype(small), arr):  # never store a lossy dtype
            small = arr.dtype
        np.save(out_dir / f"{k}.npy", arr.astype(small), allow_pickle=False)
        dtypes[k] = np.dtype(small).name
        rows[k] = arr
    meta = {
        "format": CACHE_FORMAT, "task": task, "split": split,
        "inputs_length": int(inputs_length), "targets_length": int(targets_length),
        "max_examples": max_examples, "seed": SEED,
        "num_examples": n,
        # One segment per span-corruption example; packing puts several in one row when they fit.
        "num_segments": int(rows[f"{features[0].split('_')[0]}_segment_ids"].max(axis=1).sum()),
        "tokens": {"inputs": int((rows["encoder_input_tokens"] != 0).sum()) if "encoder_input_tokens" in rows else 0,
                   "targets": int((rows["decoder_target_tokens"] != 0).sum())},
        "vocabulary": info.vocabulary, "vocab_size": info.vocab_size,
        **({"span_corruption": {"noise_density": info.noise_density,
                                "mean_noise_span_length": info.mean_noise_span_length,
                                "raw_tokens_per_example": raw_tokens, "targets_per_example": span_targets}}
           if info.kind == "span_corruption" else {}),
        "dtypes": dtypes,
        "features": list(features),
        "key": cache_key(task, split, inputs_length, targets_length, max_examples),
        "seconds": round(time.time() - t0, 2),
    }
    if languages is not None:
        ids = np.array([lang for lang, _ in languages], dtype=np.int16)
        np.save(out_dir / LANGUAGES, ids, allow_pickle=False)
        meta["languages"] = list(_language_names(task, tfds_data_dir))
        meta["rows_per_language"] = np.bincount(ids, minlength=len(meta["languages"])).tolist()
    if info.kind == "text2text":
        meta["text2text"] = {"packed": packed, "metrics": list(info.metrics)}
        if texts is not None:
            # seqio keeps the first length - 1 tokens and the EOS of a longer example
            meta["text2text"].update(examples=len(texts), truncated=truncated, texts=TEXTS)
            with (out_dir / TEXTS).open("w", encoding="utf-8") as f:
                for t in texts:
                    f.write(json.dumps(t, ensure_ascii=False) + "\n")
    (out_dir / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _check_language_pass(task: str, split: str, targets, languages) -> None:
    """The language pass must see the converted rows' examples, in order: same count, same target tokens."""
    if len(languages) != len(targets):
        raise DataError(f"{task}/{split}: {len(targets)} unpacked rows but {len(languages)} language ids; the two "
                        "passes over the task disagree (is its source deterministic?)")
    for i, (row, (_, tokens)) in enumerate(zip(targets, languages, strict=True)):
        if not np.array_equal(row[:len(tokens)], tokens):
            raise DataError(f"{task}/{split}: row {i}'s targets differ between the two passes over the task, so "
                            "its language id cannot be trusted (is its source deterministic?)")


def _language_names(task: str, tfds_data_dir: Optional[str]) -> Tuple[str, ...]:
    """Language id -> code of a multilingual task."""
    if task == MC4_TASK:
        from switchrepro.data.tasks import mc4_languages

        return mc4_languages(str(require_mc4(tfds_data_dir)))
    from switchrepro.data.multilingual import language_codes

    return language_codes()


def _texts_and_truncation(untrimmed, lengths: Dict[str, int]) -> Tuple[list, Dict[str, int]]:
    """Original texts ({"inputs", "targets"}, plus "answers" where a task has several) of an untrimmed
    task dataset, and how many examples are longer (EOS included) than each feature length."""
    texts, truncated = [], {"inputs": 0, "targets": 0}
    for ex in untrimmed.as_numpy_iterator():
        t = {k: ex[f"{k}_pretokenized"].decode("utf-8") for k in ("inputs", "targets")}
        if "answers" in ex:
            t["answers"] = [a.decode("utf-8") for a in ex["answers"]]
        texts.append(t)
        for k in truncated:
            truncated[k] += int(len(ex[k]) > lengths[k])
    return texts, truncated


def _single_segment(ex: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """An unpacked example with the packed layout's segment ids and positions (one segment: 1 on tokens, 0 on
    padding; the model's defaults for rows without them), so every cache has the same eight features."""
    ex = dict(ex)
    for prefix, tokens in (("encoder", "encoder_input_tokens"), ("decoder", "decoder_target_tokens")):
        seg = (np.asarray(ex[tokens]) > 0).astype(np.int32)
        ex[f"{prefix}_segment_ids"] = seg
        ex[f"{prefix}_positions"] = (np.arange(seg.shape[0], dtype=np.int32) * seg).astype(np.int32)
    return ex


def _estimate_examples(split: str, raw_tokens_per_example: int, vocabulary: str,
                       task: Optional[str] = None) -> Optional[int]:
    if raw_tokens_per_example is None or task is not None and (task_info(task).kind == "text2text"
                                                               or task_info(task).multilingual):
        return None  # packed rows of a fine-tuning task, multilingual rows: unknown until made
    try:
        from switchrepro.data.corpus import load_manifest
        unit = "chars" if vocabulary == "bytes" else "tokens"  # chars: bytes of mostly-ASCII text
        return load_manifest()["splits"][split][unit] // raw_tokens_per_example + 1
    except (DataError, KeyError):
        return None


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


# --------------------------------------------------------------------------- subprocess entry point


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Materialise a switchrepro task split into a numpy cache.")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--inputs_length", type=int, required=True)
    p.add_argument("--targets_length", type=int, required=True)
    p.add_argument("--max_examples", type=int, default=None)
    p.add_argument("--tfds_data_dir", default=None)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    try:
        meta = materialize(args.task, args.split, args.inputs_length, args.targets_length, args.out,
                           args.max_examples, args.tfds_data_dir)
    except Exception as e:  # the parent reports our last stderr line
        import traceback
        traceback.print_exc()
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"{meta['num_examples']} examples, {meta['tokens']['inputs']} input and "
          f"{meta['tokens']['targets']} target tokens in {meta['seconds']}s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
