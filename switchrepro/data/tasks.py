"""seqio tasks: T5 span corruption on the embedded corpus (SentencePiece or bytes), or on TFDS C4.

This module imports seqio, t5 and TensorFlow; the training process reaches it only
through cache.py's materialisation subprocess.

    register_tasks(tfds_data_dir=None)        idempotent; C4 is registered only with a valid dir
    get_task(name, tfds_data_dir=None)        registered task, or DataError saying what is missing
"""

from __future__ import annotations

import functools
from typing import Optional

import seqio
import t5.data.preprocessors as t5_pre
import tensorflow as tf

from switchrepro.data import (
    BYTE_EXTRA_IDS,
    BYTE_SPAN20_CORRUPTION_TASK,
    BYTE_SPAN_CORRUPTION_TASK,
    C4_TASK,
    C4_TFDS_NAME,
    SPAN_CORRUPTION_TASK,
    TASKS,
    DataError,
    require_c4,
    task_info,
)
from switchrepro.data.corpus import SPLITS, iter_shard, load_manifest, shard_paths
from switchrepro.data.vocab import get_vocabulary


def vocabulary_for(task: str) -> seqio.Vocabulary:
    """The task's seqio vocabulary; its vocab_size is TASK_INFO[task].vocab_size (checked)."""
    info = task_info(task)
    vocab = get_vocabulary() if info.vocabulary == "spm8k" else seqio.ByteVocabulary(extra_ids=BYTE_EXTRA_IDS)
    if vocab.vocab_size != info.vocab_size:
        raise DataError(f"{task}: the {info.vocabulary} vocabulary has {vocab.vocab_size} ids, TASK_INFO says "
                        f"{info.vocab_size}; fix switchrepro/data/__init__.py")
    return vocab


def output_features(task: str = SPAN_CORRUPTION_TASK) -> dict:
    vocab = vocabulary_for(task)
    return {
        "inputs": seqio.Feature(vocabulary=vocab, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
    }


def _span_corruption_preprocessors(task: str) -> list:
    """T5's c4_v220_span_corruption chain: text -> targets, tokenize, span corruption, EOS."""
    info = task_info(task)
    return [
        functools.partial(t5_pre.rekey, key_map={"inputs": None, "targets": "text"}),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        functools.partial(t5_pre.span_corruption, noise_density=info.noise_density,
                          mean_noise_span_length=info.mean_noise_span_length),
        seqio.preprocessors.append_eos_after_trim,
    ]


def _embedded_dataset(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    """Documents of the embedded gz shards as {"text": string}."""
    paths = [str(p) for p in shard_paths(split)]
    if shuffle_files:
        paths = [paths[i] for i in tf.random.shuffle(tf.range(len(paths)), seed=seed).numpy()]

    def gen():
        for path in paths:
            for doc in iter_shard(path):
                yield {"text": doc["text"]}

    return tf.data.Dataset.from_generator(gen, output_signature={"text": tf.TensorSpec((), tf.string)})


def _add(task: seqio.Task) -> None:
    if task.name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(task.name)
    seqio.TaskRegistry.add_provider(task.name, task)


def register_tasks(tfds_data_dir: Optional[str] = None) -> None:
    """(Re-)register the tasks. C4 needs a tfds_data_dir holding c4/en/3.1.0 (DataError otherwise)."""
    manifest = load_manifest()
    for name in (SPAN_CORRUPTION_TASK, BYTE_SPAN_CORRUPTION_TASK, BYTE_SPAN20_CORRUPTION_TASK):
        _add(seqio.Task(
            name,
            source=seqio.FunctionDataSource(
                _embedded_dataset, splits=SPLITS,
                num_input_examples={k: v["docs"] for k, v in manifest["splits"].items()}),
            preprocessors=_span_corruption_preprocessors(name),
            output_features=output_features(name),
            metric_fns=[],
        ))
    if tfds_data_dir is not None:
        _add(seqio.Task(
            C4_TASK,
            source=seqio.TfdsDataSource(C4_TFDS_NAME, tfds_data_dir=str(require_c4(tfds_data_dir))),
            preprocessors=_span_corruption_preprocessors(C4_TASK),
            output_features=output_features(C4_TASK),
            metric_fns=[],
        ))


def get_task(name: str, tfds_data_dir: Optional[str] = None) -> seqio.Task:
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; choose one of {TASKS}")
    if name == C4_TASK:
        require_c4(tfds_data_dir)  # never fall back to other data
    register_tasks(tfds_data_dir)
    return seqio.get_mixture_or_task(name)
