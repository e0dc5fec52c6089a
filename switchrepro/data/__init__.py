"""Data stage: an embedded English corpus, its vocabulary, seqio tasks and a TF-free cache.

Layout (run time, top to bottom):
  corpus.py   TF-free reading of the embedded shards and manifest
  vocab.py    SentencePiece model with T5 id conventions (TF-free loading; seqio's view for the tasks)
  verify.py   re-hash the committed artefacts (`python -m switchrepro.data.verify`)
  downstream.py  offline fine-tuning tasks (sentiment, spam, cloze_qa, wordnet_qa): reading the embedded
              files under embedded/downstream/ and T5's metrics (scored in a subprocess)
  multilingual.py  the embedded UDHR corpus: records, language codes, mT5's language sampling
  tfprocess.py  running the TensorFlow subprocesses (materialisation, scoring) from a TF-free process
  tasks.py    seqio tasks (imports TF; with materialize.py, the only modules that do)
  materialize.py  a task split -> numpy arrays, run as a subprocess by cache.ensure_cache
  cache.py    cache keys, the materialising subprocess's start, and the TF-free loader and batches

Build time: build/ (sources, corpus shards, vocabulary training, pins, the downstream and multilingual
builders; `switchrepro data build`). Nothing at run time imports it.

This package's __init__ imports nothing heavy: the training path must never pull in
TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from switchrepro.config.tasks import (
    BENCHMARK_TASKS,
    BENCHMARKS,
    BYTE_EXTRA_IDS,
    BYTE_LM_TASK,
    BYTE_SPAN20_CORRUPTION_TASK,
    BYTE_SPAN_CORRUPTION_TASK,
    C4_LM_TASK,
    C4_TASK,
    C4_TFDS_NAME,
    DOWNSTREAM_METRICS,
    DOWNSTREAM_TASKS,
    MC4_TASK,
    MC4_TFDS_NAME,
    SPAN_CORRUPTION_TASK,
    TASK_INFO,
    TASKS,
    UDHR_TASK,
    Benchmark,
    TaskInfo,
)

# The task catalogue (config.tasks: plain data, checked against by ExperimentConfig.validate) is
# re-exported here beside the readers that serve it.
__all__ = [
    "BENCHMARK_TASKS", "BENCHMARKS", "BYTE_EXTRA_IDS", "BYTE_LM_TASK", "BYTE_SPAN20_CORRUPTION_TASK",
    "BYTE_SPAN_CORRUPTION_TASK", "C4_LM_TASK", "C4_TASK", "C4_TFDS_NAME", "DOWNSTREAM_METRICS",
    "DOWNSTREAM_TASKS", "MC4_TASK", "MC4_TFDS_NAME", "SPAN_CORRUPTION_TASK", "TASK_INFO", "TASKS", "UDHR_TASK",
    "Benchmark", "TaskInfo", "EMBEDDED_DIR", "DataError", "task_info", "downstream_task_name", "benchmark_of",
    "cache_root", "require_c4", "require_mc4", "tfds_dir_of", "holds_tfds", "require_benchmark",
]

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"


class DataError(ValueError):
    """Data that is missing, corrupt or cannot serve the request; the message says what to do."""


def task_info(task: str) -> TaskInfo:
    if task not in TASK_INFO:
        raise DataError(f"unknown task {task!r}; choose one of {TASKS}")
    return TASK_INFO[task]


def downstream_task_name(task: str, vocabulary: str) -> str:
    """The seqio task of a fine-tuning task in a vocabulary: ("sentiment", "bytes") -> "switchrepro_byte_sentiment",
    ("sentiment", "spm8k") -> "switchrepro_sentiment"; TFDS benchmarks likewise ("glue_sst2", ...)."""
    if task not in DOWNSTREAM_TASKS + BENCHMARK_TASKS:
        raise DataError(f"unknown downstream task {task!r}; choose one of {', '.join(DOWNSTREAM_TASKS)} (offline) "
                        f"or a TFDS benchmark: {', '.join(BENCHMARK_TASKS)}")
    if vocabulary not in ("spm8k", "bytes"):
        raise DataError(f"unknown vocabulary {vocabulary!r}; choose 'spm8k' or 'bytes'")
    return f"switchrepro_{task}" if vocabulary == "spm8k" else f"switchrepro_byte_{task}"


def benchmark_of(task: str) -> Optional[str]:
    """The BENCHMARKS name behind a task name (short or switchrepro_[byte_] form); None for other tasks."""
    for prefix in ("switchrepro_byte_", "switchrepro_", ""):
        if task.startswith(prefix) and task[len(prefix):] in BENCHMARKS:
            return task[len(prefix):]
    return None


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """DataConfig.cache_dir, else $SWITCHREPRO_CACHE, else ~/.cache/switchrepro."""
    root = cache_dir or os.environ.get("SWITCHREPRO_CACHE") or "~/.cache/switchrepro"
    return Path(root).expanduser()


def require_c4(tfds_data_dir: Optional[str], task: str = C4_TASK) -> Path:
    """Return the TFDS data dir if it holds c4/en/3.1.0, else raise DataError saying what to prepare."""
    how = (
        f"The task {task!r} reads TFDS {C4_TFDS_NAME!r} and needs a prepared copy: pass "
        "DataConfig.tfds_data_dir (or --tfds_data_dir) pointing at a directory that contains "
        "c4/en/3.1.0/ (dataset_info.json and the tfrecord shards), e.g. one prepared with "
        "`tfds build c4/en:3.1.0 --data_dir DIR` on a machine that can reach the raw Common Crawl "
        f"files. Use task {SPAN_CORRUPTION_TASK!r} or {BYTE_SPAN_CORRUPTION_TASK!r} for the embedded offline "
        "corpus."
    )
    return _require_prepared(tfds_data_dir, C4_TFDS_NAME, how)


def require_mc4(tfds_data_dir: Optional[str]) -> Path:
    """Return the TFDS data dir if it holds c4/multilingual/3.1.0, else raise DataError (one line) saying what
    to prepare."""
    how = (f"The task {MC4_TASK!r} reads TFDS {MC4_TFDS_NAME!r} and needs a prepared copy: pass "
           "DataConfig.tfds_data_dir (or --tfds-data-dir) pointing at a directory that contains "
           "c4/multilingual/3.1.0/ (dataset_info.json and the tfrecord shards), e.g. one prepared with "
           f"`tfds build {MC4_TFDS_NAME} --data_dir DIR` on a machine that can reach the raw files. Use task "
           f"{UDHR_TASK!r} for the embedded offline multilingual corpus.")
    return _require_prepared(tfds_data_dir, MC4_TFDS_NAME, how)


def tfds_dir_of(tfds_name: str) -> Path:
    """Relative directory TFDS prepares a dataset in: "glue/sst2:2.0.0" -> glue/sst2/2.0.0."""
    name, version = tfds_name.split(":")
    return Path(*name.split("/"), version)


def holds_tfds(tfds_data_dir: Optional[str], tfds_name: str) -> bool:
    """Whether `tfds_data_dir` holds a prepared copy of `tfds_name` (its dataset_info.json)."""
    return bool(tfds_data_dir) and (Path(tfds_data_dir).expanduser() / tfds_dir_of(tfds_name)
                                    / "dataset_info.json").is_file()


def _require_prepared(tfds_data_dir: Optional[str], tfds_name: str, how: str) -> Path:
    """The TFDS data dir if it holds `tfds_name`, else DataError: what is missing, then `how` to prepare it."""
    if not tfds_data_dir:
        raise DataError(f"no tfds_data_dir given. {how}")
    if not holds_tfds(tfds_data_dir, tfds_name):
        version_dir = Path(tfds_data_dir).expanduser() / tfds_dir_of(tfds_name)
        raise DataError(f"{version_dir} does not exist or has no dataset_info.json. {how}")
    return Path(tfds_data_dir).expanduser()


def require_benchmark(task: str, tfds_data_dir: Optional[str]) -> Path:
    """Return the TFDS data dir if it holds the benchmark behind `task`, else raise DataError (one line)
    saying what to prepare."""
    name = benchmark_of(task)
    if name is None:
        raise DataError(f"{task!r} is not a TFDS benchmark; choose one of {', '.join(BENCHMARK_TASKS)}")
    bench = BENCHMARKS[name]
    rel = tfds_dir_of(bench.tfds_name)
    how = (
        f"The benchmark {name!r} reads TFDS {bench.tfds_name!r} and needs a prepared copy: pass "
        "DataConfig.tfds_data_dir (or --tfds-data-dir) pointing at a directory that contains "
        f"{rel.as_posix()}/ (dataset_info.json and the tfrecord shards), e.g. one prepared with "
        f"`tfds build {bench.tfds_name} --data_dir DIR` on a machine that can reach the raw files"
        + (f" ({bench.prepare})" if bench.prepare else "")
        + f". Use one of the offline tasks {', '.join(DOWNSTREAM_TASKS)} to fine-tune without downloads."
    )
    return _require_prepared(tfds_data_dir, bench.tfds_name, how)
