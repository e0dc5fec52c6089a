"""Data stage: an embedded English corpus, its vocabulary, seqio tasks and a TF-free cache.

Layout (top to bottom):
  sources.py  pinned npm tarballs and one text iterator per source
  build.py    raw tarballs -> cleaned, deduplicated, shuffled gz shards + manifest.json
  vocab.py    SentencePiece model with T5 id conventions (trained by build.py)
  corpus.py   TF-free reading of the embedded shards and manifest
  verify.py   re-hash the committed artefacts (`python -m switchrepro.data.verify`)
  tasks.py    seqio tasks (the only module, with cache materialisation, that imports TF)
  cache.py    packed numpy arrays materialised once in a subprocess; TF-free loader

This package's __init__ imports nothing heavy: the training path must never pull in
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"

SPAN_CORRUPTION_TASK = "switchrepro_span_corruption"
BYTE_SPAN_CORRUPTION_TASK = "switchrepro_byte_span_corruption"
BYTE_SPAN20_CORRUPTION_TASK = "switchrepro_byte_span20_corruption"
C4_TASK = "c4_span_corruption"
C4_TFDS_NAME = "c4/en:3.1.0"
BYTE_EXTRA_IDS = 125  # 3 specials + 256 bytes + 125 sentinels = 384 ids (a multiple of 128)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a task's examples look like, known without importing TensorFlow.

    vocabulary: "spm8k" (the embedded SentencePiece model, 8192 ids) or "bytes" (seqio.ByteVocabulary,
    ByT5's ids: pad 0, eos 1, unk 2, byte b at b + 3, sentinels counting down from vocab_size - 1).
    """

    vocabulary: str
    vocab_size: int
    noise_density: float
    mean_noise_span_length: float


TASK_INFO = {
    # T5's span-corruption defaults.
    SPAN_CORRUPTION_TASK: TaskInfo("spm8k", 8192, 0.15, 3.0),
    # ByT5-style: bytes carry ~1/4 of a subword's information, so spans are longer (ByT5 uses 20; 8 leaves
    # ~3 spans in a 128-byte input).
    BYTE_SPAN_CORRUPTION_TASK: TaskInfo("bytes", 3 + 256 + BYTE_EXTRA_IDS, 0.15, 8.0),
    # ByT5's own setting: one ~20-byte span per 128-byte input, so filling it is mostly language knowledge.
    BYTE_SPAN20_CORRUPTION_TASK: TaskInfo("bytes", 3 + 256 + BYTE_EXTRA_IDS, 0.15, 20.0),
    C4_TASK: TaskInfo("spm8k", 8192, 0.15, 3.0),
}
TASKS = tuple(TASK_INFO)


class DataError(ValueError):
    """Data that is missing, corrupt or cannot serve the request; the message says what to do."""


def task_info(task: str) -> TaskInfo:
    if task not in TASK_INFO:
        raise DataError(f"unknown task {task!r}; choose one of {TASKS}")
    return TASK_INFO[task]


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """DataConfig.cache_dir, else $SWITCHREPRO_CACHE, else ~/.cache/switchrepro."""
    root = cache_dir or os.environ.get("SWITCHREPRO_CACHE") or "~/.cache/switchrepro"
    return Path(root).expanduser()


def require_c4(tfds_data_dir: Optional[str]) -> Path:
    """Return the TFDS data dir if it holds c4/en/3.1.0, else raise DataError saying what to prepare."""
    how = (
        f"The task {C4_TASK!r} reads TFDS {C4_TFDS_NAME!r} and needs a prepared copy: pass "
        "DataConfig.tfds_data_dir (or --tfds_data_dir) pointing at a directory that contains "
        "c4/en/3.1.0/ (dataset_info.json and the tfrecord shards), e.g. one prepared with "
        "`tfds build c4/en:3.1.0 --data_dir DIR` on a machine that can reach the raw Common Crawl "
        f"files. Use task {SPAN_CORRUPTION_TASK!r} or {BYTE_SPAN_CORRUPTION_TASK!r} for the embedded offline "
        "corpus."
    )
    if not tfds_data_dir:
        raise DataError(f"no tfds_data_dir given. {how}")
    version_dir = Path(tfds_data_dir).expanduser() / "c4" / "en" / "3.1.0"
    if not (version_dir / "dataset_info.json").is_file():
        raise DataError(f"{version_dir} does not exist or has no dataset_info.json. {how}")
    return Path(tfds_data_dir).expanduser()
