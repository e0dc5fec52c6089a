"""Run a paper table: rows x seeds -> trained runs -> pandas DataFrames.

Runs are idempotent and resumable. Each (row, seed) is keyed by a hash of its full configuration;
its run directory is `<runs_dir>/<scale>/<table>/<row>-s<seed>-<hash>`. A finished run (its
metrics.jsonl ends with a "done" or "diverged" event) is never recomputed; an interrupted one
resumes from its last checkpoint. Stopping a table half-way and running it again is safe and cheap.

Several processes may run one table at once (two `make reproduce`, or `--rows` processes that share a
row): a process trains a run only while it holds that run directory's lock. A run another process holds
is put off until the others are done, then waited for; the results files are written under a lock too.

The collected frames follow the contract in `switchrepro.experiments.claims`:
  results: one row per (row, seed); curves: one row per evaluation; loads: per-layer expert load;
  languages (multilingual tables): one row per (evaluation, language), see `collect_languages`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from switchrepro.config import DamagedFileError, ExperimentConfig
from switchrepro.experiments.spec import PruningSpec, Row, TableSpec
from switchrepro.train.finetune import peak_score
from switchrepro.train.host import layout as host_layout
from switchrepro.train.metrics_log import read_metrics
from switchrepro.train.run_lock import Lock, run_dir_lock

# Forward GFLOP/s a whole tiny model sustained in training on the 2-core CPU VM (76.6 examples/s x
# 236 MFLOPs/example, README first run); used only for --dry-run time estimates.
CPU_FORWARD_GFLOPS = 18.0

# (gin files, bindings) -> (config, operative gin text); switchrepro.cli.parse_config. A row that starts
# from or learns from another binds FinetuneConfig.pretrained / DistillConfig.teacher to that run's hash.
ConfigBuilder = Callable[[Sequence[str], Sequence[str]], Tuple[ExperimentConfig, str]]


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One (row, seed) of a table. `pretrained` and `teacher` are the planned runs (same seed) whose
    trained parameters this run starts from or learns from; their hashes are part of this run's config."""

    row: Row
    seed: int
    config: ExperimentConfig
    operative_gin: str
    config_hash: str
    run_dir: Path
    pretrained: Optional["PlannedRun"] = None
    teacher: Optional["PlannedRun"] = None
    keeps_params: bool = False  # other rows of its table start from or learn from it: export its parameters

    @property
    def sources(self) -> Tuple["PlannedRun", ...]:
        return tuple(r for r in (self.pretrained, self.teacher) if r is not None)


_ADDED_LATER = (("train", "cooldown_steps", 0), ("model.moe", "grouped_matmul", "auto"), ("", "distill", None),
                ("", "finetune", None), ("model", "attention", "standard"),
                ("model", "architecture", "encoder_decoder"), ("model.moe", "expert_matmul", "auto"))


def without_neutral_additions(d: dict) -> dict:
    """A config dict without the options added after runs were committed, where they hold their
    neutral value: old runs keep their keys, and their saved config.json still matches."""
    d = json.loads(json.dumps(d))
    for section, name, neutral in _ADDED_LATER:
        part = d
        for key in filter(None, section.split(".")):  # "" is the top level
            part = part.get(key) or {}  # model.moe is None in a dense model
        if name in part and part[name] == neutral:
            part.pop(name)
    return d


def config_hash(cfg: ExperimentConfig) -> str:
    """A stable hash of everything that determines a run's metrics (progress-bar flags excluded)."""
    d = dataclasses.asdict(cfg)
    d["train"].pop("progress", None)
    return hashlib.sha256(json.dumps(without_neutral_additions(d), sort_keys=True).encode()).hexdigest()[:10]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_")


def plan(spec: TableSpec, scale: str, build: ConfigBuilder, runs_dir: Path, seeds: Optional[int] = None,
         rows: Optional[Sequence[str]] = None) -> List[PlannedRun]:
    """The runs of `spec` at `scale`: each selected row x each seed, with its config and run directory.
    Rows that a selected row starts from or learns from are planned too, before it (same seed)."""
    selected = spec.with_sources(rows) if rows else spec.default_rows(scale)
    n_seeds = seeds or spec.seeds[scale]
    source_rows = {s for r in spec.rows for s in r.sources}
    out: List[PlannedRun] = []
    planned: Dict[Tuple[str, int], PlannedRun] = {}
    for row in selected:
        model_file = spec.models[scale][row.model]
        for seed in range(n_seeds):
            pretrained = planned[(row.pretrained, seed)] if row.pretrained else None
            teacher = planned[(row.teacher, seed)] if row.teacher else None
            bindings = [*spec.schedule_bindings(row, scale), *spec.task_binding(row, scale), *row.bindings,
                        f"TrainConfig.seed = {seed}",
                        *([f"FinetuneConfig.pretrained = '{pretrained.config_hash}'"] if pretrained else []),
                        *([f"DistillConfig.teacher = '{teacher.config_hash}'"] if teacher else [])]
            cfg, operative = build([model_file], bindings)
            h = config_hash(cfg)
            run_dir = runs_dir / scale / spec.name / f"{slug(row.name)}-s{seed}-{h}"
            run = PlannedRun(row, seed, cfg, operative, h, run_dir, pretrained=pretrained, teacher=teacher,
                             keeps_params=row.name in source_rows)
            planned[(row.name, seed)] = run
            out.append(run)
    return out


def training_order(runs: Sequence[PlannedRun], first_rows: Sequence[str] = ()) -> List[PlannedRun]:
    """The order to train `runs` in: every seed of `first_rows` (a table's positive control) first, since
    no other verdict counts until it passes; then every seed of the rows that other rows start from or
    learn from (so that parallel workers train the sources side by side instead of waiting on one); then
    the other rows seed by seed (every row's seed 0, then every row's seed 1, ...), so a table stopped
    part-way already has each row's first seeds."""
    first = [r for r in runs if r.row.name in first_rows]
    sources = [r for r in runs if r.keeps_params and r.row.name not in first_rows]
    rest = sorted((r for r in runs if r.row.name not in first_rows and not r.keeps_params),
                  key=lambda r: r.seed)  # stable: row order kept
    return first + sources + rest


def run_status(run: PlannedRun) -> str:
    """'done', 'diverged', 'partial' (has checkpoints or metrics) or 'new'."""
    log = run.run_dir / "metrics.jsonl"
    if log.exists():
        events = [r.get("event") for r in read_metrics(log)]
        if "done" in events:
            return "done"
        if "diverged" in events:
            return "diverged"
        return "partial"
    return "partial" if (run.run_dir / "checkpoints").exists() else "new"


def finished_twin(run: PlannedRun, logs_dir: Optional[Path] = None,
                  params_root: Optional[Path] = None) -> Optional[Path]:
    """A finished run with the same config hash (and so the same seed and metrics): in another table at
    the same scale (e.g. T5-Base in both table1 and scaling), else among the committed logs of finished
    runs, `<results>/<scale>/logs/<table>/<run>/` (so a fresh clone continues a table instead of
    retraining what is already in results/); None if there is none.

    Among several twins of a root: this table's own run first; then the run whose parameters were
    exported to `params_root` (its directory has the export's name), since the rows that start from or
    learn from this configuration used those parameters; then a run over a copy of one; then by path."""
    roots = [run.run_dir.parent.parent] + ([Path(logs_dir)] if logs_dir is not None else [])
    table = run.run_dir.parent.name
    exported = exported_params(run, params_root)

    def preference(d: Path):
        return (d.parent.name != table, exported is not None and d.name != exported.name,
                (d / "reused_from.txt").exists(), str(d))

    for root in roots:
        for d in sorted(root.glob(f"*/*-s{run.seed}-{run.config_hash}"), key=preference):
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
    from switchrepro.train import checkpoint, trainer

    _, params, step = trainer.restore_params(run.config, from_dir or run.run_dir, echo=echo)
    dest = Path(params_root) / run.run_dir.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.export_params(dest, params, step)
    return dest


def source_params(run: PlannedRun, params_root: Optional[Path], echo: Callable[[str], None] = print):
    """(model, params, step) of a finished source run: its export if there is one, else its checkpoint."""
    from switchrepro.train import trainer

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
    from switchrepro.train import pruning_eval

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


PRUNING_COLUMNS = ["table", "row", "seed", "context", "budget", "nlp"]


def collect_pruning(spec: TableSpec, scale: str, runs: Sequence[PlannedRun],
                    echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Held-out quality under context pruning of the finished runs (ensure_pruning: measured now where the
    record is missing): one row per (run, context, budget) for the budgets below each context and the
    context itself (no pruning), with columns PRUNING_COLUMNS. Empty for a table without `pruning` at this
    scale."""
    from switchrepro.train import pruning_eval

    p = (spec.pruning or {}).get(scale)
    records = []
    for run in runs if p is not None else ():
        record = ensure_pruning(run, p, echo)
        for context in p.contexts if record is not None else ():
            for budget in pruning_eval.passes(p.budgets, context):
                records.append({"table": spec.name, "row": run.row.name, "seed": run.seed, "context": context,
                                "budget": budget, "nlp": pruning_eval.quality(record, budget, context)})
    return pd.DataFrame(records, columns=PRUNING_COLUMNS)


def save(spec: TableSpec, scale: str, runs: Sequence[PlannedRun], results: pd.DataFrame, curves: pd.DataFrame,
         loads: dict, results_dir: Path, meta: dict, languages: Optional[pd.DataFrame] = None,
         pruning: Optional[pd.DataFrame] = None) -> Path:
    """Writes results/<scale>/<table>.csv (+ _curves.csv, _loads.json, _meta.json, _languages.csv.gz when
    `languages` has rows, _pruning.csv when `pruning` has rows) and copies each run's small logs
    (metrics.jsonl, config.gin, pruning.json) under results/<scale>/logs/<table>/ so they can be committed.

    Each file is written whole and then renamed into place, under the table's results lock, so a reader
    or a second process never sees half a table."""
    out = results_dir / scale
    out.mkdir(parents=True, exist_ok=True)
    with results_lock(results_dir, scale, spec.name):
        _write_atomic(out / f"{spec.name}.csv", results.to_csv(index=False))
        _write_atomic(out / f"{spec.name}_curves.csv", curves.to_csv(index=False))
        _write_atomic(out / f"{spec.name}_loads.json", json.dumps(loads, indent=1, sort_keys=True) + "\n")
        _write_atomic(out / f"{spec.name}_meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
        if languages is not None and len(languages):
            tmp = out / f".{spec.name}_languages.csv.gz.{os.getpid()}.tmp"
            # mtime=0: the same frame gives the same bytes (a committed file changes only when its numbers do)
            languages.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0})
            os.replace(tmp, out / f"{spec.name}_languages.csv.gz")
        if pruning is not None and len(pruning):
            _write_atomic(out / f"{spec.name}_pruning.csv", pruning.to_csv(index=False))
        _copy_logs(spec, runs, out)
    return out / f"{spec.name}.csv"


# -------------------------------------------------------------------------- speed from one sitting


def save_speed(results_dir: Path, scale: str, table: str, timed: pd.DataFrame, meta: dict) -> Path:
    """Writes `switchrepro bench table --save` timings: results/<scale>/<table>_speed.csv (`row`, `round`,
    `sec_per_step`, `batch_size`) and _speed.json (command, host, date)."""
    out = Path(results_dir) / scale
    out.mkdir(parents=True, exist_ok=True)
    with results_lock(results_dir, scale, table):
        _write_atomic(out / f"{table}_speed.csv", timed.to_csv(index=False))
        _write_atomic(out / f"{table}_speed.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out / f"{table}_speed.csv"


def load_speed(results_dir: Path, scale: str, table: str) -> Optional[Tuple[pd.DataFrame, dict]]:
    """The saved one-sitting timings of `table`, or None."""
    path = Path(results_dir) / scale / f"{table}_speed.csv"
    if not path.exists():
        return None
    try:
        timed = pd.read_csv(path)
        meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
        if not {"row", "round", "sec_per_step"} <= set(timed.columns):
            raise ValueError("missing columns")
    except (ValueError, pd.errors.ParserError) as e:
        raise ResultsError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]}); rerun "
                           f"`switchrepro bench table {table} --scale {scale} --rounds 3 --save`") from None
    return timed, meta


def apply_speed(results: pd.DataFrame, curves: pd.DataFrame, timed: pd.DataFrame):
    """Training-log speed replaced by one-sitting timings: the run with seed s of a row gets the row's
    timing round s mod R as its seconds per step, so the seeds' spread in speed is the rounds' spread.
    `examples_per_sec` = batch / that time, `wall_seconds` (results and curves) = step x that time
    (evaluation and checkpoints left out). Rows without a timing keep their logs' figures; the column
    `speed_source` says which is which."""
    results, curves = results.copy(), curves.copy()
    results["speed_source"] = "training log"
    for row, rounds in timed.sort_values("round").groupby("row", sort=False):
        secs = rounds["sec_per_step"].to_numpy()
        batch = rounds["batch_size"].to_numpy()
        for i in results.index[results["row"] == row]:
            k = int(results.at[i, "seed"]) % len(secs)
            results.at[i, "examples_per_sec"] = batch[k] / secs[k]
            results.at[i, "wall_seconds"] = results.at[i, "final_step"] * secs[k]
            results.at[i, "speed_source"] = "bench table"
            if len(curves):
                mask = (curves["row"] == row) & (curves["seed"] == results.at[i, "seed"])
                curves.loc[mask, "wall_seconds"] = curves.loc[mask, "step"] * secs[k]
    return results, curves


def results_lock(results_dir: Path, scale: str, table: str) -> Lock:
    return Lock(Path(results_dir) / scale / f".{table}.lock")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _copy_logs(spec: TableSpec, runs: Sequence[PlannedRun], out: Path) -> None:
    for run in runs:
        if run_status(run) in ("done", "diverged"):
            dst = out / "logs" / spec.name / run.run_dir.name
            dst.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.jsonl", "config.gin", "pruning.json"):
                if (run.run_dir / name).exists():
                    shutil.copy2(run.run_dir / name, dst / name)


def measured_minutes(runs: Sequence[PlannedRun], log_roots: Sequence[Path], max_seed: int = 10) -> Dict[str, float]:
    """Run dir name -> the wall minutes that finished runs of the same configuration with any seed below
    `max_seed` took (their median), found as `<root>/**/<row>-s<seed>-<hash>/metrics.jsonl` under
    `log_roots` (committed logs, calibration logs, other runs). A measurement beats the FLOP estimate:
    at d_model 64 attention's elementwise work, which FLOPs do not count, is most of a step."""
    logs: Dict[str, Path] = {}  # "s<seed>-<hash>" -> the first metrics.jsonl found (row slugs have no '-')
    for root in log_roots:
        for log in sorted(Path(root).glob("**/metrics.jsonl")) if Path(root).is_dir() else []:
            logs.setdefault(log.parent.name.split("-", 1)[-1], log)
    found: Dict[str, float] = {}
    for run in runs:
        minutes = []
        for seed in range(max_seed):
            cfg = dataclasses.replace(run.config, train=dataclasses.replace(run.config.train, seed=seed))
            log = logs.get(f"s{seed}-{config_hash(cfg)}")
            rows = read_metrics(log) if log else []
            wall = [r["wall_seconds"] for r in rows if "wall_seconds" in r]
            if wall and "done" in [r.get("event") for r in rows]:
                minutes.append(max(wall) / 60)
        if minutes:
            found[run.run_dir.name] = float(np.median(minutes))
    return found


def dry_run_table(runs: Sequence[PlannedRun], log_roots: Sequence[Path] = ()) -> pd.DataFrame:
    """The plan: rows, parameters, FLOPs per example, steps and an estimated time per run: measured where
    a finished run of the same configuration exists under `log_roots` (any seed), else from its FLOPs at
    the forward GFLOP/s those measured runs sustained (CPU_FORWARD_GFLOPS if none was measured).
    `.attrs["gflops"]` is the rate used."""
    import jax

    from switchrepro.model.decoder_only import build_model
    from switchrepro.model.t5 import dummy_batch
    from switchrepro.train.trainer import flops_per_token

    measured = measured_minutes(runs, log_roots)
    lines = []
    for run in runs:
        c, d, t = run.config.model, run.config.data, run.config.train
        lm = c.architecture == "decoder_only"  # its tokens are the targets
        shapes = jax.eval_shape(lambda c=c, d=d: build_model(c).init(
            {"params": jax.random.PRNGKey(0)}, dummy_batch(2, d.inputs_length, d.targets_length), deterministic=True))
        params = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes)))
        flops = flops_per_token(c, d.inputs_length, d.targets_length)["flops_per_example"]
        lines.append({"row": run.row.name, "seed": run.seed, "params": params, "MFLOPs/example": flops / 1e6,
                      "steps": t.steps, "batch": d.batch_size,
                      "tokens/step": d.batch_size * (d.targets_length if lm else d.inputs_length),
                      "est. CPU minutes": measured.get(run.run_dir.name, np.nan),
                      "estimate": "measured" if run.run_dir.name in measured else "FLOPs",
                      "status": run_status(run), "run_dir": str(run.run_dir)})
    plan = pd.DataFrame(lines)
    work = plan["steps"] * plan["batch"] * plan["MFLOPs/example"] * 1e6  # forward FLOPs per run
    timed = plan["estimate"] == "measured"
    gflops = float(np.median(work[timed] / (plan.loc[timed, "est. CPU minutes"] * 60)) / 1e9) if timed.any() \
        else CPU_FORWARD_GFLOPS
    plan.loc[~timed, "est. CPU minutes"] = work[~timed] / (gflops * 1e9) / 60
    plan.attrs["gflops"] = gflops
    return plan


def load_languages(results_dir: Path, scale: str, table: str) -> Optional[pd.DataFrame]:
    """The per-language frame `save` wrote for `table` (see collect_languages), or None if it has none."""
    path = Path(results_dir) / scale / f"{table}_languages.csv.gz"
    if not path.exists():
        return None
    try:
        # codes such as "007" and "nan" are strings, not numbers or missing values
        frame = pd.read_csv(path, dtype={"lang": str}, keep_default_na=False, na_values=[""])
        if not {"row", "seed", "step", "lang", "nlp"} <= set(frame.columns):
            raise ValueError("missing columns")
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as e:
        raise ResultsError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]}); rerun "
                           f"`switchrepro run {table} --collect-only` to rewrite it from the runs") from None
    frame["lang"] = frame["lang"].astype(str)
    return frame


def load_pruning(results_dir: Path, scale: str, table: str) -> Optional[pd.DataFrame]:
    """The context-pruning frame `save` wrote for `table` (see collect_pruning), or None if it has none."""
    path = Path(results_dir) / scale / f"{table}_pruning.csv"
    if not path.exists():
        return None
    try:
        frame = pd.read_csv(path)
        if not set(PRUNING_COLUMNS) <= set(frame.columns):
            raise ValueError("missing columns")
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise ResultsError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]}); rerun "
                           f"`switchrepro run {table} --collect-only` to rewrite it from the runs") from None
    return frame


def load_saved(results_dir: Path, scale: str, table: str):
    """(results, curves, loads, meta) as `save` wrote them, or None if the table has not been run."""
    out = Path(results_dir) / scale
    if not (out / f"{table}.csv").exists():
        return None

    def read(name, parse, empty):
        path = out / name
        if not path.exists() or path.stat().st_size <= 1:
            return empty
        try:
            return parse(path)
        except (ValueError, pd.errors.ParserError) as e:
            raise ResultsError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]}); rerun "
                               f"`switchrepro run {table}` to rewrite it from the runs") from None

    results = read(f"{table}.csv", pd.read_csv, None)
    if results is None or "row" not in results.columns:
        raise ResultsError(f"{out / f'{table}.csv'} is damaged (no 'row' column); rerun `switchrepro run {table}` "
                           "to rewrite it from the runs")
    curves = read(f"{table}_curves.csv", pd.read_csv, pd.DataFrame())
    loads = read(f"{table}_loads.json", lambda p: json.loads(p.read_text()), {})
    meta = read(f"{table}_meta.json", lambda p: json.loads(p.read_text()), {})
    return results, curves, loads, meta


class ResultsError(DamagedFileError):
    """A saved results file cannot be read; the message is one line naming it."""
