"""TF-free access to the embedded corpus: manifest, shard paths and documents."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Iterator, List, Optional

from switchrepro.data import EMBEDDED_DIR, DataError

SPLITS = ("train", "validation")
MANIFEST = "manifest.json"


def embedded_dir(path: Optional[Path] = None) -> Path:
    return Path(path) if path is not None else EMBEDDED_DIR


def load_manifest(root: Optional[Path] = None) -> dict:
    path = embedded_dir(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} is missing: run `switchrepro data build` to create the embedded corpus")
    return json.loads(path.read_text())


def manifest_sha256(root: Optional[Path] = None) -> str:
    """Identity of the whole embedded data set (the manifest pins every shard and the vocab)."""
    path = embedded_dir(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} is missing: run `switchrepro data build` to create the embedded corpus")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (verify re-hashes the committed files with it; the build
    checks its pinned downloads)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shard_paths(split: str, root: Optional[Path] = None) -> List[Path]:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; the embedded corpus has {SPLITS}")
    root = embedded_dir(root)
    return [root / s["path"] for s in load_manifest(root)["shards"] if s["split"] == split]


def iter_shard(path: Path) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def iter_documents(split: str, root: Optional[Path] = None) -> Iterator[dict]:
    """Documents {"id", "source", "text"} of a split, in shard order."""
    for path in shard_paths(split, root):
        yield from iter_shard(path)
