"""Offline fine-tuning tasks at run time: reading the committed files, and T5's metrics for them.

Four tasks, each a fixed train and validation split committed as
embedded/downstream/<task>/{train,validation}.jsonl.gz (records {"id", "inputs", "targets"}) and pinned by
sha256 in embedded/downstream/manifest.json:

  sentiment   SST-2 stand-in (UCI "Sentiment Labelled Sentences"): "sst2 sentence: <text>" -> positive /
              negative; accuracy.
  spam        SpamAssassin e-mails of the embedded corpus: "spam email: <body>" -> spam / ham; accuracy.
  cloze_qa    SQuAD-format extractive QA: "question: <sentence with _____> context: <paragraph>" -> the
              span; em / f1.
  wordnet_qa  closed-book QA in TriviaQA's role: "trivia question: what is <noun>?" -> its WordNet 3.0
              gloss; em / f1.

How the files are built from their pinned sources is build-time code, data/build/downstream.py
(`switchrepro data build`); nothing here imports it.

    iter_examples(task, split), downstream_file(task, split), file_entry(task, split)   the committed files
    score(task, targets, predictions)          T5's metric functions (imports t5: subprocesses only)
    score_in_subprocess(task, targets, predictions)   the same, TF-free, for the training process
    python -m switchrepro.data.downstream score --task TASK FILE   (FILE: jsonl of {"target", "prediction"})

Nothing here imports TensorFlow at module level.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from switchrepro.data import BENCHMARK_TASKS, BENCHMARKS, DOWNSTREAM_TASKS, DataError
from switchrepro.data.corpus import SPLITS, embedded_dir, iter_shard
from switchrepro.data.tfprocess import last_error_line, subprocess_env

DOWNSTREAM_DIR = "downstream"
MANIFEST = "downstream/manifest.json"  # relative to the embedded dir, like the corpus shards' paths


# --------------------------------------------------------------------------- files and manifest


def downstream_file(task: str, split: str, root: Optional[Path] = None) -> Path:
    _check_task_split(task, split)
    return embedded_dir(root) / DOWNSTREAM_DIR / task / f"{split}.jsonl.gz"


def _check_task_split(task: str, split: str) -> None:
    if task not in DOWNSTREAM_TASKS:
        raise DataError(f"unknown downstream task {task!r}; choose one of {', '.join(DOWNSTREAM_TASKS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {SPLITS}")


def load_downstream_manifest(root: Optional[Path] = None) -> dict:
    path = embedded_dir(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} is missing: restore it with `git checkout -- switchrepro/data/embedded` or "
                        "rebuild with `switchrepro data build`")
    return json.loads(path.read_text())


def file_entry(task: str, split: str, root: Optional[Path] = None) -> dict:
    """The manifest entry {"path", "task", "split", "examples", "sha256", "size"} of a task's split."""
    _check_task_split(task, split)
    for entry in load_downstream_manifest(root)["files"]:
        if entry["task"] == task and entry["split"] == split:
            return entry
    raise DataError(f"{MANIFEST} has no {task}/{split} entry; rebuild with `switchrepro data build`")


def iter_examples(task: str, split: str, root: Optional[Path] = None) -> Iterator[dict]:
    """Records {"id", "inputs", "targets"} of a committed task split, in file order."""
    path = downstream_file(task, split, root)
    if not path.is_file():
        raise DataError(f"{path} is missing: restore it with `git checkout -- switchrepro/data/embedded` or "
                        "rebuild with `switchrepro data build`")
    yield from iter_shard(path)


# --------------------------------------------------------------------------- scoring


def resolve_task(task: str) -> str:
    """The scorer's name for a task: a DOWNSTREAM_TASKS or BENCHMARK_TASKS name, given either that name or
    its seqio task name (switchrepro_[byte_]<name>)."""
    for prefix in ("", "switchrepro_byte_", "switchrepro_"):
        if task.startswith(prefix) and task[len(prefix):] in DOWNSTREAM_TASKS + BENCHMARK_TASKS:
            return task[len(prefix):]
    raise DataError(f"unknown downstream task {task!r}; choose one of {', '.join(DOWNSTREAM_TASKS)} (offline) or "
                    f"a TFDS benchmark: {', '.join(BENCHMARK_TASKS)}")


def _answer_lists(targets: Sequence) -> List[List[str]]:
    """T5's QA metrics take every acceptable answer per question: a plain string is one answer."""
    return [[t] if isinstance(t, str) else [str(a) for a in t] for t in targets]


def glue_config(name: str):
    """(tfds builder config, GLUE/SuperGLUE metric key) of a glue_* / super_glue_* benchmark."""
    import tensorflow_datasets as tfds  # imports TensorFlow: only the scoring subprocess gets here

    bench = BENCHMARKS[name]
    family, rest = bench.tfds_name.split("/", 1)
    config = rest.split(":")[0]
    builder = tfds.text.glue.Glue if family == "glue" else tfds.text.super_glue.SuperGlue
    metric_key = "mnli_mismatched" if name == "glue_mnli_mismatched" else config
    return builder.builder_configs[config], metric_key


def metric_setup(task: str) -> Tuple[Callable, list]:
    """(postprocess_fn, metric_fns) of a task as T5's task registry defines them (imports t5).

    postprocess_fn(text, example=None, is_target=False) maps a decoded string (or a target) to what the metric
    functions compare; for QA tasks targets become lists of answers.
    """
    # t5 imports TensorFlow: only the scoring subprocess (score_in_subprocess) gets here.
    from t5.data import glue_utils
    from t5.evaluation import metrics

    name = resolve_task(task)

    def identity(text, example=None, is_target=False):
        return text

    def answers(text, example=None, is_target=False):
        # as t5.data.postprocessors.qa, but from the target itself when no example (with "answers") is given
        if not is_target:
            return text
        if example is not None and "answers" in example:
            return [a.decode() if isinstance(a, bytes) else str(a) for a in example["answers"]]
        return _answer_lists([text])[0]

    if name in ("sentiment", "spam"):
        return identity, [metrics.accuracy]
    if name in ("cloze_qa", "wordnet_qa", "squad"):
        return answers, [metrics.squad]
    if name == "trivia_qa":
        return answers, [metrics.trivia_qa]
    if name in ("cnn_dailymail", "xsum"):
        return identity, [metrics.rouge]
    config, metric_key = glue_config(name)
    get_metric = glue_utils.get_glue_metric if name.startswith("glue_") else glue_utils.get_super_glue_metric
    return glue_utils.get_glue_postprocess_fn(config), list(get_metric(metric_key))


def score(task: str, targets: Sequence, predictions: Sequence[str]) -> Dict[str, float]:
    """T5's metrics of decoded predictions against targets, e.g. {"accuracy": 66.67} or {"em": .., "f1": ..}.

    Args:
      task: a DOWNSTREAM_TASKS or BENCHMARK_TASKS name, or its seqio task name.
      targets: the reference strings; for QA tasks an item may also be a list of acceptable answers.
      predictions: the model's decoded strings, aligned with targets.

    Imports t5 (and TensorFlow): call it in a subprocess (score_in_subprocess) from the training process.
    """
    if len(targets) != len(predictions):
        raise DataError(f"{len(targets)} targets but {len(predictions)} predictions; they must be aligned")
    if not targets:
        raise DataError("nothing to score: no targets")
    postprocess, metric_fns = metric_setup(task)
    qa = resolve_task(task) in ("cloze_qa", "wordnet_qa", "squad", "trivia_qa")
    if qa:
        targets = _answer_lists(targets)
    else:
        targets = [postprocess(t, is_target=True) for t in targets]
    predictions = [postprocess(p, is_target=False) for p in predictions]
    out = {}
    for fn in metric_fns:
        out.update({k: float(v) for k, v in fn(targets, predictions).items()})
    return out


def score_in_subprocess(task: str, targets: Sequence, predictions: Sequence[str],
                        timeout: Optional[float] = None) -> Dict[str, float]:
    """score() run in `python -m switchrepro.data.downstream score` (CPU only), so the caller never imports
    TensorFlow. DataError carries the subprocess's last error line when it fails."""
    resolve_task(task)  # an unknown name fails here, before any process starts
    if len(targets) != len(predictions):
        raise DataError(f"{len(targets)} targets but {len(predictions)} predictions; they must be aligned")
    with tempfile.TemporaryDirectory(prefix="switchrepro-score-") as tmp:
        path = Path(tmp) / "predictions.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for t, p in zip(targets, predictions, strict=True):
                f.write(json.dumps({"target": t, "prediction": p}, ensure_ascii=False) + "\n")
        cmd = [sys.executable, "-m", "switchrepro.data.downstream", "score", "--task", task, str(path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise DataError(f"scoring {task} took more than {timeout:.0f}s; it was stopped") from e
    if proc.returncode != 0:
        raise DataError(f"scoring {task} failed (exit {proc.returncode}): {last_error_line(proc.stderr)}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:
        scores = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise DataError(f"scoring {task} printed no JSON result: {last_error_line(proc.stdout + proc.stderr)}") \
            from e
    return {k: float(v) for k, v in scores.items()}


# --------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m switchrepro.data.downstream",
                                description="Score predictions with T5's metrics (the subprocess of "
                                            "score_in_subprocess).")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="moved: `switchrepro data build` (or `python -m switchrepro.data.build "
                                 "--only downstream`) rebuilds embedded/downstream")
    s = sub.add_parser("score", help="print T5's metrics of a jsonl of {target, prediction} as one JSON line")
    s.add_argument("--task", required=True)
    s.add_argument("file", type=Path)
    args = p.parse_args(argv)
    if args.command == "build":  # the builders are build-time code (data/build/), never imported at run time
        print("the downstream build moved: run `python -m switchrepro.data.build --only downstream`", file=sys.stderr)
        return 2
    try:
        rows = [json.loads(line) for line in args.file.read_text(encoding="utf-8").splitlines() if line.strip()]
        scores = score(args.task, [r["target"] for r in rows], [r["prediction"] for r in rows])
    except Exception as e:  # the parent reports our last stderr line
        if not isinstance(e, DataError):
            traceback.print_exc()
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(scores, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
