"""Train the SentencePiece vocabulary on the embedded corpus (build time; data/vocab.py reads the model).

A fixed, pre-sampled, unshuffled input, a fixed seed and one trainer thread give byte-identical models.

    train_vocab(root)               write vocab/spm8k.model, return the manifest's "vocab" entry
    add_token_counts(manifest, root)   tokens per split and per source, into the corpus manifest
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Iterator, List, Optional

import sentencepiece as spm

from switchrepro.data.corpus import iter_documents
from switchrepro.data.vocab import EOS_ID, EXTRA_IDS, PAD_ID, UNK_ID, VOCAB_PATH, load_sentencepiece, model_path

TRAINER_SETTINGS = dict(
    model_type="unigram",
    vocab_size=8092,
    pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
    byte_fallback=True,
    character_coverage=0.9995,
    normalization_rule_name="nmt_nfkc",  # T5's choice
    input_sentence_size=0,  # use the whole (already sampled) input, in our order
    shuffle_input_sentence=False,
    max_sentence_length=8192,
    num_threads=1,  # the model depends on the thread count; 1 gives the same bytes on any machine
)
SAMPLE_FRACTION = 0.5  # of training sentences, chosen by hash
SEED = 1234
_MAX_LINE = 2000


def _lines(text: str) -> Iterator[str]:
    """Sentence-sized lines; long runs are cut at spaces so sentencepiece does not skip them."""
    for paragraph in text.split("\n"):
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
            while len(sentence) > _MAX_LINE:
                cut = sentence.rfind(" ", 0, _MAX_LINE)
                cut = cut if cut > 0 else _MAX_LINE
                yield sentence[:cut]
                sentence = sentence[cut:].lstrip()
            if sentence:
                yield sentence


def training_sample(root: Optional[Path] = None) -> List[str]:
    """A fixed SAMPLE_FRACTION of the training split's sentences (never validation text)."""
    keep = int(SAMPLE_FRACTION * 2**32)
    return [line for doc in iter_documents("train", root) for line in _lines(doc["text"])
            if int.from_bytes(hashlib.sha256(line.encode("utf-8")).digest()[:4], "big") < keep]


def train_model(sentences: List[str], seed: int = SEED, **overrides) -> bytes:
    """Serialized model trained on `sentences` (no file paths end up in the model)."""
    spm.set_random_generator_seed(seed)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=out, minloglevel=1,
                                   **dict(TRAINER_SETTINGS, **overrides))
    return out.getvalue()


def train_vocab(root: Optional[Path] = None) -> dict:
    """Train on the embedded training split, write vocab/spm8k.model; return the manifest entry.

    A fixed, pre-sampled, unshuffled input, a fixed seed and a fixed thread count give
    byte-identical models (checked by training twice, in one process and across processes;
    a different num_threads gives a different, equally reproducible model).
    """
    sentences = training_sample(root)
    model = train_model(sentences)
    path = model_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    return {
        "path": VOCAB_PATH,
        "sha256": hashlib.sha256(model).hexdigest(),
        "size": len(model),
        "pieces": TRAINER_SETTINGS["vocab_size"],
        "extra_ids": EXTRA_IDS,
        "vocab_size_with_extra_ids": TRAINER_SETTINGS["vocab_size"] + EXTRA_IDS,
        "training_sentences": len(sentences),
        "training_chars": sum(len(s) for s in sentences),
        "trainer": dict(TRAINER_SETTINGS, seed=SEED, sample_fraction=SAMPLE_FRACTION,
                        sentencepiece=spm.__version__),
    }


def add_token_counts(manifest: dict, root: Optional[Path] = None) -> None:
    """Record token counts (without EOS) per split and per source in the manifest."""
    sp = load_sentencepiece(root, extra_ids=0)
    by_source = {s["name"]: 0 for s in manifest["sources"]}
    for split, info in manifest["splits"].items():
        docs = list(iter_documents(split, root))
        counts = [len(ids) for ids in sp.encode([d["text"] for d in docs], num_threads=2)]
        info["tokens"] = sum(counts)
        for d, n in zip(docs, counts, strict=True):
            by_source[d["source"]] += n
    for s in manifest["sources"]:
        s["tokens"] = by_source[s["name"]]
