"""`switchrepro train`, `distill`, `finetune`, `eval` and `inspect`: one run directory at a time.

Each command reads its flags and calls the library (`switchrepro.api`): parse the gin files, train or
score, print the outcome.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from switchrepro import api
from switchrepro.cli.common import UserError, config_options, expert_path_option, parallel_options, start_compute

RUN_DIR = click.Path(file_okay=False, path_type=Path)


def _train_and_report(cfg, operative, run_dir: Path, progress: bool, allow_expert_path_change: bool, mesh=None,
                      teacher=None, pretrained=None) -> None:
    result = api.train_run(cfg, run_dir, operative=operative, progress=progress, echo=click.echo, mesh=mesh,
                           teacher=teacher, pretrained=pretrained, announce=True,
                           allow_expert_path_change=allow_expert_path_change)
    for line in api.result_lines(cfg, result):
        click.echo(line)


@click.command()
@config_options
@click.option("--run-dir", required=True, type=RUN_DIR,
              help="Where checkpoints, metrics.jsonl and the operative config go. Rerun to resume.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@parallel_options
@expert_path_option
def train(gin_files, bindings, tfds_data_dir, run_dir: Path, no_progress: bool, mesh_text, distributed, coordinator,
          num_processes, process_id, allow_expert_path_change):
    """Train a model; rerunning the same command resumes from the latest checkpoint (also onto another mesh)."""
    start_compute()
    if not gin_files:
        raise UserError("pass at least one --gin-file (e.g. --gin-file models/tiny_switch.gin)")
    mesh = api.setup_parallel(mesh_text, distributed, coordinator, num_processes, process_id, echo=click.echo)
    cfg, operative = api.parse_config(gin_files, api.with_tfds(bindings, tfds_data_dir))
    api.check_mesh(cfg, mesh)
    _train_and_report(cfg, operative, run_dir, not no_progress and cfg.train.progress, allow_expert_path_change,
                      mesh=mesh)


@click.command()
@config_options
@click.option("--teacher-run", required=True, type=RUN_DIR,
              help="The teacher's run directory (a finished `switchrepro train` or table run).")
@click.option("--run-dir", required=True, type=RUN_DIR, help="The student's run directory. Rerun to resume.")
@click.option("--teacher-weight", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Soft (teacher) share of the loss: 0.25 is the paper's 0.75 hard/soft mix, 1 soft only, "
                   "0 no distillation loss.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--init-from-teacher/--no-init-from-teacher", default=True, show_default=True,
              help="Start the student from the teacher's non-expert weights (matching path and shape).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@expert_path_option
def distill(gin_files, bindings, tfds_data_dir, teacher_run: Path, run_dir: Path, teacher_weight: float,
            temperature: float, init_from_teacher: bool, no_progress: bool, allow_expert_path_change):
    """Distil the model of TEACHER_RUN (typically a Switch model) into the model of the gin files (typically
    its FLOP-matched dense model): the student learns from the labels and the teacher's probabilities."""
    start_compute()
    if not gin_files:
        raise UserError("pass the student's --gin-file (e.g. --gin-file models/tiny_dense.gin)")
    cfg, operative, teacher = api.distill_config(
        gin_files, api.with_tfds(bindings, tfds_data_dir), teacher_run, teacher_weight=teacher_weight,
        temperature=temperature, init_from_teacher=init_from_teacher, echo=click.echo)
    _train_and_report(cfg, operative, run_dir, not no_progress and cfg.train.progress, allow_expert_path_change,
                      teacher=teacher)


@click.command()
@config_options
@click.option("--pretrained-run", required=True, type=RUN_DIR,
              help="The pre-trained run directory (a finished `switchrepro train` or table run).")
@click.option("--run-dir", required=True, type=RUN_DIR, help="The fine-tuning run directory. Rerun to resume.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@expert_path_option
def finetune(gin_files, bindings, tfds_data_dir, pretrained_run: Path, run_dir: Path, no_progress: bool,
             allow_expert_path_change):
    """Fine-tune the model of PRETRAINED_RUN on a downstream task: the gin files give the pre-trained model
    (dropout rates and capacity factors may change), DataConfig.task (e.g. switchrepro_byte_sentiment) and
    the schedule. Every evaluation decodes validation examples and scores them with T5's metrics; the run
    reports its peak validation score."""
    start_compute()
    if not gin_files:
        raise UserError("pass --gin-file with the model and the downstream task (e.g. --gin-file "
                        "models/tiny_switch.gin --gin 'DataConfig.task = \"switchrepro_byte_sentiment\"')")
    cfg, operative, pretrained = api.finetune_config(gin_files, api.with_tfds(bindings, tfds_data_dir),
                                                     pretrained_run, echo=click.echo)
    _train_and_report(cfg, operative, run_dir, not no_progress, allow_expert_path_change, pretrained=pretrained)


@click.command("eval")
@click.option("--run-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--eval-examples", type=int, default=None, help="Override the number of held-out examples.")
def eval_cmd(run_dir: Path, eval_examples: Optional[int]):
    """Score the latest checkpoint in RUN_DIR on held-out data (negative log-perplexity, nats/token)."""
    start_compute()
    step, out = api.evaluate_run(run_dir, eval_examples, echo=click.echo)
    click.echo(f"step {step}: held-out neg. log perplexity {out['eval_neg_log_perplexity']:.4f} "
               f"nats/token over {out['eval_target_tokens']} target tokens"
               + (f"; {out['eval_fraction_dropped']:.2%} of routed tokens dropped" if "eval_fraction_dropped" in out
                  else ""))


@click.command("inspect")
@click.option("--run-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--examples", type=click.IntRange(1), default=64, show_default=True,
              help="Held-out examples to look at (the first ones of the validation split).")
@click.option("--steps", default=None, help="Checkpoint steps, comma-separated (default: every one kept).")
def inspect_cmd(run_dir: Path, examples: int, steps: Optional[str]):
    """Per FFN layer of the checkpoints in RUN_DIR: how much the FFN branch adds to the residual stream and,
    for sparse layers, the chosen expert's gate against 1/E, the dropped share and how many tokens keep their
    expert from one checkpoint to the next."""
    start_compute()
    try:
        wanted = None if steps is None else [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--steps takes comma-separated integers, e.g. --steps 400,600; got {steps!r}") from None
    cfg, n, table = api.inspect_run(run_dir, examples, wanted)
    click.echo(f"{run_dir}: {n} held-out examples, evaluation path (capacity factor "
               f"{cfg.model.moe.capacity_factor_eval if cfg.model.moe else '-'})")
    click.echo(table.to_markdown(index=False, floatfmt=".4f"))
