"""seqio tasks: T5 span corruption on the embedded corpus (SentencePiece or bytes), or on TFDS C4;
multilingual byte-level span corruption, one language per example, on the embedded UDHR or TFDS mC4; and
text-to-text fine-tuning tasks: the offline ones of downstream.py, and real benchmarks through TFDS
(GLUE, SuperGLUE, SQuAD, closed-book TriviaQA, CNN/DailyMail, XSum) with T5's preprocessors and metrics.

This module imports seqio, t5 and TensorFlow; the training process reaches it only
through cache.py's materialisation subprocess.

    register_tasks(tfds_data_dir=None)        idempotent; C4, mC4 and benchmarks are registered only with a dir
                                              that holds them
    get_task(name, tfds_data_dir=None)        registered task, or DataError saying what is missing
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Tuple

import seqio
import t5.data.preprocessors as t5_pre
import tensorflow as tf
from t5.data import glue_utils

from switchrepro.data import (
    BENCHMARK_TASKS,
    BENCHMARKS,
    BYTE_EXTRA_IDS,
    BYTE_LM_TASK,
    BYTE_SPAN20_CORRUPTION_TASK,
    BYTE_SPAN_CORRUPTION_TASK,
    C4_LM_TASK,
    C4_TASK,
    C4_TFDS_NAME,
    DOWNSTREAM_TASKS,
    MC4_TASK,
    MC4_TFDS_NAME,
    SPAN_CORRUPTION_TASK,
    TASKS,
    UDHR_TASK,
    DataError,
    benchmark_of,
    downstream,
    downstream_task_name,
    holds_tfds,
    multilingual,
    require_benchmark,
    require_c4,
    require_mc4,
    task_info,
)
from switchrepro.data.corpus import SPLITS, iter_shard, load_manifest, shard_paths
from switchrepro.data.vocab import get_vocabulary


def vocabulary_for(task: str) -> seqio.Vocabulary:
    """The task's seqio vocabulary; its vocab_size is TASK_INFO[task].vocab_size (checked)."""
    info = task_info(task)
    vocab = get_vocabulary() if info.vocabulary == "spm8k" else seqio.ByteVocabulary(extra_ids=BYTE_EXTRA_IDS)
    if vocab.vocab_size != info.vocab_size:
        raise DataError(f"{task}: the {info.vocabulary} vocabulary has {vocab.vocab_size} ids, TASK_INFO says "
                        f"{info.vocab_size}; fix switchrepro/data/__init__.py")
    return vocab


def output_features(task: str = SPAN_CORRUPTION_TASK) -> dict:
    vocab = vocabulary_for(task)
    return {
        "inputs": seqio.Feature(vocabulary=vocab, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
    }


def _span_corruption_preprocessors(task: str) -> list:
    """T5's c4_v220_span_corruption chain: text -> targets, tokenize, span corruption, EOS."""
    info = task_info(task)
    return [
        functools.partial(t5_pre.rekey, key_map={"inputs": None, "targets": "text"}),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        functools.partial(t5_pre.span_corruption, noise_density=info.noise_density,
                          mean_noise_span_length=info.mean_noise_span_length),
        seqio.preprocessors.append_eos_after_trim,
    ]


def _embedded_dataset(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    """Documents of the embedded gz shards as {"text": string}."""
    paths = [str(p) for p in shard_paths(split)]
    if shuffle_files:
        paths = [paths[i] for i in tf.random.shuffle(tf.range(len(paths)), seed=seed).numpy()]

    def gen():
        for path in paths:
            for doc in iter_shard(path):
                yield {"text": doc["text"]}

    return tf.data.Dataset.from_generator(gen, output_signature={"text": tf.TensorSpec((), tf.string)})


# ------------------------------------------------------------------------- language modelling (decoder-only)


def _lm_preprocessors() -> list:
    """T5's prefix-free LM chain: documents concatenated (EOS between them) and cut into targets_length
    pieces of running text."""
    return [
        functools.partial(t5_pre.rekey, key_map={"inputs": None, "targets": "text"}),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos,
        functools.partial(t5_pre.reduce_concat_tokens, feature_key="targets", batch_size=128),
        t5_pre.split_tokens_to_targets_length,
    ]


# ------------------------------------------------------------------------- multilingual (one language per example)

LANG = "lang"  # the int32 language id each example carries through span corruption (into the validation cache)
MULTILINGUAL_SEED = 0  # of the temperature-sampled training epoch


def _multilingual_preprocessors(task: str) -> list:
    """Span corruption within each document: mT5 samples each example from one language, so examples are
    not concatenated across documents (that would mix languages), and the language id is passed through."""
    info = task_info(task)
    return [
        functools.partial(t5_pre.rekey, key_map={"inputs": None, "targets": "text", LANG: LANG}),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        functools.partial(t5_pre.span_corruption, noise_density=info.noise_density,
                          mean_noise_span_length=info.mean_noise_span_length,
                          merge_examples_to_reduce_padding=False, passthrough_feature_keys=[LANG]),
        seqio.preprocessors.append_eos_after_trim,
    ]


def _udhr_documents(split: str) -> list:
    """(text, language id) of the embedded UDHR corpus: the training split as one temperature-sampled epoch
    (multilingual.resample, alpha 0.3 over every language), the held-out articles in file order."""
    manifest = multilingual.load_manifest()
    ids = {code: i for i, code in enumerate(multilingual.language_codes(manifest))}
    records = list(multilingual.iter_records(split))
    if split == "train":
        records = multilingual.resample(records, manifest["sampling"]["all"], seed=MULTILINGUAL_SEED)
    return [(r["text"], ids[r["lang"]]) for r in records]


def _udhr_dataset(split: str, shuffle_files: bool = False, seed: Optional[int] = None) -> tf.data.Dataset:
    docs = _udhr_documents(split)  # fixed order: shuffling is the epoch's (seeded) and the cache's

    def gen():
        for text, lang in docs:
            yield {"text": text, LANG: lang}

    return tf.data.Dataset.from_generator(gen, output_signature={"text": tf.TensorSpec((), tf.string),
                                                                 LANG: tf.TensorSpec((), tf.int32)})


def udhr_task(name: str = UDHR_TASK) -> seqio.Task:
    counts = {f["split"]: f["records"] for f in multilingual.load_manifest()["files"]}
    return seqio.Task(
        name,
        source=seqio.FunctionDataSource(_udhr_dataset, splits=SPLITS, num_input_examples=counts),
        preprocessors=_multilingual_preprocessors(name),
        output_features=output_features(name),
        metric_fns=[],
    )


def mc4_languages(tfds_data_dir: str) -> Tuple[str, ...]:
    """The language splits of the prepared c4/multilingual (those with a "<lang>-validation" split)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(MC4_TFDS_NAME, data_dir=tfds_data_dir)
    splits = builder.info.splits
    return tuple(sorted(k for k in splits if not k.endswith("-validation") and f"{k}-validation" in splits))


def _mc4_dataset_fn(tfds_data_dir: str, validation_docs: int = 1000):
    """mC4 as {"text", "lang"}: training samples languages by mT5's alpha 0.3 over TFDS's per-language
    example counts; validation is the first `validation_docs` documents of each language's validation split.
    A language's id is its index in mc4_languages()."""
    import tensorflow_datasets as tfds

    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None) -> tf.data.Dataset:
        builder = tfds.builder(MC4_TFDS_NAME, data_dir=tfds_data_dir)
        langs = mc4_languages(tfds_data_dir)

        def one(i: int, lang: str) -> tf.data.Dataset:
            name = lang if split == "train" else f"{lang}-validation"
            ds = builder.as_dataset(split=name, shuffle_files=shuffle_files and split == "train")
            ds = ds if split == "train" else ds.take(validation_docs)
            return ds.map(lambda x, i=i: {"text": x["text"], LANG: tf.constant(i, tf.int32)})

        parts = [one(i, lang) for i, lang in enumerate(langs)]
        if split != "train":
            out = parts[0]
            for ds in parts[1:]:
                out = out.concatenate(ds)
            return out
        table = multilingual.sampling_table({lang: builder.info.splits[lang].num_examples for lang in langs})
        return tf.data.Dataset.sample_from_datasets([ds.repeat() for ds in parts], [table[k] for k in langs],
                                                    seed=seed)

    return dataset_fn


# ------------------------------------------------------------------------- text-to-text (fine-tuning)

_TEXT2TEXT_PREPROCESSORS = [
    seqio.preprocessors.tokenize,
    seqio.CacheDatasetPlaceholder(),
    seqio.preprocessors.append_eos_after_trim,
]


def _downstream_dataset_fn(short: str):
    """dataset_fn(split, shuffle_files, seed) of an embedded downstream task: {"inputs", "targets"} strings
    in file order (one file per split, so shuffle_files has nothing to shuffle)."""

    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None) -> tf.data.Dataset:
        def gen():
            for rec in downstream.iter_examples(short, split):
                yield {"inputs": rec["inputs"], "targets": rec["targets"]}

        spec = tf.TensorSpec((), tf.string)
        return tf.data.Dataset.from_generator(gen, output_signature={"inputs": spec, "targets": spec})

    return dataset_fn


def _downstream_task(short: str, name: str) -> seqio.Task:
    postprocess_fn, metric_fns = downstream.metric_setup(short)
    counts = {e["split"]: e["examples"] for e in downstream.load_downstream_manifest()["files"] if e["task"] == short}
    return seqio.Task(
        name,
        source=seqio.FunctionDataSource(_downstream_dataset_fn(short), splits=SPLITS, num_input_examples=counts),
        preprocessors=list(_TEXT2TEXT_PREPROCESSORS),
        output_features=output_features(name),
        postprocess_fn=postprocess_fn,
        metric_fns=metric_fns,
    )


@seqio.map_over_dataset
def _trivia_qa_closed_book(x):
    """Closed-book TriviaQA (the question alone), as in Roberts et al. 2020: the answer's value is the target,
    every alias an acceptable answer."""
    return {
        "inputs": tf.strings.join(["trivia_qa question: ", x["question"]]),
        "targets": x["answer"]["value"],
        "answers": tf.concat([[x["answer"]["value"]], x["answer"]["aliases"]], axis=0),
    }


def _benchmark_preprocessors(name: str) -> list:
    """T5's text preprocessor of the benchmark (t5.data.tasks' choice), then tokenize and EOS."""
    if name.startswith(("glue_", "super_glue_")):
        config, _ = downstream.glue_config(name)
        first = [glue_utils.get_glue_text_preprocessor(config)]
    elif name == "squad":
        first = [t5_pre.squad]
    elif name == "trivia_qa":
        first = [_trivia_qa_closed_book]
    elif name == "cnn_dailymail":
        first = [functools.partial(t5_pre.summarize, article_key="article", summary_key="highlights")]
    elif name == "xsum":
        first = [functools.partial(t5_pre.summarize, article_key="document", summary_key="summary")]
    else:
        raise DataError(f"no preprocessor for benchmark {name!r}; add one in switchrepro/data/tasks.py")
    return first + list(_TEXT2TEXT_PREPROCESSORS)


def _benchmark_task(name: str, task_name: str, tfds_data_dir: str) -> seqio.Task:
    bench = BENCHMARKS[name]
    postprocess_fn, metric_fns = downstream.metric_setup(name)
    return seqio.Task(
        task_name,
        source=seqio.TfdsDataSource(bench.tfds_name, tfds_data_dir=tfds_data_dir,
                                    splits={"train": "train", "validation": bench.validation_split}),
        preprocessors=_benchmark_preprocessors(name),
        output_features=output_features(task_name),
        postprocess_fn=postprocess_fn,
        metric_fns=metric_fns,
    )


def _add(task: seqio.Task) -> None:
    if task.name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(task.name)
    seqio.TaskRegistry.add_provider(task.name, task)


def register_tasks(tfds_data_dir: Optional[str] = None) -> None:
    """(Re-)register the tasks. C4 and the TFDS benchmarks are registered when tfds_data_dir holds them
    (get_task raises DataError saying what to prepare for one that it does not hold)."""
    manifest = load_manifest()
    for name in (SPAN_CORRUPTION_TASK, BYTE_SPAN_CORRUPTION_TASK, BYTE_SPAN20_CORRUPTION_TASK):
        _add(seqio.Task(
            name,
            source=seqio.FunctionDataSource(
                _embedded_dataset, splits=SPLITS,
                num_input_examples={k: v["docs"] for k, v in manifest["splits"].items()}),
            preprocessors=_span_corruption_preprocessors(name),
            output_features=output_features(name),
            metric_fns=[],
        ))
    _add(udhr_task())
    _add(seqio.Task(
        BYTE_LM_TASK,
        source=seqio.FunctionDataSource(_embedded_dataset, splits=SPLITS,
                                        num_input_examples={k: v["docs"] for k, v in manifest["splits"].items()}),
        preprocessors=_lm_preprocessors(),
        output_features={"targets": seqio.Feature(vocabulary=vocabulary_for(BYTE_LM_TASK), add_eos=False)},
        metric_fns=[],
    ))
    for short in DOWNSTREAM_TASKS:
        for vocabulary in ("spm8k", "bytes"):
            _add(_downstream_task(short, downstream_task_name(short, vocabulary)))
    if tfds_data_dir is not None:
        # Only the benchmarks the directory holds: the others stay unregistered, and get_task says what to prepare.
        root = Path(tfds_data_dir).expanduser()
        for name in BENCHMARK_TASKS:
            if holds_tfds(tfds_data_dir, BENCHMARKS[name].tfds_name):
                for vocabulary in ("spm8k", "bytes"):
                    _add(_benchmark_task(name, downstream_task_name(name, vocabulary), str(root)))
    if holds_tfds(tfds_data_dir, C4_TFDS_NAME):
        _add(seqio.Task(
            C4_TASK,
            source=seqio.TfdsDataSource(C4_TFDS_NAME, tfds_data_dir=str(require_c4(tfds_data_dir))),
            preprocessors=_span_corruption_preprocessors(C4_TASK),
            output_features=output_features(C4_TASK),
            metric_fns=[],
        ))
        _add(seqio.Task(
            C4_LM_TASK,
            source=seqio.TfdsDataSource(C4_TFDS_NAME, tfds_data_dir=str(require_c4(tfds_data_dir, C4_LM_TASK))),
            preprocessors=_lm_preprocessors(),
            output_features={"targets": seqio.Feature(vocabulary=vocabulary_for(C4_LM_TASK), add_eos=False)},
            metric_fns=[],
        ))
    if holds_tfds(tfds_data_dir, MC4_TFDS_NAME):
        _add(seqio.Task(
            MC4_TASK,
            source=seqio.FunctionDataSource(_mc4_dataset_fn(str(require_mc4(tfds_data_dir))), splits=SPLITS),
            preprocessors=_multilingual_preprocessors(MC4_TASK),
            output_features=output_features(MC4_TASK),
            metric_fns=[],
        ))


def get_task(name: str, tfds_data_dir: Optional[str] = None) -> seqio.Task:
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; choose one of {TASKS}")
    if name in (C4_TASK, C4_LM_TASK):
        require_c4(tfds_data_dir, name)  # never fall back to other data
    if name == MC4_TASK:
        require_mc4(tfds_data_dir)
    if benchmark_of(name) is not None:
        require_benchmark(name, tfds_data_dir)
    register_tasks(tfds_data_dir)
    return seqio.get_mixture_or_task(name)
