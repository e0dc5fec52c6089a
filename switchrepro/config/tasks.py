"""The task catalogue: every task's name, vocabulary, span-corruption settings, kind and metrics.

Plain data (no TensorFlow, no file access), so that a configuration can be checked against it
(ExperimentConfig.validate: the model's vocabulary size must equal the task's). switchrepro.data
re-exports these names beside the readers that serve the tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

SPAN_CORRUPTION_TASK = "switchrepro_span_corruption"
BYTE_SPAN_CORRUPTION_TASK = "switchrepro_byte_span_corruption"
BYTE_SPAN20_CORRUPTION_TASK = "switchrepro_byte_span20_corruption"
C4_TASK = "c4_span_corruption"
C4_TFDS_NAME = "c4/en:3.1.0"
# Prefix-free language modelling on the embedded corpus (decoder-only models: selective attention), or on C4.
BYTE_LM_TASK = "switchrepro_byte_lm"
C4_LM_TASK = "c4_lm"
# Multilingual pre-training (byte level, ByT5's span 20): the embedded UDHR corpus (multilingual.py), or mC4.
UDHR_TASK = "switchrepro_byte_udhr_span20_corruption"
MC4_TASK = "mc4_byte_span20_corruption"
MC4_TFDS_NAME = "c4/multilingual:3.1.0"
BYTE_EXTRA_IDS = 125  # 3 specials + 256 bytes + 125 sentinels = 384 ids (a multiple of 128)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a task's examples look like, known without importing TensorFlow.

    Attributes:
      vocabulary: "spm8k" (the embedded SentencePiece model, 8192 ids) or "bytes" (seqio.ByteVocabulary,
        ByT5's ids: pad 0, eos 1, unk 2, byte b at b + 3, sentinels counting down from vocab_size - 1).
      vocab_size: ids of that vocabulary (ModelConfig.vocab_size must equal it).
      noise_density, mean_noise_span_length: span-corruption settings (0 for text-to-text tasks).
      kind: "span_corruption" (pre-training), "text2text" (a fine-tuning task: {"inputs", "targets"}
        strings, scored by decoding) or "lm" (prefix-free language modelling for decoder-only models: targets
        only, DataConfig.targets_length tokens of running text per example).
      metrics: keys of the scores switchrepro.data.downstream.score returns for the task, e.g.
        ("accuracy",) or ("em", "f1"); () for span corruption.
      tfds_name: the TFDS dataset a benchmark task reads ("glue/sst2:2.0.0"); None for embedded data.
      multilingual: every example comes from one language, and the validation cache keeps each row's
        language (evaluation reports a negative log-perplexity per language).
    """

    vocabulary: str
    vocab_size: int
    noise_density: float
    mean_noise_span_length: float
    kind: str = "span_corruption"
    metrics: tuple = ()
    tfds_name: Optional[str] = None
    multilingual: bool = False


TASK_INFO = {
    # T5's span-corruption defaults.
    SPAN_CORRUPTION_TASK: TaskInfo("spm8k", 8192, 0.15, 3.0),
    # ByT5-style: bytes carry ~1/4 of a subword's information, so spans are longer (ByT5 uses 20; 8 leaves
    # ~3 spans in a 128-byte input).
    BYTE_SPAN_CORRUPTION_TASK: TaskInfo("bytes", 3 + 256 + BYTE_EXTRA_IDS, 0.15, 8.0),
    # ByT5's own setting: one ~20-byte span per 128-byte input, so filling it is mostly language knowledge.
    BYTE_SPAN20_CORRUPTION_TASK: TaskInfo("bytes", 3 + 256 + BYTE_EXTRA_IDS, 0.15, 20.0),
    C4_TASK: TaskInfo("spm8k", 8192, 0.15, 3.0),
    BYTE_LM_TASK: TaskInfo("bytes", 3 + 256 + BYTE_EXTRA_IDS, 0.0, 0.0, kind="lm"),
    C4_LM_TASK: TaskInfo("spm8k", 8192, 0.0, 0.0, kind="lm"),
    UDHR_TASK: TaskInfo("bytes", 3 + 256 + BYTE_EXTRA_IDS, 0.15, 20.0, multilingual=True),
    MC4_TASK: TaskInfo("bytes", 3 + 256 + BYTE_EXTRA_IDS, 0.15, 20.0, multilingual=True, tfds_name=MC4_TFDS_NAME),
}

# Offline fine-tuning tasks (embedded/downstream/<task>/{train,validation}.jsonl.gz, built by downstream.py):
# sentiment is the SST-2 stand-in, spam a document classification, cloze_qa SQuAD-format extractive QA and
# wordnet_qa closed-book QA in TriviaQA's role.
DOWNSTREAM_TASKS = ("sentiment", "spam", "cloze_qa", "wordnet_qa")
DOWNSTREAM_METRICS = {
    "sentiment": ("accuracy",),
    "spam": ("accuracy",),
    "cloze_qa": ("em", "f1"),
    "wordnet_qa": ("em", "f1"),
}


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A real fine-tuning benchmark read through TFDS (the user prepares it; nothing is downloaded here).

    Attributes:
      tfds_name: "name[/config]:version" as seqio.TfdsDataSource takes it.
      metrics: keys of the scores (T5's metric functions for the task).
      validation_split: the TFDS split served as "validation" (MNLI has two).
      prepare: extra preparation advice for the error message (XSum needs a manual download).
    """

    tfds_name: str
    metrics: tuple
    validation_split: str = "validation"
    prepare: str = ""


_ACC = ("accuracy",)
_ROUGE = ("rouge2", "rouge1", "rougeLsum")  # the paper reports Rouge-2 for CNNDM and XSum
# Versions: T5's task registry's where the installed TFDS still builds them by default (GLUE moved to 2.0.0).
BENCHMARKS = {
    "glue_cola": Benchmark("glue/cola:2.0.0", ("matthews_corrcoef",)),
    "glue_sst2": Benchmark("glue/sst2:2.0.0", _ACC),
    "glue_mrpc": Benchmark("glue/mrpc:2.0.0", ("f1", "accuracy")),
    "glue_qqp": Benchmark("glue/qqp:2.0.0", ("f1", "accuracy")),
    "glue_stsb": Benchmark("glue/stsb:2.0.0", ("pearson_corrcoef", "spearman_corrcoef")),
    "glue_mnli": Benchmark("glue/mnli:2.0.0", _ACC, validation_split="validation_matched"),
    "glue_mnli_mismatched": Benchmark("glue/mnli:2.0.0", _ACC, validation_split="validation_mismatched"),
    "glue_qnli": Benchmark("glue/qnli:2.0.0", _ACC),
    "glue_rte": Benchmark("glue/rte:2.0.0", _ACC),
    "glue_wnli": Benchmark("glue/wnli:2.0.0", _ACC),
    "super_glue_boolq": Benchmark("super_glue/boolq:1.0.2", _ACC),
    "super_glue_cb": Benchmark("super_glue/cb:1.0.2", ("mean_3class_f1", "accuracy")),
    "super_glue_copa": Benchmark("super_glue/copa:1.0.2", _ACC),
    "super_glue_rte": Benchmark("super_glue/rte:1.0.2", _ACC),
    "super_glue_wic": Benchmark("super_glue/wic:1.0.2", _ACC),
    "squad": Benchmark("squad/v1.1:3.0.0", ("em", "f1")),
    # Closed-book, as the paper's "CB Trivia QA": the question alone, no evidence documents.
    "trivia_qa": Benchmark("trivia_qa/unfiltered.nocontext:1.1.0", ("em", "f1")),
    "cnn_dailymail": Benchmark("cnn_dailymail:3.4.0", _ROUGE),
    "xsum": Benchmark("xsum:1.1.0", _ROUGE,
                      prepare="XSum needs a manual download first: put the files `tfds build xsum` asks for in "
                              "DIR/downloads/manual"),
}
BENCHMARK_TASKS = tuple(BENCHMARKS)

_BYTE_VOCAB_SIZE = 3 + 256 + BYTE_EXTRA_IDS
for _name in DOWNSTREAM_TASKS + BENCHMARK_TASKS:
    _metrics = DOWNSTREAM_METRICS[_name] if _name in DOWNSTREAM_METRICS else BENCHMARKS[_name].metrics
    _tfds = BENCHMARKS[_name].tfds_name if _name in BENCHMARKS else None
    TASK_INFO[f"switchrepro_{_name}"] = TaskInfo("spm8k", 8192, 0.0, 0.0, "text2text", _metrics, _tfds)
    TASK_INFO[f"switchrepro_byte_{_name}"] = TaskInfo("bytes", _BYTE_VOCAB_SIZE, 0.0, 0.0, "text2text", _metrics,
                                                      _tfds)
del _name, _metrics, _tfds
TASKS = tuple(TASK_INFO)
