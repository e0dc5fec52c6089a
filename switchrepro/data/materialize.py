"""Materialise a task split into the numpy cache that cache.py loads: the one run-time module, with tasks.py,
that imports TensorFlow (seqio), so it runs only in the subprocess `cache.ensure_cache` starts:

    python -m switchrepro.data.materialize --task T --split S --inputs_length I --targets_length L --out DIR

`materialize` runs seqio.get_dataset(..., EncDecFeatureConverter(pack=True), shuffle=False, fixed seed) and
writes one .npy per model feature plus meta.json; two materialisations give byte-identical arrays. What a
cache holds and how its rows are laid out (packed training rows; unpacked text-to-text and multilingual
validation rows with texts.jsonl / languages.npy) is described in cache.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import seqio
from tqdm import tqdm

from switchrepro.data import MC4_TASK, TASKS, DataError, multilingual, require_mc4, task_info, tasks
from switchrepro.data.cache import (
    CACHE_FORMAT,
    DECODER_FEATURES,
    FEATURES,
    LANGUAGES,
    META,
    SEED,
    TEXTS,
    cache_key,
    check_request,
    is_packed,
    span_corruption_lengths,
)
from switchrepro.data.corpus import SPLITS, load_manifest


def _dtype_for(max_value: int):
    return np.int16 if max_value <= np.iinfo(np.int16).max else np.int32


def materialize(task: str, split: str, inputs_length: int, targets_length: int,
                out_dir: Path, max_examples: Optional[int] = None,
                tfds_data_dir: Optional[str] = None, progress: bool = True) -> dict:
    """Run the seqio pipeline in this process and write FEATURES .npy files + meta.json to out_dir."""
    check_request(task, split, inputs_length, targets_length, max_examples)
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
        return tasks.mc4_languages(str(require_mc4(tfds_data_dir)))
    return multilingual.language_codes()


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
        unit = "chars" if vocabulary == "bytes" else "tokens"  # chars: bytes of mostly-ASCII text
        return load_manifest()["splits"][split][unit] // raw_tokens_per_example + 1
    except (DataError, KeyError):
        return None




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
        traceback.print_exc()
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"{meta['num_examples']} examples, {meta['tokens']['inputs']} input and "
          f"{meta['tokens']['targets']} target tokens in {meta['seconds']}s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
