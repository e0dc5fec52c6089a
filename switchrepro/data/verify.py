"""Check the committed data artefacts against manifest.json (`python -m switchrepro.data.verify`).

    verify_embedded(root=None) -> dict   re-hash every shard, the vocab, the downstream task files
                                         (downstream/manifest.json) and the multilingual corpus
                                         (multilingual/manifest.json); DataError names a bad file
    info(root=None, cache_dir=None) -> dict   summary for `switchrepro data info`
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from switchrepro.data import DataError, cache_root, downstream, multilingual
from switchrepro.data.corpus import embedded_dir, load_manifest, manifest_sha256, sha256_file

_REBUILD = "restore it with `git checkout -- switchrepro/data/embedded` or rebuild with `switchrepro data build`"


def _check_file(root: Path, entry: dict) -> None:
    path = root / entry["path"]
    if not path.is_file():
        raise DataError(f"{path} is listed in manifest.json but missing; {_REBUILD}")
    size = path.stat().st_size
    if size != entry["size"]:
        raise DataError(f"{path} has {size} bytes, manifest.json says {entry['size']}; {_REBUILD}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise DataError(f"{path} sha256 {digest} does not match manifest.json ({entry['sha256']}); {_REBUILD}")


def _check_listed(root: Path, entries: list, pattern: str, manifest_name: str) -> None:
    """Re-hash every file a manifest lists; a file matching `pattern` that it does not list is stale."""
    for entry in entries:
        _check_file(root, entry)
    listed = {root / e["path"] for e in entries}
    stray = sorted(p for p in root.glob(pattern) if p not in listed)
    if stray:
        raise DataError(f"{stray[0]} is not listed in {manifest_name} (stale file?); {_REBUILD}")


def verify_embedded(root: Optional[Path] = None) -> dict:
    """Re-hash every committed shard and the SentencePiece model; return summary() if all match."""
    root = embedded_dir(root)
    manifest = load_manifest(root)
    if not manifest.get("vocab"):
        raise DataError(f"{root / 'manifest.json'} has no vocab entry; rebuild with `switchrepro data build`")
    _check_file(root, manifest["vocab"])
    _check_listed(root, manifest["shards"], "corpus/*.jsonl.gz", "manifest.json")
    out = summary(manifest)
    out["downstream"] = verify_downstream(root)
    out["multilingual"] = verify_multilingual(root)
    return out


def verify_multilingual(root: Optional[Path] = None) -> dict:
    """Re-hash the multilingual corpus files; return multilingual_counts()."""
    root = embedded_dir(root)
    manifest = multilingual.load_manifest(root)
    _check_listed(root, manifest["files"], "multilingual/*.jsonl.gz", multilingual.MANIFEST)
    return multilingual_counts(manifest)


def multilingual_counts(manifest: dict) -> dict:
    return {"languages": len(manifest["languages"]),
            "mc4": sum(v is not None for v in manifest["mc4_versions"].values()),
            **{e["split"]: e["records"] for e in manifest["files"]}}


def verify_downstream(root: Optional[Path] = None) -> dict:
    """Re-hash every downstream task file; return {task: {split: examples}}."""
    root = embedded_dir(root)
    manifest = downstream.load_downstream_manifest(root)
    if manifest.get("corpus_manifest_sha256") != manifest_sha256(root):
        raise DataError(f"{root / downstream.MANIFEST} was built from another corpus (its corpus_manifest_sha256 "
                        "differs from manifest.json's sha256); rebuild it with `python -m "
                        "switchrepro.data.build --only downstream`, or restore both with `git checkout -- "
                        "switchrepro/data/embedded`")
    _check_listed(root, manifest["files"], "downstream/*/*.jsonl.gz", downstream.MANIFEST)
    counts: dict = {}
    for e in manifest["files"]:
        counts.setdefault(e["task"], {})[e["split"]] = e["examples"]
    return counts


def summary(manifest: dict) -> dict:
    splits = manifest["splits"]
    files = manifest["shards"] + ([manifest["vocab"]] if manifest.get("vocab") else [])
    return {
        "docs": sum(s["docs"] for s in splits.values()),
        "chars": sum(s["chars"] for s in splits.values()),
        "tokens": sum(s.get("tokens", 0) for s in splits.values()),
        "splits": {k: dict(v) for k, v in splits.items()},
        "sources": {s["name"]: {"version": s["version"], "docs": s["docs"], "chars": s["chars"],
                                "tokens": s.get("tokens"), "licence": s["licence"]}
                    for s in manifest["sources"]},
        "files": len(files),
        "mb": sum(f["size"] for f in files) / 1e6,
        "vocab_sha256": (manifest.get("vocab") or {}).get("sha256"),
    }


def info(root: Optional[Path] = None, cache_dir: Optional[str] = None) -> dict:
    """Summary of the embedded data plus the cache location and the caches materialised there."""
    root = embedded_dir(root)
    out = summary(load_manifest(root))
    try:  # counts only (verify_embedded re-hashes the files)
        files = downstream.load_downstream_manifest(root)["files"]
        out["downstream"] = {}
        for e in files:
            out["downstream"].setdefault(e["task"], {})[e["split"]] = e["examples"]
    except DataError:
        out["downstream"] = {}
    try:
        out["multilingual"] = multilingual_counts(multilingual.load_manifest(root))
    except DataError:
        out["multilingual"] = {}
    out["embedded_dir"] = str(root)
    croot = cache_root(cache_dir)
    out["cache_dir"] = str(croot)
    out["caches"] = sorted(str(p.parent.relative_to(croot)) for p in croot.glob("*/*/*/meta.json")) \
        if croot.is_dir() else []
    return out


def one_line(s: dict) -> str:
    sp = s["splits"]
    line = (f"{s['docs']:,} docs (train {sp['train']['docs']:,} / validation {sp['validation']['docs']:,}), "
            f"{s['chars'] / 1e6:.1f}M chars, {s['tokens'] / 1e6:.2f}M tokens, "
            f"{s['mb']:.1f} MB in {s['files']} files, vocab {str(s['vocab_sha256'])[:12]}")
    if s.get("downstream"):
        line += "; downstream " + ", ".join(f"{t} {c.get('train', 0):,}/{c.get('validation', 0):,}"
                                            for t, c in s["downstream"].items())
    if s.get("multilingual"):
        m = s["multilingual"]
        line += (f"; multilingual {m['languages']} languages ({m['mc4']} mC4), "
                 f"{m.get('train', 0):,}/{m.get('validation', 0):,} articles")
    return line


def main() -> int:
    try:
        s = verify_embedded()
    except DataError as e:
        print(f"switchrepro data: FAILED: {e}", file=sys.stderr)
        return 1
    print(f"switchrepro data: OK: {one_line(s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
