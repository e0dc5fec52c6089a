"""SentencePiece vocabulary with T5 conventions, trained on the embedded corpus.

ids: pad=0, eos=1, unk=2, no bos, 256 byte-fallback pieces. 8092 pieces + seqio's 100
sentinels (<extra_id_0> = 8191, counting down) = 8192 = ModelConfig.vocab_size. The model is trained by
data/build/vocab.py (build time); this module only reads it.

    get_vocabulary()     seqio.SentencePieceVocabulary (imports TensorFlow: tasks/materialisation only)
    load_sentencepiece() plain SentencePieceProcessor with the same 8192 ids (TF-free: training path)
    decode(sp, ids)      text before the first EOS
    decode_ids(ids, v)   the same for either vocabulary ("spm8k" or "bytes"), TF-free
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb2

from switchrepro.data import DataError
from switchrepro.data.corpus import embedded_dir, load_manifest

VOCAB_PATH = "vocab/spm8k.model"
EXTRA_IDS = 100
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

def model_path(root: Optional[Path] = None) -> Path:
    return embedded_dir(root) / VOCAB_PATH


def load_sentencepiece(root: Optional[Path] = None, extra_ids: int = EXTRA_IDS) -> spm.SentencePieceProcessor:
    """The embedded model as a plain SentencePieceProcessor (TF-free), with the sentinels added
    exactly as seqio adds them, so ids, vocab size (8192) and decoding match get_vocabulary()."""
    path = model_path(root)
    if not path.is_file():
        raise DataError(f"{path} is missing: run `switchrepro data build`")
    model = pb2.ModelProto.FromString(path.read_bytes())
    for i in reversed(range(extra_ids)):  # <extra_id_0> gets the last id
        model.pieces.add(piece=f"\u2581<extra_id_{i}>", score=0.0, type=pb2.ModelProto.SentencePiece.USER_DEFINED)
    return spm.SentencePieceProcessor(model_proto=model.SerializeToString())


def get_vocabulary(root: Optional[Path] = None):
    """seqio.SentencePieceVocabulary with 100 sentinel ids (vocab_size 8192). Imports TensorFlow."""
    import seqio  # imports TensorFlow: only the tasks / materialisation subprocess gets here

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
