"""The library API: train a run, run a paper table, load a table's results. No Click: a notebook calls these.

    from switchrepro import api
    api.run_table("table1", "smoke", results_dir="results", runs_dir="runs")
    t = api.load_table("table1", "mini")        # t.results, t.curves, t.verdicts
    cfg, _ = api.parse_config(["models/tiny_switch.gin"], ["TrainConfig.steps = 20"])
    api.train_run(cfg, "runs/mine")

Bad input (an unknown table or row, a bad gin binding, a run directory holding another configuration, a
damaged saved file, missing data) raises UserError, whose message is one line that says what to change;
the `switchrepro` command line prints it as its `error:` line. Nothing here changes the process on
import: the commands that train call `switchrepro.backends.cpu.allocator.keep_freed_memory()` themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import jax
import pandas as pd

from switchrepro import config as C
from switchrepro.config import gin as G
from switchrepro.config.store import config_hash, load_run_config, prepare_run_dir
from switchrepro.config.tables import TableSpec
from switchrepro.data import DataError
from switchrepro.data import cache as data_cache
from switchrepro.experiments import planning, results, runner, store, tables
from switchrepro.experiments.results import LoadedTable
from switchrepro.model.build import init_params
from switchrepro.model.t5 import Transformer
from switchrepro.moe import parallel
from switchrepro.train import inspect as inspect_lib
from switchrepro.train import trainer
from switchrepro.train.checkpoint import CheckpointError
from switchrepro.train.finetune import DownstreamEval, check_same_shapes, downstream_name, peak_score
from switchrepro.train.host import usable_cores
from switchrepro.train.metrics_log import read_metrics
from switchrepro.train.run_lock import run_dir_lock

Echo = Callable[[str], None]
PathLike = Union[str, Path]
ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
WORKER_ENV, WORKER_CORE_ENV = "SWITCHREPRO_WORKER", "SWITCHREPRO_WORKER_CORE"


class UserError(ValueError):
    """Input the library cannot work with; the message is one line that says what to change."""


@contextlib.contextmanager
def user_errors():
    """The library's one-line errors (a bad configuration, a damaged file, missing data, a source run that
    cannot give its parameters, a run that cannot be pruned) as UserError."""
    try:
        yield
    except (C.ConfigError, C.DamagedFileError, results.ResultsError, DataError, runner.SourceRunError,
            runner.PruningError) as e:
        raise UserError(str(e)) from None


# ------------------------------------------------------------------------------------------ configs


def parse_config(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> Tuple[C.ExperimentConfig, str]:
    """(config, operative gin text) from gin files (paths or names under gin/) and bindings."""
    with user_errors():
        return G.parse_config(gin_files, bindings)


def table_names() -> Tuple[str, ...]:
    """Every table, in run order (the registry, `switchrepro.experiments.tables`)."""
    return tuple(tables.NAMES)


def table_spec(name: str) -> TableSpec:
    """The TableSpec of table `name` (gin/tables/<name>.gin), checked against the registry: an unknown table,
    or a claim of the table naming a row the gin file lacks, is a UserError."""
    try:
        table = tables.get(name)
    except ValueError:
        raise UserError(f"unknown table {name!r}; choose one of: {', '.join(tables.NAMES)}") from None
    with user_errors():
        spec = G.parse_table(name)
    try:
        table.check_rows([r.name for r in spec.rows])
    except ValueError as e:
        raise UserError(str(e)) from None
    return spec


parse_table = table_spec  # the name the command line and tests knew it by


def with_tfds(bindings: Sequence[str], tfds_data_dir: Optional[str]) -> List[str]:
    """`bindings` plus the binding of DataConfig.tfds_data_dir when one is given."""
    return [*bindings, *([f"DataConfig.tfds_data_dir = {json.dumps(tfds_data_dir)}"] if tfds_data_dir else [])]


# ------------------------------------------------------------------------------------------- runs


def ensure_writable(path: PathLike, option: str) -> None:
    """Creates `path` and a file in it, so an unwritable directory fails before any training."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {path} ({e.strerror or type(e).__name__}); pass a writable {option}") \
            from None


def log_error_detail(run_dir: Path, detail: str) -> Path:
    """Appends a library error's full text to RUN_DIR/errors.log (the `error:` line stays short)."""
    path = Path(run_dir) / "errors.log"
    with path.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(['switchrepro'] + sys.argv[1:])}\n{detail}\n\n")
    return path


@contextlib.contextmanager
def run_file_errors(run_dir: Path):
    """A damaged checkpoint or metrics file of `run_dir` as a UserError (full detail in its errors.log)."""
    try:
        yield
    except CheckpointError as e:
        raise UserError(f"{e} (full error in {log_error_detail(run_dir, e.detail or str(e))})") from e


def backend_line() -> str:
    """One line on what JAX computes with (the accelerator probing itself stays quiet)."""
    devices = jax.devices()
    return (f"jax {jax.__version__}: {jax.default_backend()} backend, {len(devices)} device(s) "
            f"({devices[0].device_kind})")


def load_caches(cfg: C.ExperimentConfig, echo: Echo = print):
    """The train and validation numpy caches of `cfg` (materialised once, in a subprocess that alone imports
    TensorFlow, which shows its own progress; `echo` is kept for callers that pass one)."""
    with user_errors():
        return data_cache.cache_for_config(cfg.data, "train"), data_cache.cache_for_config(cfg.data, "validation")


def restore_run(cfg: C.ExperimentConfig, run_dir: PathLike, echo: Echo = print):
    """(model, params, step) of RUN_DIR's latest checkpoint (a teacher, a pre-trained model, a run to score)."""
    try:
        with run_file_errors(Path(run_dir)):
            return trainer.restore_params(cfg, Path(run_dir), echo=echo)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None


def stop_after() -> Optional[int]:
    """SWITCHREPRO_STOP_AFTER=N stops a run after step N as if killed there (tests kill-and-resume)."""
    v = os.environ.get("SWITCHREPRO_STOP_AFTER")
    return int(v) if v else None


def train_prepared(cfg: C.ExperimentConfig, run_dir: Path, *, progress: Optional[bool] = None, echo: Echo = print,
                   mesh=None, teacher=None, pretrained=None, allow_expert_path_change: bool = False,
                   announce: bool = False) -> trainer.RunResult:
    """Trains `cfg` in `run_dir`, which already holds its configuration (prepare_run_dir) and whose lock the
    caller holds: loads the data (and, for fine-tuning, the scorer of decoded validation examples) and runs
    trainer.train. `teacher` is (model, params), `pretrained` params (see trainer.train)."""
    train_cache, eval_cache = load_caches(cfg)
    downstream_eval = None
    if cfg.finetune is not None:
        downstream_eval = DownstreamEval(cfg, Transformer(cfg.model), eval_cache,
                                         data_cache.load_texts(eval_cache.path), run_dir)
    if announce:
        echo(backend_line())
    with run_file_errors(run_dir), user_errors():
        return trainer.train(cfg, run_dir, train_cache=train_cache, eval_cache=eval_cache, progress=progress,
                             echo=echo, stop_after=stop_after(), mesh=mesh, teacher=teacher, pretrained=pretrained,
                             downstream_eval=downstream_eval, allow_expert_path_change=allow_expert_path_change)


def train_run(config: C.ExperimentConfig, run_dir: PathLike, *, operative: Optional[str] = None,
              progress: Optional[bool] = None, echo: Echo = print, mesh=None, teacher=None, pretrained=None,
              allow_expert_path_change: bool = False, announce: bool = False) -> trainer.RunResult:
    """Trains (or resumes) `config` in `run_dir`: locks it, refuses one that holds another configuration,
    saves config.json, config.gin (`operative`, the gin text parse_config returned; a note when the config
    was built in Python) and the command line, then trains. Returns trainer.train's RunResult."""
    run_dir = Path(run_dir)
    ensure_writable(run_dir, "--run-dir")
    lock = run_dir_lock(run_dir)
    if not lock.try_acquire():
        raise UserError(f"{run_dir} is being trained by {lock.holder()}; wait for it to finish or use another "
                        "--run-dir")
    try:
        with user_errors():
            prepare_run_dir(config, operative if operative is not None else
                            "# built in Python, not from gin: config.json holds the configuration\n", run_dir)
        return train_prepared(config, run_dir, progress=progress, echo=echo, mesh=mesh, teacher=teacher,
                              pretrained=pretrained, allow_expert_path_change=allow_expert_path_change,
                              announce=announce)
    finally:
        lock.release()


def result_lines(cfg: C.ExperimentConfig, result: trainer.RunResult) -> List[str]:
    """What `switchrepro train` prints about a finished run: final losses, score and speed, where the metrics are."""
    if result.diverged_at is not None:
        return [f"diverged at step {result.diverged_at}; metrics in {result.metrics_path}"]
    final = result.final
    msg = f"step {final.get('step')}: train loss {final.get('loss', float('nan')):.4f}"
    if "eval_neg_log_perplexity" in final:
        msg += f" | held-out neg. log perplexity {final['eval_neg_log_perplexity']:.4f} nats/token"
    if "eval_score" in final:
        msg += f" | validation score {final['eval_score']:.2f}"
    if "examples_per_sec" in final:
        msg += f" | {final['examples_per_sec']:.1f} examples/sec"
    lines = [msg]
    best = peak_score(read_metrics(result.metrics_path)) if cfg.finetune is not None else None
    if best is not None:
        lines.append(f"peak validation score {best['value']:.2f} at step {best['step']}")
    return lines + [f"metrics: {result.metrics_path}"]


def source_config(run_dir: PathLike, option: str) -> C.ExperimentConfig:
    """The configuration of a finished run another run starts from or learns from (`option` names it)."""
    if not Path(run_dir).is_dir():
        raise UserError(f"{option} {run_dir} does not exist")
    with user_errors():
        return load_run_config(Path(run_dir))


def distill_config(gin_files: Sequence[str], bindings: Sequence[str], teacher_run: PathLike, *,
                   teacher_weight: float = 0.25, temperature: float = 1.0, init_from_teacher: bool = True,
                   echo: Echo = print):
    """(student config, operative gin, (teacher model, teacher params)) to distil TEACHER_RUN's model into
    the model of the gin files. The distillation settings are bound in gin, so the saved config.gin rebuilds
    the student's hash."""
    teacher_cfg = source_config(teacher_run, "--teacher-run")
    cfg, operative = parse_config(gin_files, [*bindings, f"DistillConfig.teacher = '{config_hash(teacher_cfg)}'",
                                              f"DistillConfig.teacher_weight = {teacher_weight!r}",
                                              f"DistillConfig.temperature = {temperature!r}",
                                              f"DistillConfig.init_from_teacher = {init_from_teacher}"])
    if teacher_cfg.model.vocab_size != cfg.model.vocab_size or teacher_cfg.data.task != cfg.data.task:
        raise UserError(f"teacher and student must share the task and vocabulary: the teacher was trained on "
                        f"{teacher_cfg.data.task!r} ({teacher_cfg.model.vocab_size} ids), the student is configured "
                        f"for {cfg.data.task!r} ({cfg.model.vocab_size} ids); set the student's DataConfig.task and "
                        "ModelConfig.vocab_size to the teacher's")
    operative += (f"\n# distillation (from the command line): teacher run {teacher_run} (configuration "
                  f"{cfg.distill.teacher})\n# {cfg.distill}\n")
    model, params, step = restore_run(teacher_cfg, teacher_run, echo=echo)
    if step < teacher_cfg.train.steps:
        echo(f"note: the teacher stopped at step {step} of {teacher_cfg.train.steps}")
    return cfg, operative, (model, params)


def finetune_config(gin_files: Sequence[str], bindings: Sequence[str], pretrained_run: PathLike, *,
                    echo: Echo = print):
    """(config, operative gin, pre-trained params) to fine-tune PRETRAINED_RUN's model as the gin files say
    (model, downstream DataConfig.task, schedule); a model whose shapes differ from the pre-trained one is
    refused before any cache is built."""
    pre_cfg = source_config(pretrained_run, "--pretrained-run")
    # Bound in gin (with the files' own FinetuneConfig bindings), so the saved config.gin rebuilds the hash.
    cfg, operative = parse_config(gin_files, [*bindings, f"FinetuneConfig.pretrained = '{config_hash(pre_cfg)}'"])
    try:
        downstream_name(cfg.data.task)
    except ValueError as e:
        raise UserError(str(e)) from e
    if pre_cfg.model.vocab_size != cfg.model.vocab_size:
        raise UserError(f"the pre-trained model has {pre_cfg.model.vocab_size} vocabulary ids, the fine-tuning "
                        f"config {cfg.model.vocab_size}; fine-tune on the variant of the task with the pre-trained "
                        "run's vocabulary (switchrepro_byte_<task> for byte models)")
    operative += (f"\n# fine-tuning (from the command line): pre-trained run {pretrained_run} (configuration "
                  f"{cfg.finetune.pretrained})\n# {cfg.finetune}\n")
    _, params, step = restore_run(pre_cfg, pretrained_run, echo=echo)
    try:  # shapes only (eval_shape)
        check_same_shapes(params, jax.eval_shape(lambda: init_params(cfg.model, jax.random.PRNGKey(0), 2, 4, 4)[1]))
    except ValueError as e:
        raise UserError(str(e)) from e
    echo(f"pre-trained model: {pretrained_run} at step {step}")
    return cfg, operative, params


def evaluate_run(run_dir: PathLike, eval_examples: Optional[int] = None, echo: Echo = print):
    """(step, metrics) of RUN_DIR's latest checkpoint on held-out data (negative log-perplexity, nats/token)."""
    cfg = source_config(run_dir, "--run-dir")
    if eval_examples:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_examples=eval_examples))
    _, eval_cache = load_caches(cfg)
    model, params, step = restore_run(cfg, run_dir, echo=echo)
    return step, trainer.evaluate(trainer.make_eval_step(model), params,
                                  data_cache.eval_batches(eval_cache, cfg.data.batch_size, cfg.data.eval_examples))


def inspect_run(run_dir: PathLike, examples: int = 64, steps: Optional[Sequence[int]] = None):
    """(config, examples looked at, per-layer table) of the checkpoints in RUN_DIR (train/inspect.py): the
    FFN branch's share of the residual stream and, for sparse layers, gates, drops and expert agreement."""
    cfg = source_config(run_dir, "--run-dir")
    _, eval_cache = load_caches(cfg)
    n = min(examples, eval_cache.num_examples)
    batch, _ = next(data_cache.eval_batches(eval_cache, n, n))
    try:
        with run_file_errors(Path(run_dir)):
            return cfg, n, inspect_lib.inspect_run(cfg, Path(run_dir), batch, None if steps is None else list(steps))
    except ValueError as e:
        raise UserError(str(e)) from e


# --------------------------------------------------------------------------------------- parallel


def setup_parallel(mesh_text: Optional[str] = None, distributed: bool = False, coordinator: Optional[str] = None,
                   num_processes: Optional[int] = None, process_id: Optional[int] = None, echo: Echo = print):
    """Multi-host start-up (before anything else touches jax), then the mesh (e.g. "data=2,expert=4");
    None without a mesh."""
    try:
        settings = parallel.distributed_settings(coordinator, num_processes, process_id)
        if distributed or settings.kwargs():
            parallel.initialize_distributed(settings)
            echo(f"jax.distributed: process {jax.process_index()} of {jax.process_count()}, "
                 f"{jax.local_device_count()} local / {jax.device_count()} global devices")
        return parallel.make_mesh(parallel.parse_mesh(mesh_text)) if mesh_text else None
    except ValueError as e:
        raise UserError(str(e)) from e


def check_mesh(cfg: C.ExperimentConfig, mesh) -> None:
    """Experts and batch must divide over the mesh; say what to change before anything runs."""
    if mesh is None:
        return
    try:
        parallel.check_fits(mesh, cfg.model.moe and cfg.model.moe.num_experts, cfg.data.batch_size)
    except ValueError as e:
        raise UserError(str(e)) from e


def pin_worker() -> None:
    """In a `run_table(workers=N)` child: keep to the core the parent chose, before XLA starts its threads."""
    core = os.environ.get(WORKER_CORE_ENV)
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(core)})


def run_workers(args: Sequence[str], workers: int, echo: Echo = print) -> None:
    """Runs `switchrepro ARGS` in `workers` processes, process i pinned to the i-th usable core with one XLA
    thread and no progress bar, and waits for all; UserError if any fails."""
    cores = usable_cores()
    flags = f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD_XLA_FLAGS}".strip()
    procs = []
    for i in range(workers):
        env = dict(os.environ, XLA_FLAGS=flags, **{WORKER_ENV: str(i), WORKER_CORE_ENV: str(cores[i])})
        cmd = [sys.executable, "-m", "switchrepro.cli", *args, "--gin", "TrainConfig.progress = False"]
        echo(f"worker {i}: core {cores[i]}: {shlex.join(['switchrepro', *args])}")
        procs.append(subprocess.Popen(cmd, env=env))  # no preexec_fn: forking a threaded JAX process is unsafe
        time.sleep(2)  # let worker i take its first run's lock before worker i + 1 looks
    failed = [(i, code) for i, p in enumerate(procs) if (code := p.wait()) != 0]
    if failed:
        raise UserError("worker " + ", ".join(f"{i} exited with {code}" for i, code in failed)
                        + "; its error is above. Finished runs are kept: rerun the same command to continue")


# ----------------------------------------------------------------------------------------- tables


def row_names(rows: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    """Row names from a comma-separated string or a list; None for none (all rows)."""
    if isinstance(rows, str):
        rows = rows.split(",")
    names = [r.strip() for r in rows or () if r.strip()]
    return names or None


def plan_table(spec: TableSpec, scale: str, bindings: Sequence[str] = (), runs_dir: PathLike = "runs",
               seeds: Optional[int] = None, rows: Union[None, str, Sequence[str]] = None) -> List[planning.PlannedRun]:
    """The planned runs of `spec` at `scale` (runner.plan) with `bindings` added to every row; an unknown row
    name is a UserError."""
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    build = lambda files, b: parse_config(files, [*b, *bindings])  # noqa: E731
    try:
        return runner.plan(spec, scale, build, Path(runs_dir), seeds=seeds, rows=row_names(rows))
    except KeyError as e:
        raise UserError(str(e.args[0])) from e


def _dry_run(runs, results_dir: Path, runs_dir: Path, scale: str, echo: Echo) -> pd.DataFrame:
    """`run --dry-run`: prints the plan and the estimated CPU time of the runs still to train; returns the plan."""
    plan = runner.dry_run_table(runs, log_roots=[results_dir / scale, runs_dir / scale])
    committed, params = results_dir / scale / "logs", results_dir / scale / "params"
    plan["status"] = ["committed" if s == "new" and runner.finished_twin(r, committed, params) else s
                      for s, r in zip(plan["status"], runs, strict=True)]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        echo(plan.drop(columns=["run_dir"]).to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    todo = plan[~plan["status"].isin(["done", "diverged", "committed"])]
    n_measured = int((todo["estimate"] == "measured").sum())
    basis = ("the forward GFLOP/s of the timed runs" if (plan["estimate"] == "measured").any()
             else "a tiny d_model-128 model's rate, which overestimates attention-heavy models' speed")
    echo(f"estimated total: {todo['est. CPU minutes'].sum():.1f} CPU minutes for the {len(todo)} runs "
         f"still to train ({n_measured} timed from finished runs of the same configuration, the rest "
         f"from FLOPs at {plan.attrs['gflops']:.1f} forward GFLOP/s, {basis}; "
         f"`switchrepro bench table` times one step per row)")
    return plan


def _train_table(name: str, scale: str, runs, *, results_dir: Path, runs_dir: Path, workers: int, child_args,
                 setup_mesh, pruning, echo: Echo, allow_expert_path_change: bool) -> None:
    """`run_table`'s training: the planned runs in this process, or in `workers` one-core child processes
    running `child_args`. With `pruning` (the table's PruningSpec at this scale), each trained run's context
    pruning is measured too, by the process that trained it, while it has it at hand."""
    mesh = None if workers > 1 or setup_mesh is None else setup_mesh()
    for r in runs:
        check_mesh(r.config, mesh)
    ensure_writable(results_dir, "--results-dir")
    ensure_writable(runs_dir, "--runs-dir")
    echo(backend_line())
    params_root = results_dir / scale / "params"

    def train_one(r: planning.PlannedRun) -> None:
        indented = lambda m: echo("  " + m)  # noqa: E731
        teacher = pretrained = None
        with user_errors():
            if r.teacher is not None:
                model, params, _ = runner.source_params(r.teacher, params_root, echo=indented)
                teacher = (model, params)
            if r.pretrained is not None:
                pretrained = runner.source_params(r.pretrained, params_root, echo=indented)[1]
            prepare_run_dir(r.config, r.operative_gin, r.run_dir)
        train_prepared(r.config, r.run_dir, progress=None, echo=indented, mesh=mesh, teacher=teacher,
                       pretrained=pretrained, allow_expert_path_change=allow_expert_path_change)
        if pruning is not None:
            with user_errors():
                runner.ensure_pruning(r, pruning, echo=indented)

    if workers > 1:
        run_workers(child_args, workers, echo=echo)
    else:
        with user_errors():
            runner.execute(runner.training_order(runs, tables.get(name).control_rows()), train_one, echo=echo,
                           logs_dir=results_dir / scale / "logs", params_root=params_root)


def run_table(name: str, scale: str = "mini", *, seeds: Optional[int] = None,
              rows: Union[None, str, Sequence[str]] = None, bindings: Sequence[str] = (),
              tfds_data_dir: Optional[str] = None, results_dir: PathLike = "results", runs_dir: PathLike = "runs",
              workers: int = 1, collect_only: bool = False, dry_run: bool = False, echo: Echo = print,
              setup_mesh: Optional[Callable[[], object]] = None, allow_expert_path_change: bool = False,
              command: Optional[Sequence[str]] = None) -> Union[None, LoadedTable, pd.DataFrame]:
    """Reproduces paper table `name`: trains its rows x seeds (finished runs reused, interrupted ones resumed,
    committed logs under `results_dir` copied), collects every finished run of the table into
    results/<scale>/<name>.csv and the files beside it, prints it beside the paper's numbers and returns the
    LoadedTable (its verdicts judged); None when no run of the table has finished, or in a `workers` child.

    `rows` (names, or a comma-separated string) and `seeds` narrow what is trained; the saved table still
    holds all of the table's finished runs. `collect_only` trains nothing; `dry_run` only prints and returns
    the plan (rows, parameters, FLOPs, steps, estimated time). `workers` > 1 trains in that many one-core
    child processes (`python -m switchrepro.cli run ...`). `setup_mesh` is called before training, in this
    process only, for the device mesh to train on (see setup_parallel). `command` is what the table's meta
    records as the command that made it (default: the equivalent `switchrepro run`)."""
    results_dir, runs_dir = Path(results_dir), Path(runs_dir)
    if workers > 1 and setup_mesh is not None:
        raise UserError("--workers runs independent one-core processes on this machine; it cannot be combined "
                        "with --mesh or the multi-host options")
    cores = usable_cores()
    if workers > len(cores):
        raise UserError(f"--workers {workers} needs {workers} usable CPU cores, this process may use "
                        f"{len(cores) or 'an unknown number of'}; use --workers {max(1, len(cores))} or fewer")
    spec = table_spec(name)
    extra = with_tfds(bindings, tfds_data_dir)
    names = row_names(rows)
    runs = plan_table(spec, scale, extra, runs_dir, seeds, names)
    child_args = ["run", name, "--scale", scale, "--results-dir", str(results_dir), "--runs-dir", str(runs_dir),
                  *(["--seeds", str(seeds)] if seeds is not None else []),
                  *(["--rows", ",".join(names)] if names else []),
                  *(a for b in bindings for a in ("--gin", b)),
                  *(["--tfds-data-dir", tfds_data_dir] if tfds_data_dir else []),
                  *(["--allow-expert-path-change"] if allow_expert_path_change else [])]
    if dry_run:
        return _dry_run(runs, results_dir, runs_dir, scale, echo)
    t0 = time.time()
    if collect_only:
        ensure_writable(results_dir, "--results-dir")
        for r in runs:  # finished twins are copied, as a training run would; nothing else is touched
            runner.reuse_finished_twin(r, results_dir / scale / "logs", results_dir / scale / "params")
    else:
        _train_table(name, scale, runs, results_dir=results_dir, runs_dir=runs_dir, workers=workers,
                     child_args=child_args, setup_mesh=setup_mesh, pruning=(spec.pruning or {}).get(scale), echo=echo,
                     allow_expert_path_change=allow_expert_path_change)
        if workers == 1 and os.environ.get(WORKER_ENV):
            return None  # the parent of the workers collects the table once every worker is done
    # The saved table holds every finished run of this table (all rows and seeds, not only the ones this
    # call trained), so `rows` calls, made one after another or side by side, add up.
    everything = runs if names is None and seeds is None else plan_table(
        spec, scale, extra, runs_dir, seeds=max(seeds or 0, spec.seeds[scale]),
        rows=list(dict.fromkeys([*(r.name for r in spec.default_rows(scale)), *(names or [])])))
    res, curves, loads = runner.collect(spec, scale, everything)
    languages = runner.collect_languages(spec, everything)
    with user_errors():
        pruning = None if (spec.pruning or {}).get(scale) is None else \
            runner.collect_pruning(spec, scale, everything, echo=echo)
    meta = {"command": shlex.join(command if command is not None else ["switchrepro", *child_args]),
            "scale": scale, "table": name,
            "seeds": int(res["seed"].nunique()) if len(res) else 0,
            "rows": list(dict.fromkeys(res["row"])) if len(res) else [],
            "this_invocation_seconds": round(time.time() - t0, 1),
            "train_seconds_total": float(res["wall_seconds"].sum()) if len(res) else 0.0}
    if collect_only:  # nothing was trained: the saved record of the command that trained the table stays
        kept = store.load_meta(results_dir, scale, name)
        meta.update({k: kept[k] for k in ("command", "this_invocation_seconds") if k in kept})
    with user_errors():
        speed = store.load_speed(results_dir, scale, name)
    if speed is not None and len(res):
        res, curves = store.apply_speed(res, curves, speed[0])
        meta["speed"] = (f"examples/sec and the time axis come from `{speed[1].get('command', '?')}` "
                         f"({speed[1].get('date', '?')}; {speed[1].get('host', '?')}): every row timed in one "
                         "sitting, seed s taking timing round s mod rounds; the training logs' own speeds "
                         "depend on what else shared the machine")
    path = store.save(spec, scale, everything, res, curves, loads, results_dir, meta, languages=languages,
                      pruning=pruning)
    table = results.evaluate(spec, scale, res, curves, loads, meta, languages, pruning) if len(res) else None
    for extra_path in results.write_extras(table, results_dir) if table is not None else ():
        echo(f"{extra_path.stem.removeprefix(name + '_').replace('_', ' ')}: {extra_path}")
    echo(f"results: {path} ({len(res)} of {len(everything)} runs of the table finished)")
    if table is not None:
        echo(results.console_text(table))
    return table


def load_table(name: str, scale: str = "mini", results_dir: PathLike = "results") -> LoadedTable:
    """Table `name`'s saved results at `scale` (what `run_table` wrote) with its verdicts judged:
    `.results`, `.curves`, `.loads`, `.verdicts`, `.summary` (see switchrepro.experiments.results)."""
    spec = table_spec(name)
    with user_errors():
        return results.load_table(spec, scale, Path(results_dir))


def plot(what: str, scale: str = "mini", results_dir: PathLike = "results") -> List[Path]:
    """Draws WHAT (scaling, speed-quality, or a table name) as PNG and SVG under results/<scale>/plots/;
    returns the files written."""
    spec = table_spec(tables.plot_target(what))
    with user_errors():
        return results.plot(what, spec, scale, Path(results_dir))


def write_report(scale: str = "mini", results_dir: PathLike = "results") -> Tuple[Path, List[str]]:
    """Writes results/<scale>/REPORT.md from every table that has results; returns (its path, those tables)."""
    results_dir = Path(results_dir)
    specs = {name: table_spec(name) for name in tables.NAMES if store.has_results(results_dir, scale, name)}
    with user_errors():  # none: a one-line error saying how to make some
        return results.write_report(scale, results_dir, specs)
