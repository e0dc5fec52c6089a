"""Run a paper table: the planned runs -> trained runs -> pandas DataFrames.

Runs are idempotent and resumable. A finished run (its metrics.jsonl ends with a "done" or "diverged"
event) is never recomputed; an interrupted one resumes from its last checkpoint. Stopping a table half-way
and running it again is safe and cheap.

Several processes may run one table at once (two `make reproduce`, or `--rows` processes that share a
row): a process trains a run only while it holds that run directory's lock. A run another process holds
is put off until the others are done, then waited for; the results files are written under a lock too.

Planning lives in `switchrepro.experiments.planning`, the saved results in `switchrepro.experiments.store`;
this module re-exports their names so that `runner` is the one import for running a table.

The collected frames follow the contract in `switchrepro.experiments.claims`:
  results: one row per (row, seed); curves: one row per evaluation; loads: per-layer expert load;
  languages (multilingual tables): one row per (evaluation, language), see `collect_languages`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from switchrepro.config.store import config_hash, without_neutral_additions
from switchrepro.config.tables import PruningSpec, TableSpec
from switchrepro.experiments.planning import (
    CPU_FORWARD_GFLOPS,
    ConfigBuilder,
    PlannedRun,
    dry_run_table,
    measured_minutes,
    plan,
    run_status,
    slug,
    training_order,
)
from switchrepro.experiments.store import (
    PRUNING_COLUMNS,
    ResultsError,
    apply_speed,
    load_languages,
    load_pruning,
    load_saved,
    load_speed,
    results_lock,
    save,
    save_speed,
)
from switchrepro.train import checkpoint, pruning_eval, trainer
from switchrepro.train.finetune import peak_score
from switchrepro.train.host import layout as host_layout
from switchrepro.train.metrics_log import read_metrics
from switchrepro.train.run_lock import run_dir_lock

__all__ = [  # the re-exported names as well as this module's own
    "CPU_FORWARD_GFLOPS", "ConfigBuilder", "PRUNING_COLUMNS", "PlannedRun", "PruningError", "ResultsError",
    "SourceRunError", "apply_speed", "collect", "collect_languages", "collect_pruning", "config_hash",
    "dry_run_table", "ensure_pruning", "execute", "export_source_params", "exported_params", "finished_twin",
    "has_checkpoint", "load_languages", "load_pruning", "load_saved", "load_speed", "measured_minutes", "plan",
    "results_lock", "reuse", "reuse_finished_twin", "run_status", "save", "save_speed", "slug", "source_params",
    "training_order", "without_neutral_additions",
]


def finished_twin(run: PlannedRun, logs_dir: Optional[Path] = None,
                  params_root: Optional[Path] = None) -> Optional[Path]:
    """A finished run with the same config hash (and so the same seed and metrics): in another table at
    the same scale (e.g. T5-Base in both table1 and scaling), else among the committed logs of finished
    runs, `<results>/<scale>/logs/<table>/<run>/` (so a fresh clone continues a table instead of
    retraining what is already in results/); None if there is none.

    Among several twins, over both places: this table's own run first; then the run whose parameters were
    exported to `params_root` (its directory has the export's name), since the rows that start from or
    learn from this configuration used those parameters; then a run over a copy of one; then one in the
    runs directory before a committed one; then by path."""
    roots = [run.run_dir.parent.parent] + ([Path(logs_dir)] if logs_dir is not None else [])
    table = run.run_dir.parent.name
    exported = exported_params(run, params_root)

    def preference(found: Tuple[int, Path]):
        root_index, d = found
        return (d.parent.name != table, exported is not None and d.name != exported.name,
                (d / "reused_from.txt").exists(), root_index, str(d))

    # One ranking over both roots: this table's committed run beats another table's copy in runs/ (ranking
    # each root alone let a twin copied into runs/ by an earlier table replace this table's own log).
    found = [(i, d) for i, root in enumerate(roots) for d in root.glob(f"*/*-s{run.seed}-{run.config_hash}")]
    for _, d in sorted(found, key=preference):
        if d == run.run_dir or not d.is_dir():
            continue
        if run_status(dataclasses.replace(run, run_dir=d)) in ("done", "diverged"):
            return d
    return None


def reuse(run: PlannedRun, twin: Path) -> None:
    """Copies a finished twin's logs and configs (not its checkpoints, nor its lock file) into run.run_dir."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    for f in twin.iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, run.run_dir / f.name)
    (run.run_dir / "reused_from.txt").write_text(f"{twin}\n")


def _undo_reuse(run: PlannedRun) -> None:
    """Removes the files `reuse` copied into run.run_dir (it copies no dot files, so the lock stays)."""
    for f in run.run_dir.iterdir():
        if f.is_file() and not f.name.startswith("."):
            f.unlink()


def reuse_finished_twin(run: PlannedRun, logs_dir: Optional[Path] = None,
                        params_root: Optional[Path] = None) -> Optional[Path]:
    """For a run not yet started: copy its finished twin (see finished_twin) into run.run_dir and return
    the twin's path; None, touching nothing, if the run has started or has no finished twin."""
    twin = finished_twin(run, logs_dir, params_root) if run_status(run) == "new" else None
    if twin is not None:
        reuse(run, twin)
    return twin


def execute(runs: Sequence[PlannedRun], train_fn: Callable[[PlannedRun], None],
            echo: Callable[[str], None] = print, logs_dir: Optional[Path] = None,
            params_root: Optional[Path] = None) -> Dict[str, float]:
    """Trains every run that is not finished; returns wall seconds spent per run key. A new run whose
    identical twin already finished (in another table, or in the committed logs under `logs_dir`) is
    copied from it, not retrained.

    Each run is trained while holding its directory's lock. A run that another process is training is
    put off: the other runs go first, then this process waits for that one and trains it only if the
    other process stopped before finishing it.

    A run that other runs start from or learn from (a source: a pre-trained model, a teacher) must leave
    its parameters behind: once finished, they are exported to `params_root/<run dir name>/` (see
    `exported_params`), and such a run is re-trained, not copied, when neither an export nor a checkpoint of
    it exists. Before a run that needs a source trains, the source is finished (or waited for) first.
    """
    spent: Dict[str, float] = {}
    labels = {run.run_dir: f"[{i}/{len(runs)}] {run.row.name} seed {run.seed} ({run.config_hash})"
              for i, run in enumerate(runs, 1)}

    def one(run: PlannedRun, by_other: bool = False) -> None:
        for src in run.sources:  # finished first, by this process or (waited for) by another
            with run_dir_lock(src.run_dir):
                _execute_one(src, labels.get(src.run_dir, f"{src.row.name} seed {src.seed} ({src.config_hash})"),
                             train_fn, echo, spent, logs_dir=logs_dir, params_root=params_root, keep_params=True,
                             quiet=True)
        _execute_one(run, labels[run.run_dir], train_fn, echo, spent, by_other=by_other, logs_dir=logs_dir,
                     params_root=params_root, keep_params=run.keeps_params)

    put_off = []
    for run in runs:
        lock = run_dir_lock(run.run_dir)
        if not lock.try_acquire():
            echo(f"{labels[run.run_dir]}: being trained by {lock.holder()}; training the other rows first")
            put_off.append(run)
            continue
        try:
            one(run)
        finally:
            lock.release()
    for run in put_off:
        lock = run_dir_lock(run.run_dir)
        if not lock.try_acquire():
            echo(f"{labels[run.run_dir]}: waiting for {lock.holder()} to finish it")
            lock.acquire()
        try:
            one(run, by_other=True)
        finally:
            lock.release()
    return spent


class SourceRunError(RuntimeError):
    """A run that others start from or learn from cannot give its parameters; the message says what to do."""


def exported_params(run: PlannedRun, params_root: Optional[Path]) -> Optional[Path]:
    """The exported final parameters of `run` (any table's export of the same configuration hash) under
    `params_root` (results/<scale>/params), or None."""
    if params_root is None or not Path(params_root).is_dir():
        return None
    for d in sorted(Path(params_root).glob(f"*-s{run.seed}-{run.config_hash}")):
        if (d / "step.txt").exists():
            return d
    return None


def has_checkpoint(run: PlannedRun) -> bool:
    folder = run.run_dir / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def export_source_params(run: PlannedRun, params_root: Path, echo: Callable[[str], None] = print,
                         from_dir: Optional[Path] = None) -> Path:
    """Exports a finished source run's final parameters from its latest checkpoint (in its run directory,
    or in `from_dir`, a finished twin's) to params_root."""
    _, params, step = trainer.restore_params(run.config, from_dir or run.run_dir, echo=echo)
    dest = Path(params_root) / run.run_dir.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.export_params(dest, params, step)
    return dest


def source_params(run: PlannedRun, params_root: Optional[Path], echo: Callable[[str], None] = print):
    """(model, params, step) of a finished source run: its export if there is one, else its checkpoint."""
    status = run_status(run)
    if status == "diverged":
        raise SourceRunError(f"{run.row.name} seed {run.seed} diverged ({run.run_dir}), so the rows that start from "
                             "it or learn from it cannot run; change its configuration")
    exported = exported_params(run, params_root)
    if exported is None and not has_checkpoint(run):
        raise SourceRunError(f"{run.row.name} seed {run.seed} has no exported parameters and no checkpoint in "
                             f"{run.run_dir}; rerun the table to train it")
    return trainer.load_params(run.config, run.run_dir, exported=exported, echo=echo)


def _execute_one(run: PlannedRun, label: str, train_fn: Callable[[PlannedRun], None], echo: Callable[[str], None],
                 spent: Dict[str, float], by_other: bool = False, logs_dir: Optional[Path] = None,
                 params_root: Optional[Path] = None, keep_params: bool = False, quiet: bool = False) -> None:
    """One run, with its lock held: skip it if finished, copy a finished twin, or train (resume) it. With
    `keep_params` (other runs start from it), its parameters are exported once it is finished."""
    status = run_status(run)
    need_params = keep_params and params_root is not None and exported_params(run, params_root) is None
    if status == "done" and need_params and not has_checkpoint(run):
        if not (run.run_dir / "reused_from.txt").exists():
            raise SourceRunError(f"{run.run_dir} is finished but has no checkpoint left, and other rows start from "
                                 "its parameters: delete that directory to re-train it")
        echo(f"{label}: its logs were copied from a finished twin, but later rows need its parameters; re-training it")
        _undo_reuse(run)
        status = "new"
    if status in ("done", "diverged"):
        if not quiet:
            echo(f"{label}: {status}{' by the other process' if by_other else ''}, not recomputed")
        if need_params and status == "done":
            echo(f"{label}: parameters exported to {export_source_params(run, params_root, echo)}")
        return
    # local twins only, when parameters are needed
    twin = reuse_finished_twin(run, None if need_params else logs_dir, params_root)
    if twin is not None and need_params and not has_checkpoint(dataclasses.replace(run, run_dir=twin)):
        _undo_reuse(run)  # that twin cannot give parameters: train instead
        twin = None
    if twin is not None:
        echo(f"{label}: identical to the finished {twin}, reused")
        if need_params:
            echo(f"{label}: parameters exported to {export_source_params(run, params_root, echo, from_dir=twin)}")
        return
    echo(f"{label}: {'resuming' if status == 'partial' else 'training'} in {run.run_dir}")
    t0 = time.time()
    train_fn(run)
    spent[run.run_dir.name] = time.time() - t0
    if need_params and run_status(run) == "done":
        echo(f"{label}: parameters exported to {export_source_params(run, params_root, echo)}")


# ------------------------------------------------------------------------------------------- collect


def collect(spec: TableSpec, scale: str, runs: Sequence[PlannedRun]) -> Tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Reads each finished run's metrics.jsonl into (results, curves, loads)."""
    results, curves, loads = [], [], {}
    for run in runs:
        if run_status(run) not in ("done", "diverged"):
            continue
        log = read_metrics(run.run_dir / "metrics.jsonl")
        start = next(r for r in log if r.get("event") == "start")
        steps = [r for r in log if "event" not in r]
        evals = [r for r in steps if "eval_neg_log_perplexity" in r]
        diverged = next((r["step"] for r in log if r.get("event") == "diverged"), None)
        last = steps[-1] if steps else {}
        final_eval = evals[-1] if evals and diverged is None else {}
        moe = run.config.model.moe
        peak = (peak_score(steps) if diverged is None else None) or {}
        results.append({
            "table": spec.name, "scale": scale, "row": run.row.name, "seed": run.seed,
            "config_hash": run.config_hash, "params": start["params"],
            "flops_per_example": start["flops_per_example"],
            "num_experts": moe.num_experts if moe else 1,
            "capacity_factor": moe.capacity_factor_train if moe else np.nan,
            "steps": run.config.train.steps, "final_step": last.get("step", 0),
            "final_nlp": final_eval.get("eval_neg_log_perplexity", np.nan),
            "diverged_at": float(diverged) if diverged is not None else np.nan,
            "examples_per_sec": last.get("examples_per_sec", np.nan),
            "wall_seconds": last.get("wall_seconds", np.nan),
            "epochs": start["epochs"],
            "fraction_dropped": final_eval.get("eval_fraction_dropped", np.nan),
            # The CPU and thread layout of the run's first process: compare rows only within one layout.
            "host": host_layout(start["host"]) if "host" in start else np.nan,
            # Fine-tuning and distillation (tables 4 to 8): where the run started, and its downstream score.
            "stage": run.row.stage, "task": run.config.data.task,
            "pretrained_row": run.row.pretrained or "", "teacher_row": run.row.teacher or "",
            "peak_score": peak.get("value", np.nan), "peak_step": peak.get("step", np.nan),
        })
        for r in evals:
            curves.append({"table": spec.name, "row": run.row.name, "seed": run.seed, "step": r["step"],
                           "wall_seconds": r["wall_seconds"], "nlp": r["eval_neg_log_perplexity"],
                           **({"score": r["eval_score"]} if "eval_score" in r else {})})
        if final_eval.get("eval_moe_layers") and run.seed == 0:
            loads[run.row.name] = {name: m["tokens_per_expert"] for name, m in final_eval["eval_moe_layers"].items()}
    return pd.DataFrame(results), pd.DataFrame(curves), loads


def collect_languages(spec: TableSpec, runs: Sequence[PlannedRun]) -> pd.DataFrame:
    """Per-language held-out quality of the finished runs that evaluate per language (multilingual tasks):
    one row per (run, evaluation, language) with columns table, row, seed, step, lang, nlp. Empty if none."""
    records = []
    for run in runs:
        if run_status(run) not in ("done", "diverged"):
            continue
        for r in read_metrics(run.run_dir / "metrics.jsonl"):
            if "event" in r or "eval_languages" not in r:
                continue
            records += [{"table": spec.name, "row": run.row.name, "seed": run.seed, "step": r["step"], "lang": lang,
                         "nlp": nlp} for lang, nlp in r["eval_languages"].items()]
    return pd.DataFrame(records, columns=["table", "row", "seed", "step", "lang", "nlp"])


class PruningError(ValueError):
    """A run's model or data cannot be pruned as its table asks; the message is one line naming the run."""


def ensure_pruning(run: PlannedRun, pruning: PruningSpec, echo: Callable[[str], None] = print) -> Optional[dict]:
    """A finished run's context-pruning record (train/pruning_eval.py): its pruning.json if that already
    answers `pruning`, else measured now from its checkpoint. None for a diverged or unfinished run, or one
    without a checkpoint (its logs copied from a twin without the record). PruningError for a model or data
    that cannot be pruned this way."""
    if run_status(run) != "done":
        return None
    saved = run.run_dir / pruning_eval.PRUNING_FILE
    if saved.exists():
        try:
            record = json.loads(saved.read_text())
        except ValueError:
            record = {}  # damaged: measure again
        if pruning_eval.up_to_date(record, pruning.budgets, pruning.contexts, pruning.examples):
            return record
    if not has_checkpoint(run):
        return None
    t0 = time.time()
    try:
        record = pruning_eval.measure(run.config, run.run_dir, pruning.budgets, pruning.contexts, pruning.examples,
                                      echo=lambda m: None)
    except ValueError as e:
        raise PruningError(f"{run.row.name} seed {run.seed}: {e}") from None
    echo(f"{run.row.name} seed {run.seed}: context pruning measured in {time.time() - t0:.0f} s")
    return record



def collect_pruning(spec: TableSpec, scale: str, runs: Sequence[PlannedRun],
                    echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Held-out quality under context pruning of the finished runs (ensure_pruning: measured now where the
    record is missing): one row per (run, context, budget) for the budgets below each context and the
    context itself (no pruning), with columns PRUNING_COLUMNS. Empty for a table without `pruning` at this
    scale."""
    p = (spec.pruning or {}).get(scale)
    records = []
    for run in runs if p is not None else ():
        record = ensure_pruning(run, p, echo)
        for context in p.contexts if record is not None else ():
            for budget in pruning_eval.passes(p.budgets, context):
                records.append({"table": spec.name, "row": run.row.name, "seed": run.seed, "context": context,
                                "budget": budget, "nlp": pruning_eval.quality(record, budget, context)})
    return pd.DataFrame(records, columns=PRUNING_COLUMNS)

