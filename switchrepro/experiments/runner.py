"""Run a paper table: rows x seeds -> trained runs -> pandas DataFrames.

Runs are idempotent and resumable. Each (row, seed) is keyed by a hash of its full configuration;
its run directory is `<runs_dir>/<scale>/<table>/<row>-s<seed>-<hash>`. A finished run (its
metrics.jsonl ends with a "done" or "diverged" event) is never recomputed; an interrupted one
resumes from its last checkpoint. Stopping a table half-way and running it again is safe and cheap.

Several processes may run one table at once (two `make reproduce`, or `--rows` processes that share a
row): a process trains a run only while it holds that run directory's lock. A run another process holds
is put off until the others are done, then waited for; the results files are written under a lock too.

The collected frames follow the contract in `switchrepro.experiments.claims`:
  results: one row per (row, seed); curves: one row per evaluation; loads: per-layer expert load.
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
from switchrepro.experiments.spec import Row, TableSpec
from switchrepro.train.host import layout as host_layout
from switchrepro.train.metrics_log import read_metrics
from switchrepro.train.run_lock import Lock, run_dir_lock

# Forward GFLOP/s a whole tiny model sustained in training on the 2-core CPU VM (76.6 examples/s x
# 236 MFLOPs/example, README first run); used only for --dry-run time estimates.
CPU_FORWARD_GFLOPS = 18.0

# (gin files, bindings) -> (config, operative gin text); switchrepro.cli.parse_config.
ConfigBuilder = Callable[[Sequence[str], Sequence[str]], Tuple[ExperimentConfig, str]]


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    row: Row
    seed: int
    config: ExperimentConfig
    operative_gin: str
    config_hash: str
    run_dir: Path


_ADDED_LATER = (("train", "cooldown_steps", 0), ("model.moe", "grouped_matmul", "auto"), ("", "distill", None),
                ("", "finetune", None))


def config_hash(cfg: ExperimentConfig) -> str:
    """A stable hash of everything that determines a run's metrics (progress-bar flags excluded)."""
    d = dataclasses.asdict(cfg)
    d["train"].pop("progress", None)
    # Options added after runs were committed are hashed only when set, so old runs keep their keys.
    for section, name, neutral in _ADDED_LATER:
        part = d
        for key in filter(None, section.split(".")):  # "" is the top level
            part = part.get(key) or {}  # model.moe is None in a dense model
        if name in part and part[name] == neutral:
            part.pop(name)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_")


def plan(spec: TableSpec, scale: str, build: ConfigBuilder, runs_dir: Path, seeds: Optional[int] = None,
         rows: Optional[Sequence[str]] = None) -> List[PlannedRun]:
    """The runs of `spec` at `scale`: each selected row x each seed, with its config and run directory."""
    selected = [spec.row(r) for r in rows] if rows else list(spec.default_rows(scale))
    n_seeds = seeds or spec.seeds[scale]
    out = []
    for row in selected:
        model_file = spec.models[scale][row.model]
        for seed in range(n_seeds):
            bindings = [*spec.scale_bindings[scale], *row.bindings, f"TrainConfig.seed = {seed}"]
            cfg, operative = build([model_file], bindings)
            h = config_hash(cfg)
            out.append(PlannedRun(row, seed, cfg, operative, h,
                                  runs_dir / scale / spec.name / f"{slug(row.name)}-s{seed}-{h}"))
    return out


def training_order(runs: Sequence[PlannedRun], first_rows: Sequence[str] = ()) -> List[PlannedRun]:
    """The order to train `runs` in: every seed of `first_rows` (a table's positive control) first, since
    no other verdict counts until it passes; then the other rows seed by seed (every row's seed 0, then
    every row's seed 1, ...), so a table stopped part-way already has each row's first seeds."""
    first = [r for r in runs if r.row.name in first_rows]
    rest = sorted((r for r in runs if r.row.name not in first_rows), key=lambda r: r.seed)  # stable: row order kept
    return first + rest


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


def finished_twin(run: PlannedRun, logs_dir: Optional[Path] = None) -> Optional[Path]:
    """A finished run with the same config hash (and so the same seed and metrics): in another table at
    the same scale (e.g. T5-Base in both table1 and scaling), else among the committed logs of finished
    runs, `<results>/<scale>/logs/<table>/<run>/` (so a fresh clone continues a table instead of
    retraining what is already in results/); None if there is none."""
    roots = [run.run_dir.parent.parent] + ([Path(logs_dir)] if logs_dir is not None else [])
    for root in roots:
        for d in sorted(root.glob(f"*/*-s{run.seed}-{run.config_hash}")):
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


def reuse_finished_twin(run: PlannedRun, logs_dir: Optional[Path] = None) -> Optional[Path]:
    """For a run not yet started: copy its finished twin (see finished_twin) into run.run_dir and return
    the twin's path; None, touching nothing, if the run has started or has no finished twin."""
    twin = finished_twin(run, logs_dir) if run_status(run) == "new" else None
    if twin is not None:
        reuse(run, twin)
    return twin


def execute(runs: Sequence[PlannedRun], train_fn: Callable[[PlannedRun], None],
            echo: Callable[[str], None] = print, logs_dir: Optional[Path] = None) -> Dict[str, float]:
    """Trains every run that is not finished; returns wall seconds spent per run key. A new run whose
    identical twin already finished (in another table, or in the committed logs under `logs_dir`) is
    copied from it, not retrained.

    Each run is trained while holding its directory's lock. A run that another process is training is
    put off: the other runs go first, then this process waits for that one and trains it only if the
    other process stopped before finishing it.
    """
    spent: Dict[str, float] = {}
    labels = {run.run_dir: f"[{i}/{len(runs)}] {run.row.name} seed {run.seed} ({run.config_hash})"
              for i, run in enumerate(runs, 1)}
    put_off = []
    for run in runs:
        lock = run_dir_lock(run.run_dir)
        if not lock.try_acquire():
            echo(f"{labels[run.run_dir]}: being trained by {lock.holder()}; training the other rows first")
            put_off.append(run)
            continue
        try:
            _execute_one(run, labels[run.run_dir], train_fn, echo, spent, logs_dir=logs_dir)
        finally:
            lock.release()
    for run in put_off:
        lock = run_dir_lock(run.run_dir)
        if not lock.try_acquire():
            echo(f"{labels[run.run_dir]}: waiting for {lock.holder()} to finish it")
            lock.acquire()
        try:
            _execute_one(run, labels[run.run_dir], train_fn, echo, spent, by_other=True, logs_dir=logs_dir)
        finally:
            lock.release()
    return spent


def _execute_one(run: PlannedRun, label: str, train_fn: Callable[[PlannedRun], None], echo: Callable[[str], None],
                 spent: Dict[str, float], by_other: bool = False, logs_dir: Optional[Path] = None) -> None:
    """One run, with its lock held: skip it if finished, copy a finished twin, or train (resume) it."""
    status = run_status(run)
    if status in ("done", "diverged"):
        echo(f"{label}: {status}{' by the other process' if by_other else ''}, not recomputed")
        return
    twin = reuse_finished_twin(run, logs_dir)
    if twin is not None:
        echo(f"{label}: identical to the finished {twin}, reused")
        return
    echo(f"{label}: {'resuming' if status == 'partial' else 'training'} in {run.run_dir}")
    t0 = time.time()
    train_fn(run)
    spent[run.run_dir.name] = time.time() - t0


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
        })
        for r in evals:
            curves.append({"table": spec.name, "row": run.row.name, "seed": run.seed, "step": r["step"],
                           "wall_seconds": r["wall_seconds"], "nlp": r["eval_neg_log_perplexity"]})
        if final_eval.get("eval_moe_layers") and run.seed == 0:
            loads[run.row.name] = {name: m["tokens_per_expert"] for name, m in final_eval["eval_moe_layers"].items()}
    return pd.DataFrame(results), pd.DataFrame(curves), loads


def save(spec: TableSpec, scale: str, runs: Sequence[PlannedRun], results: pd.DataFrame, curves: pd.DataFrame,
         loads: dict, results_dir: Path, meta: dict) -> Path:
    """Writes results/<scale>/<table>.csv (+ _curves.csv, _loads.json, _meta.json) and copies each run's
    small logs (metrics.jsonl, config.gin) under results/<scale>/logs/<table>/ so they can be committed.

    Each file is written whole and then renamed into place, under the table's results lock, so a reader
    or a second process never sees half a table."""
    out = results_dir / scale
    out.mkdir(parents=True, exist_ok=True)
    with results_lock(results_dir, scale, spec.name):
        _write_atomic(out / f"{spec.name}.csv", results.to_csv(index=False))
        _write_atomic(out / f"{spec.name}_curves.csv", curves.to_csv(index=False))
        _write_atomic(out / f"{spec.name}_loads.json", json.dumps(loads, indent=1, sort_keys=True) + "\n")
        _write_atomic(out / f"{spec.name}_meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
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
            for name in ("metrics.jsonl", "config.gin"):
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

    from switchrepro.model.t5 import Transformer, dummy_batch
    from switchrepro.train.trainer import flops_per_token

    measured = measured_minutes(runs, log_roots)
    lines = []
    for run in runs:
        c, d, t = run.config.model, run.config.data, run.config.train
        shapes = jax.eval_shape(lambda c=c, d=d: Transformer(c).init(
            {"params": jax.random.PRNGKey(0)}, dummy_batch(2, d.inputs_length, d.targets_length), deterministic=True))
        params = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes)))
        flops = flops_per_token(c, d.inputs_length, d.targets_length)["flops_per_example"]
        lines.append({"row": run.row.name, "seed": run.seed, "params": params, "MFLOPs/example": flops / 1e6,
                      "steps": t.steps, "batch": d.batch_size, "tokens/step": d.batch_size * d.inputs_length,
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
