"""SentencePiece vocabulary with T5 conventions, trained on the embedded corpus.

ids: pad=0, eos=1, unk=2, no bos, 256 byte-fallback pieces. 8092 pieces + seqio's 100
sentinels (<extra_id_0> = 8191, counting down) = 8192 = ModelConfig.vocab_size.

    get_vocabulary()     seqio.SentencePieceVocabulary (imports TensorFlow: tasks/materialisation only)
    load_sentencepiece() plain SentencePieceProcessor with the same 8192 ids (TF-free: training path)
    decode(sp, ids)      text before the first EOS
    decode_ids(ids, v)   the same for either vocabulary ("spm8k" or "bytes"), TF-free
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Iterator, List, Optional

import sentencepiece as spm

from switchrepro.data import DataError
from switchrepro.data.corpus import embedded_dir, iter_documents, load_manifest

VOCAB_PATH = "vocab/spm8k.model"
EXTRA_IDS = 100
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

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


def model_path(root: Optional[Path] = None) -> Path:
    return embedded_dir(root) / VOCAB_PATH


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


def load_sentencepiece(root: Optional[Path] = None, extra_ids: int = EXTRA_IDS) -> spm.SentencePieceProcessor:
    """The embedded model as a plain SentencePieceProcessor (TF-free), with the sentinels added
    exactly as seqio adds them, so ids, vocab size (8192) and decoding match get_vocabulary()."""
    from sentencepiece import sentencepiece_model_pb2 as pb2

    path = model_path(root)
    if not path.is_file():
        raise DataError(f"{path} is missing: run `switchrepro data build`")
    model = pb2.ModelProto.FromString(path.read_bytes())
    for i in reversed(range(extra_ids)):  # <extra_id_0> gets the last id
        model.pieces.add(piece=f"\u2581<extra_id_{i}>", score=0.0, type=pb2.ModelProto.SentencePiece.USER_DEFINED)
    return spm.SentencePieceProcessor(model_proto=model.SerializeToString())


def get_vocabulary(root: Optional[Path] = None):
    """seqio.SentencePieceVocabulary with 100 sentinel ids (vocab_size 8192). Imports TensorFlow."""
    import seqio

    path = model_path(root)
    if not path.is_file():
        raise DataError(f"{path} is missing: run `switchrepro data build`")
    return seqio.SentencePieceVocabulary(str(path), extra_ids=EXTRA_IDS)


def decode(sp: spm.SentencePieceProcessor, ids) -> str:
    """Text of model output ids: everything before the first EOS, padding dropped."""
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
        ids = ids[:ids.index(EOS_ID)]
    return sp.decode([i for i in ids if i != PAD_ID])


def vocab_sha256(root: Optional[Path] = None) -> str:
    entry = load_manifest(root).get("vocab") or {}
    if "sha256" not in entry:
        raise DataError("manifest.json has no vocab entry: run `switchrepro data build`")
    return entry["sha256"]


def decode_ids(ids, vocabulary: str, sp: Optional[spm.SentencePieceProcessor] = None) -> str:
    """Text of model output ids under `vocabulary` ("spm8k" or "bytes"), without TensorFlow: everything
    before the first EOS. Bytes follow seqio.ByteVocabulary: id b + 3 is byte b; pad, unk and sentinel ids
    are dropped and invalid UTF-8 is skipped. `sp` reuses a loaded SentencePiece model."""
    if vocabulary == "spm8k":
        return decode(sp or load_sentencepiece(), ids)
    if vocabulary != "bytes":
        raise DataError(f"unknown vocabulary {vocabulary!r}; expected 'spm8k' or 'bytes'")
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
        ids = ids[:ids.index(EOS_ID)]
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="ignore")
