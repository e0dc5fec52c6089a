"""Offline downstream (fine-tuning) tasks: builders on literal data, the committed files, T5's metrics, the
unpacked validation cache with its texts, and the errors (unknown task, missing TFDS benchmark, bad pin).

Two tests start a TensorFlow subprocess (materialisation, scoring) and one imports t5 in-process; the rest
are pure Python.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from switchrepro.data import (
    BENCHMARK_TASKS,
    DOWNSTREAM_TASKS,
    EMBEDDED_DIR,
    TASK_INFO,
    DataError,
    cache,
    downstream,
    downstream_task_name,
    verify,
)
from switchrepro.data.build import downstream as build_downstream
from switchrepro.data.build import pins
from switchrepro.data.build.corpus import gzip_bytes, jsonl
from switchrepro.data.corpus import iter_documents

REPO = Path(__file__).resolve().parents[1]
COUNTS = {  # (train, validation) of the committed files
    "sentiment": (2404, 578),
    "spam": (2000, 126),
    "cloze_qa": (4443, 500),
    "wordnet_qa": (4000, 500),
}


def _by_id(records):
    return sorted(records, key=lambda r: r["id"])


# --------------------------------------------------------------------------- builders on literal data


def test_sentiment_records_from_a_literal_fixture():
    fixtures = {
        "yelp": [{"text": "Great  phone! ", "class": 1},  # a duplicate of amazon/0000 after whitespace collapse
                 {"text": "Mixed feelings.", "class": 1}],
        "amazon": [{"text": "Great phone!", "class": 1}, {"text": "", "class": None},
                   {"text": "Bad battery.", "class": 0}, {"text": "Mixed feelings.", "class": 0}],
    }
    expected = [  # sorted domains: amazon first; the sentence with both labels is dropped
        {"id": "amazon/0000", "inputs": "sst2 sentence: Great phone!", "targets": "positive"},
        {"id": "amazon/0002", "inputs": "sst2 sentence: Bad battery.", "targets": "negative"},
    ]
    all_train = build_downstream.sentiment_examples(fixtures, validation_fraction=0.0)
    assert _by_id(all_train["train"]) == expected and all_train["validation"] == []
    assert _by_id(build_downstream.sentiment_examples(fixtures, validation_fraction=1.0)["validation"]) == expected
    half = build_downstream.sentiment_examples(fixtures, validation_fraction=0.5)
    assert _by_id(half["train"] + half["validation"]) == expected
    assert build_downstream.sentiment_examples(fixtures, validation_fraction=0.5) == half  # deterministic


def test_spam_records_come_from_the_matching_corpus_split():
    train_docs = [
        {"id": "spamassassin/spam-1/00001.aa", "source": "spamassassin", "text": "Buy now!\nCheap pills."},
        {"id": "spamassassin/easy-ham-1/00002.bb", "source": "spamassassin", "text": "Hi Bob,\nsee you at 5."},
        {"id": "brown/ca01", "source": "brown", "text": "Not an e-mail."},
    ]
    validation_docs = [
        {"id": "spamassassin/hard-ham-1/00003.cc", "source": "spamassassin", "text": "Your order shipped."},
        {"id": "spamassassin/spam-2/00004.dd", "source": "spamassassin", "text": "x" * 30 + " " + "y" * 30},
    ]
    out = build_downstream.spam_examples(train_docs, validation_docs, max_train=10, max_chars=40)
    assert _by_id(out["train"]) == [
        {"id": "spamassassin/easy-ham-1/00002.bb", "inputs": "spam email: Hi Bob, see you at 5.", "targets": "ham"},
        {"id": "spamassassin/spam-1/00001.aa", "inputs": "spam email: Buy now! Cheap pills.", "targets": "spam"},
    ]
    assert _by_id(out["validation"]) == [
        {"id": "spamassassin/hard-ham-1/00003.cc", "inputs": "spam email: Your order shipped.", "targets": "ham"},
        # cut at the word boundary before 40 characters
        {"id": "spamassassin/spam-2/00004.dd", "inputs": "spam email: " + "x" * 30, "targets": "spam"},
    ]
    assert len(build_downstream.spam_examples(train_docs, validation_docs, max_train=1)["train"]) == 1


def test_cloze_question_from_a_literal_paragraph():
    # One eligible sentence with one candidate span ("table"; the rest are stop words); "She said so." is
    # too short to ask about, but stays in the context.
    doc = {"id": "brown/zz01", "source": "brown",
           "text": "It was not there on the table at all. She said so.\nNothing."}
    assert build_downstream.cloze_questions(doc) == [{
        "id": "brown/zz01#0.1.0",
        "inputs": "question: It was not there on the _____ at all. context: It was not there on the table at all. "
                  "She said so.",
        "targets": "table",
    }]
    text = ("The Senate passed the Voting Rights Act in 1965, after a long debate. Mr. Johnson signed it in "
            "August. Farmers in Iowa harvested record crops of corn and soybeans that year.")
    records = build_downstream.cloze_questions({"id": "sotu/x", "source": "sotu", "text": text})
    assert len(records) == 6  # two different blanks in each of the three sentences
    for r in records:
        question, context = r["inputs"][len("question: "):].split(" context: ")
        assert question.count("_____") == 1 and 1 <= len(r["targets"].split()) <= 3
        assert question.replace("_____", r["targets"]) in context  # extractive: the sentence is in the context
        assert context in text


def test_cloze_splits_by_document():
    sentence = "The {} committee approved a new budget for the county schools on {}."
    docs = [{"id": f"brown/c{i:03d}", "source": "brown",
             "text": " ".join(sentence.format(w, d) for w, d in (("finance", "Monday"), ("school", "Friday")))}
            for i in range(12)]
    out = build_downstream.cloze_examples(docs, validation_examples=8)
    doc_of = lambda r: r["id"].split("#")[0]  # noqa: E731
    train_docs, validation_docs = {doc_of(r) for r in out["train"]}, {doc_of(r) for r in out["validation"]}
    assert train_docs and validation_docs and not train_docs & validation_docs
    assert len(out["validation"]) == 8


def test_wordnet_records_from_two_literal_data_lines():
    data = [
        "  1 This software and database is being provided to you, the LICENSEE, by Princeton University",
        "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 | a member of the genus "
        "Canis (probably descended from the common wolf); occurs in many breeds; \"the dog barked all night\"  ",
        "10114209 18 n 02 frump 0 dog 0 001 @ 10485440 n 0000 | a dull unattractive unpleasant girl or woman; "
        "\"she got a reputation as a frump\"  ",
    ]
    dog = {"id": "n02084071", "inputs": "trivia question: what is dog?",
           "targets": "a member of the genus Canis (probably descended from the common wolf)"}
    frump = {"id": "n10114209", "inputs": "trivia question: what is frump?",
             "targets": "a dull unattractive unpleasant girl or woman"}
    # Without the index: each lemma at the first synset that lists it, one record per synset.
    out = build_downstream.wordnet_examples(data, train_size=10, validation_size=1)
    assert len(out["validation"]) == 1 and _by_id(out["train"] + out["validation"]) == [dog, frump]
    # With it: only a lemma's first sense, and only sense-tagged (common) lemmas: frump has no tagged sense.
    index = ["dog n 7 5 @ ~ #m #p %p 7 1 02084071 10114209 10023039 09886220 07676602 03901548 02710044  ",
             "frump n 1 1 @ 1 0 10114209  "]
    out = build_downstream.wordnet_examples(data, index, train_size=10, validation_size=0)
    assert out == {"validation": [], "train": [dog]}


# --------------------------------------------------------------------------- committed files


def test_embedded_files_match_the_manifest_and_counts():
    counts = verify.verify_downstream()
    assert counts == {t: {"train": c[0], "validation": c[1]} for t, c in COUNTS.items()}
    for task in DOWNSTREAM_TASKS:
        for split in ("train", "validation"):
            path = downstream.downstream_file(task, split)
            entry = downstream.file_entry(task, split)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
            records = list(downstream.iter_examples(task, split))
            assert len(records) == entry["examples"] == COUNTS[task][split == "validation"]
            assert all(set(r) == {"id", "inputs", "targets"} and r["inputs"] and r["targets"] for r in records)
            assert len({r["id"] for r in records}) == len(records)
    assert "downstream sentiment 2,404/578" in verify.one_line(verify.verify_embedded())


def test_committed_spam_and_cloze_rebuild_byte_identically_and_respect_the_corpus_split():
    train_docs, validation_docs = list(iter_documents("train")), list(iter_documents("validation"))
    rebuilt = {"spam": build_downstream.spam_examples(train_docs, validation_docs),
               "cloze_qa": build_downstream.cloze_examples(validation_docs)}
    for task, splits in rebuilt.items():
        for split, records in splits.items():
            data = gzip_bytes(jsonl(records), build_downstream.SETTINGS["gzip_level"])
            assert hashlib.sha256(data).hexdigest() == downstream.file_entry(task, split)["sha256"], (task, split)

    corpus_validation = {d["id"] for d in validation_docs}
    corpus_train = {d["id"] for d in train_docs}
    spam_validation = {r["id"] for r in downstream.iter_examples("spam", "validation")}
    # Exactly the held-out e-mails, none of which pre-training saw.
    assert spam_validation == {i for i in corpus_validation if build_downstream.spam_label(i)}
    assert not spam_validation & corpus_train
    assert {r["id"] for r in downstream.iter_examples("spam", "train")} <= corpus_train

    doc_of = lambda r: r["id"].split("#")[0]  # noqa: E731
    cloze = {s: list(downstream.iter_examples("cloze_qa", s)) for s in ("train", "validation")}
    assert not {doc_of(r) for r in cloze["train"]} & {doc_of(r) for r in cloze["validation"]}
    assert {doc_of(r) for r in cloze["train"] + cloze["validation"]} <= corpus_validation
    for r in cloze["train"] + cloze["validation"]:
        question, context = r["inputs"][len("question: "):].split(" context: ", 1)
        assert r["targets"] in context and question.replace("_____", r["targets"]) in context


def test_writing_is_deterministic(tmp_path):
    examples = {t: {"train": [{"id": f"{t}/1", "inputs": f"{t} é", "targets": "x"}],
                    "validation": [{"id": f"{t}/2", "inputs": t, "targets": "y"}]} for t in DOWNSTREAM_TASKS}
    hashes = []
    for name in ("a", "b"):
        root = tmp_path / name
        (root / "downstream").mkdir(parents=True)
        (root / "manifest.json").write_bytes((EMBEDDED_DIR / "manifest.json").read_bytes())
        manifest = build_downstream.write_downstream(examples, root)
        hashes.append([e["sha256"] for e in manifest["files"]])
        assert verify.verify_downstream(root) == {t: {"train": 1, "validation": 1} for t in DOWNSTREAM_TASKS}
        with gzip.open(root / "downstream" / "spam" / "train.jsonl.gz", "rt", encoding="utf-8") as f:
            assert json.loads(f.read()) == examples["spam"]["train"][0]
    assert hashes[0] == hashes[1]


# --------------------------------------------------------------------------- names and errors


def test_task_names_and_info():
    assert downstream_task_name("sentiment", "bytes") == "switchrepro_byte_sentiment"
    assert downstream_task_name("sentiment", "spm8k") == "switchrepro_sentiment"
    assert downstream_task_name("glue_sst2", "bytes") == "switchrepro_byte_glue_sst2"
    for task in DOWNSTREAM_TASKS:
        byte, spm = TASK_INFO[f"switchrepro_byte_{task}"], TASK_INFO[f"switchrepro_{task}"]
        assert (byte.vocabulary, byte.vocab_size, spm.vocabulary, spm.vocab_size) == ("bytes", 384, "spm8k", 8192)
        assert byte.kind == spm.kind == "text2text" and byte.noise_density == 0
    assert TASK_INFO["switchrepro_byte_cloze_qa"].metrics == ("em", "f1")
    assert TASK_INFO["switchrepro_sentiment"].metrics == ("accuracy",)
    assert TASK_INFO["switchrepro_span_corruption"].kind == "span_corruption"
    assert {"glue_sst2", "super_glue_boolq", "squad", "trivia_qa", "cnn_dailymail", "xsum"} <= set(BENCHMARK_TASKS)
    assert downstream.resolve_task("switchrepro_byte_glue_sst2") == "glue_sst2"


def test_unknown_task_is_refused_with_the_choices():
    with pytest.raises(DataError, match="choose one of sentiment, spam, cloze_qa, wordnet_qa") as e:
        downstream_task_name("sst3", "bytes")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="unknown vocabulary"):
        downstream_task_name("sentiment", "words")
    with pytest.raises(DataError, match="unknown downstream task 'sst3'"):
        downstream.score_in_subprocess("sst3", ["a"], ["a"])  # before any subprocess starts
    with pytest.raises(DataError, match="unknown downstream task"):
        downstream.downstream_file("sst3", "train")


@pytest.mark.parametrize("given", [None, "empty"])
def test_tfds_benchmark_without_data_is_one_line(tmp_path, given):
    tfds_dir = None if given is None else str(tmp_path)
    with pytest.raises(DataError) as e:  # refused before any subprocess starts
        cache.ensure_cache("switchrepro_byte_glue_sst2", "validation", 128, 8, cache_dir=str(tmp_path / "c"),
                           tfds_data_dir=tfds_dir)
    message = str(e.value)
    assert "\n" not in message and "glue/sst2/2.0.0" in message and "tfds build glue/sst2:2.0.0" in message
    assert not (tmp_path / "c").exists()


def test_wrong_checksum_of_a_pinned_file_is_refused(tmp_path):
    def fake_download(pin, raw_dir):
        (raw_dir / pin.file).write_bytes(b"not the published tarball")

    with pytest.raises(DataError, match="does not match the pinned 89302eb03d20"):
        pins.fetch_pinned(pins.SENTIMENT_PIN, tmp_path, download=fake_download)
    bad = tmp_path / pins.WORDNET_PIN.file
    bad.write_bytes(b"junk")
    with pytest.raises(DataError, match="does not match the pinned 61060d960f9a"):
        pins.check_pinned(pins.WORDNET_PIN, bad)


# --------------------------------------------------------------------------- metrics (T5's)


def test_accuracy_and_squad_metrics_on_literal_predictions():
    acc = downstream.score("sentiment", ["positive", "negative", "positive"], ["positive", "negative", "negative"])
    assert acc == {"accuracy": pytest.approx(200 / 3)}
    # T5's SQuAD normalisation drops articles and punctuation: "the cat" == "a cat"; a list holds every answer.
    assert downstream.score("wordnet_qa", [["x", "The cat."]], ["a cat"]) == {"em": 100.0, "f1": 100.0}


def test_score_in_subprocess_em_and_f1():
    # "dog house" vs "dog": precision 1, recall 1/2, F1 2/3; exact match only for the first.
    scores = downstream.score_in_subprocess("switchrepro_byte_cloze_qa", ["the cat", "dog house"], ["a cat", "dog"])
    assert scores == {"em": pytest.approx(50.0), "f1": pytest.approx((100 + 200 / 3) / 2)}


def test_downstream_and_cache_modules_stay_tensorflow_free():
    code = ("import sys; import switchrepro.data.downstream, switchrepro.data.cache, switchrepro.data.verify; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio', 't5')], 'heavy'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --------------------------------------------------------------------------- unpacked validation cache


def _bytes_text(ids) -> str:
    ids = [int(i) for i in ids]
    ids = ids[:ids.index(1)] if 1 in ids else ids  # EOS
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8")


def test_validation_split_is_unpacked_with_aligned_texts(tmp_path):
    path = cache.ensure_cache("switchrepro_byte_spam", "validation", 256, 8, cache_dir=str(tmp_path))
    c, texts = cache.load(path), cache.load_texts(path)
    records = list(downstream.iter_examples("spam", "validation"))
    assert c.num_examples == len(texts) == len(records) == COUNTS["spam"][1]  # one row per example, none dropped
    assert [{"inputs": r["inputs"], "targets": r["targets"]} for r in records] == texts  # file order
    seg = np.asarray(c.arrays["encoder_segment_ids"])
    assert seg.max() == 1 and np.array_equal(np.asarray(c.arrays["decoder_segment_ids"]) > 0,
                                             np.asarray(c.arrays["decoder_target_tokens"]) > 0)
    for i, t in enumerate(texts):
        assert _bytes_text(c.arrays["decoder_target_tokens"][i]) == t["targets"]
    long = [len(t["inputs"].encode()) + 1 > 256 for t in texts]
    assert c.meta["text2text"] == {"packed": False, "metrics": ["accuracy"], "examples": 126, "texts": "texts.jsonl",
                                   "truncated": {"inputs": sum(long), "targets": 0}}
    i = long.index(True)  # seqio keeps 255 bytes and the EOS of a longer input
    row = np.asarray(c.arrays["encoder_input_tokens"][i])
    assert row[-1] == 1 and texts[i]["inputs"].encode().startswith(bytes(int(b) - 3 for b in row[:-1]))
    with pytest.raises(DataError, match="no texts.jsonl"):
        cache.load_texts(tmp_path)
