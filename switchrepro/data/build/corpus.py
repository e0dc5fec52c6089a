"""Build the embedded corpus: raw tarballs -> clean, deduplicated, shuffled gz shards + manifest.

Every step is a pure function of the pinned tarballs and the settings below, so a rebuild
gives byte-identical shards (gzip mtime 0, no file name in the header) and manifest.

    build_corpus(raw_dir, out_dir)   shards + manifest.json from already fetched tarballs
    gzip_bytes(jsonl(records), level)   the committed files' encoding (the other builders use it too)

build_all (this package's __init__) runs it with the rest of `switchrepro data build`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import List, Optional

from switchrepro.data import DataError
from switchrepro.data.build.sources import SOURCES
from switchrepro.data.corpus import MANIFEST, SPLITS, embedded_dir

SETTINGS = {
    "min_doc_chars": 160,  # after cleaning; shorter e-mails are mostly greetings and one-liners
    "min_dedup_paragraph_chars": 40,  # repeated paragraphs this long (list footers, spam blurbs) kept once
    "validation_fraction": 0.03,  # by hash of "source/doc_id", so membership never depends on other docs
    "shuffle_salt": "switchrepro-corpus-v1",
    "shard_chars": 4_000_000,
    "gzip_level": 9,
    "max_compressed_mb": 20.0,
}

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff\ufffd]")


def normalize(text: str) -> str:
    """One line per paragraph: blank lines split paragraphs; other whitespace runs become one space."""
    text = _CONTROL.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    paragraphs = (" ".join(block.split()) for block in re.split(r"\n[ \t\f\v]*\n", text))
    return "\n".join(p for p in paragraphs if p)


def _hash_unit(key: str) -> float:
    """Deterministic value in [0, 1) for a string."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_of(doc_uid: str) -> str:
    return "validation" if _hash_unit(f"split:{doc_uid}") < SETTINGS["validation_fraction"] else "train"


def gzip_bytes(data: bytes, level: int) -> bytes:
    """gzip with mtime 0 and no file name, so equal input gives equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=level, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def jsonl(docs: List[dict]) -> bytes:
    """One JSON object per line, UTF-8, non-ASCII kept as is (the committed files' format)."""
    return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")


def collect_documents(raw_dir: Path) -> tuple:
    """Read, clean and deduplicate every source in a fixed order; return (docs, per-source stats)."""
    seen_docs, seen_paragraphs = set(), set()
    docs, stats = [], {}
    for src in SOURCES:
        st = stats[src.name] = {"docs_read": 0, "dropped_short": 0, "dropped_duplicate": 0,
                                "paragraphs_deduplicated": 0}
        for doc_id, raw in src.docs(raw_dir):
            st["docs_read"] += 1
            kept = []
            for p in normalize(raw).split("\n"):
                if len(p) >= SETTINGS["min_dedup_paragraph_chars"]:
                    if p in seen_paragraphs:
                        st["paragraphs_deduplicated"] += 1
                        continue
                    seen_paragraphs.add(p)
                kept.append(p)
            text = "\n".join(kept)
            if len(text) < SETTINGS["min_doc_chars"]:
                st["dropped_short"] += 1
                continue
            digest = hashlib.sha256(text.encode("utf-8")).digest()
            if digest in seen_docs:
                st["dropped_duplicate"] += 1
                continue
            seen_docs.add(digest)
            docs.append({"id": f"{src.name}/{doc_id}", "source": src.name, "text": text})
    return docs, stats


def _cut_shards(docs: List[dict], shard_chars: int) -> List[List[dict]]:
    """Consecutive runs of about equal character count."""
    total = sum(len(d["text"]) for d in docs)
    n = max(1, math.ceil(total / shard_chars))
    shards, current, done = [], [], 0
    for d in docs:
        current.append(d)
        done += len(d["text"])
        if done >= total * (len(shards) + 1) / n and len(shards) < n - 1:
            shards.append(current)
            current = []
    shards.append(current)
    return [s for s in shards if s]


def build_corpus(raw_dir: Path, out_dir: Optional[Path] = None) -> dict:
    """Write corpus/{split}-NNNNN-of-NNNNN.jsonl.gz and manifest.json under out_dir; return the manifest.

    The manifest's "vocab" entry is filled in by build_all once the vocabulary is trained.
    """
    raw_dir, out_dir = Path(raw_dir), embedded_dir(out_dir)
    level = SETTINGS["gzip_level"]
    docs, stats = collect_documents(raw_dir)
    if not docs:
        raise DataError(f"no documents read from {raw_dir}; are the tarballs there?")
    # Shuffle by a salted hash of the id: stable, and mixes the sources within every shard.
    docs.sort(key=lambda d: hashlib.sha256(f"{SETTINGS['shuffle_salt']}:{d['id']}".encode()).digest())

    corpus_dir = out_dir / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for old in corpus_dir.glob("*.jsonl.gz"):
        old.unlink()
    shards_meta, splits = [], {}
    for split in SPLITS:
        split_docs = [d for d in docs if split_of(d["id"]) == split]
        splits[split] = {"docs": len(split_docs), "chars": sum(len(d["text"]) for d in split_docs)}
        shards = _cut_shards(split_docs, SETTINGS["shard_chars"])
        for i, shard in enumerate(shards):
            name = f"corpus/{split}-{i:05d}-of-{len(shards):05d}.jsonl.gz"
            data = gzip_bytes(jsonl(shard), level)
            (out_dir / name).write_bytes(data)
            shards_meta.append({"path": name, "split": split, "docs": len(shard),
                                "chars": sum(len(d["text"]) for d in shard),
                                "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})

    sources = []
    for src in SOURCES:
        mine = [d for d in docs if d["source"] == src.name]
        sources.append({
            "name": src.name, "package": src.package, "version": src.version,
            "tarball": src.tarball, "sha256": src.sha256, "licence": src.licence,
            "description": src.description, **stats[src.name],
            "docs": len(mine), "chars": sum(len(d["text"]) for d in mine),
            "bytes": sum(len(d["text"].encode("utf-8")) for d in mine),
            # Shards mix sources, so this is the source alone compressed the same way.
            "gzip_bytes_alone": len(gzip_bytes(jsonl(mine), level)),
            "validation_docs": sum(split_of(d["id"]) == "validation" for d in mine),
        })
    manifest = {
        "format": 1,
        "description": "switchrepro embedded English corpus (C4 stand-in for span-corruption pretraining)",
        "sources": sources,
        "splits": splits,
        "shards": shards_meta,
        "vocab": None,
        "build": dict(SETTINGS, python=sys.version.split()[0]),
    }
    total_mb = sum(s["size"] for s in shards_meta) / 1e6
    if total_mb > SETTINGS["max_compressed_mb"]:
        raise DataError(f"corpus is {total_mb:.1f} MB compressed, over the {SETTINGS['max_compressed_mb']} MB "
                        "budget; trim SpamAssassin (raise min_doc_chars or sample it) rather than SOTU/Brown")
    write_manifest(manifest, out_dir)
    return manifest


def write_manifest(manifest: dict, out_dir: Optional[Path] = None) -> Path:
    path = embedded_dir(out_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path
