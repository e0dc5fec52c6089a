"""Fine-tuning on downstream text-to-text tasks (paper section 4.1, Tables 4 and 5).

A fine-tuning run is an ordinary training run (trainer.train) with three differences:

* it starts from a pre-trained run's parameters (`check_same_shapes` first: every tensor must match in
  path and shape), with a fresh optimizer;
* its data is a text-to-text task (DataConfig.task, e.g. switchrepro_byte_sentiment): packed training rows,
  and an unpacked validation split whose original texts sit beside the arrays;
* every evaluation also decodes validation examples greedily (`DownstreamEval`) and scores them with T5's
  metric functions, in a subprocess (t5 imports TensorFlow; the training process never does). The run's
  result is its peak validation score over evaluations (`peak_score`), as in the paper.

Predictions are written to RUN_DIR/predictions/step_<N>.jsonl, so a score can be checked by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import numpy as np

from switchrepro.config import ExperimentConfig
from switchrepro.data import TASK_INFO, task_info
from switchrepro.data.downstream import resolve_task, score_in_subprocess
from switchrepro.data.vocab import decode_ids, load_sentencepiece
from switchrepro.model.decoding import greedy_decode

PREDICTIONS_DIR = "predictions"


def downstream_name(data_task: str) -> str:
    """The scorer's name for a seqio task (switchrepro_byte_sentiment -> sentiment, switchrepro_glue_sst2 ->
    glue_sst2). Raises ValueError for a task that is not text-to-text, naming the ones that are."""
    info = TASK_INFO.get(data_task)
    if info is None or info.kind != "text2text":
        offline = ", ".join(n for n, i in TASK_INFO.items() if i.kind == "text2text" and i.tfds_name is None)
        raise ValueError(f"{data_task!r} is not a downstream (text-to-text) task; set DataConfig.task to one of: "
                         f"{offline}, or a TFDS benchmark (switchrepro_glue_sst2, ...)")
    return resolve_task(data_task)


def primary_metric(metrics: Sequence[str]) -> str:
    """The score a run is ranked by: the task's first metric, which TASK_INFO lists as the paper reports it
    (accuracy; exact match for SQuAD and closed-book QA; Rouge-2 for summarisation)."""
    if not metrics:
        raise ValueError("a downstream task needs at least one metric")
    return metrics[0]


def peak_score(rows: Sequence[Dict[str, Any]], key: str = "eval_score") -> Optional[Dict[str, Any]]:
    """The best evaluation of a run: {"step", "value"} of the largest `key` over the metrics rows; ties go
    to the earliest step. None when no row has a finite `key`."""
    best = None
    for row in rows:
        value = row.get(key)
        if value is None or not np.isfinite(value) or "event" in row:
            continue
        if best is None or value > best["value"]:
            best = {"step": int(row["step"]), "value": float(value)}
    return best


def check_same_shapes(pretrained: Any, params: Any) -> None:
    """Raise ValueError naming the first difference when the two parameter trees differ in paths or shapes
    (fine-tuning continues the pre-trained model itself: nothing may be added, dropped or reshaped)."""
    flat = lambda tree: {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(tree)}
    have, want = flat(pretrained), flat(params)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise ValueError(f"the pre-trained model and the fine-tuning model differ in parameters (only in the "
                         f"fine-tuning model: {missing[:3]}; only in the pre-trained one: {extra[:3]}); fine-tune "
                         "with the pre-trained run's ModelConfig, changing only dropout rates and capacity factors")
    for name in sorted(want):
        if have[name] != want[name]:
            raise ValueError(f"parameter {name} is {have[name]} in the pre-trained model but {want[name]} in the "
                             "fine-tuning model; fine-tune with the pre-trained run's ModelConfig")


class DownstreamEval:
    """At each evaluation: decode validation examples greedily, score them, save the predictions.

    Args:
      cfg: the fine-tuning ExperimentConfig (DataConfig.task a text-to-text task; FinetuneConfig set).
      model: its Transformer.
      eval_cache: the validation `switchrepro.data.cache.Cache` (unpacked: one example per row).
      texts: `cache.load_texts` of it: [{"inputs", "targets"}] in row order.
      run_dir: predictions go to run_dir/predictions/step_<N>.jsonl.
      scorer: (task, targets, predictions) -> {metric: value}; default: T5's metrics in a subprocess.
    """

    def __init__(self, cfg: ExperimentConfig, model, eval_cache, texts: List[Dict[str, str]], run_dir: Path,
                 scorer: Optional[Callable[[str, List[str], List[str]], Dict[str, float]]] = None):
        if len(texts) != eval_cache.num_examples:
            raise ValueError(f"{len(texts)} validation texts for {eval_cache.num_examples} rows: rebuild the cache")
        self.cfg, self.model, self.run_dir = cfg, model, Path(run_dir)
        self.task = downstream_name(cfg.data.task)
        info = task_info(cfg.data.task)
        self.vocabulary, self.metric = info.vocabulary, primary_metric(info.metrics)
        n = cfg.finetune.decode_examples or eval_cache.num_examples
        self.inputs = np.asarray(eval_cache.arrays["encoder_input_tokens"][:n], np.int32)
        self.texts = texts[:n]
        self.scorer = score_in_subprocess if scorer is None else scorer
        self._sp = None

    def predictions(self, params) -> List[str]:
        if self.vocabulary == "spm8k" and self._sp is None:
            self._sp = load_sentencepiece()
        batch, out = self.cfg.data.batch_size, []
        for start in range(0, len(self.inputs), batch):
            rows = self.inputs[start:start + batch]
            real = len(rows)
            if real < batch:  # one compiled shape: pad the last batch with empty rows
                rows = np.concatenate([rows, np.zeros((batch - real, rows.shape[1]), np.int32)])
            tokens = np.asarray(greedy_decode(self.model, params, rows, self.cfg.data.targets_length))[:real]
            out.extend(decode_ids(t, self.vocabulary, self._sp) for t in tokens)
        return out

    def __call__(self, params, step: int) -> Dict[str, float]:
        predictions = self.predictions(params)
        targets = [t.get("answers", t["targets"]) for t in self.texts]  # QA: every acceptable answer
        scores = self.scorer(self.task, targets, predictions)
        folder = self.run_dir / PREDICTIONS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"step_{step}.jsonl").open("w") as f:
            for text, pred in zip(self.texts, predictions, strict=True):
                f.write(json.dumps({"inputs": text["inputs"], "target": text["targets"], "prediction": pred}) + "\n")
        row = {f"eval_{k}": round(float(v), 4) for k, v in scores.items()}
        row["eval_score"] = round(float(scores[self.metric]), 4)
        row["eval_decoded_examples"] = len(predictions)
        return row
