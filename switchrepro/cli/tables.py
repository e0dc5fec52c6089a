"""`switchrepro run`, `plot` and `report`: a paper table, its figures, and REPORT.md.

The table names come from the registry (`switchrepro.experiments.tables`); the work is the library's
(`switchrepro.api.run_table`, `plot`, `write_report`).
"""

from __future__ import annotations

from pathlib import Path

import click

from switchrepro import api
from switchrepro.cli.common import (
    SCALES,
    UserError,
    command_line,
    expert_path_option,
    parallel_options,
    results_dir_option,
    scale_option,
    start_compute,
)
from switchrepro.experiments import tables


@click.command(help=f"""Reproduce a paper TABLE ({', '.join(tables.NAMES)}): train its rows x seeds, collect
    the metrics, print them beside the paper's and judge each claim. Stopping and rerunning is safe: finished
    runs are reused, interrupted ones resume.""")
@click.argument("table")
@click.option("--scale", type=click.Choice(SCALES), default="mini", show_default=True,
              help="smoke: seconds per row (CI); mini: the CPU reproduction; paper: Table 9 models on C4.")
@click.option("--seeds", type=int, default=None, help="Seeds per row (default: the table's, per scale).")
@click.option("--rows", default=None, help="Comma-separated row names to run (default: all).")
@click.option("--dry-run", is_flag=True, help="Print the plan (rows, params, FLOPs, steps, estimated time) only.")
@click.option("--collect-only", is_flag=True,
              help="Train nothing: collect the runs finished so far (here, or committed under results/) into the "
                   "table, its verdicts and its logs, e.g. while the table is still training in another process.")
@click.option("--gin", "bindings", multiple=True, metavar="NAME=VALUE", help="Extra binding for every row.")
@click.option("--tfds-data-dir", default=None, help="TFDS directory with c4/en:3.1.0 (paper scale).")
@results_dir_option
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Checkpoints and full logs of every run.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Train with N processes, each pinned to its own CPU core with one XLA thread (on 2 cores, "
                   "2 workers train about a fifth more examples per second than one 2-thread process). The runs are "
                   "shared through their directory locks; the table is collected when all have finished.")
@parallel_options
@expert_path_option
def run(table, scale, seeds, rows, dry_run, collect_only, bindings, tfds_data_dir, results_dir, runs_dir, workers,
        mesh_text, distributed, coordinator, num_processes, process_id, allow_expert_path_change):
    start_compute()
    api.pin_worker()
    if workers > 1 and (mesh_text or distributed or coordinator or num_processes or process_id is not None):
        raise UserError("--workers runs independent one-core processes on this machine; it cannot be combined "
                        "with --mesh or the multi-host options")
    # called before training, in this process only (the environment may name a multi-host job too)
    setup_mesh = None if workers > 1 else lambda: api.setup_parallel(mesh_text, distributed, coordinator,
                                                                     num_processes, process_id, echo=click.echo)
    api.run_table(table, scale, seeds=seeds, rows=rows, bindings=bindings, tfds_data_dir=tfds_data_dir,
                  results_dir=results_dir, runs_dir=runs_dir, workers=workers, collect_only=collect_only,
                  dry_run=dry_run, echo=click.echo, setup_mesh=setup_mesh, command=command_line(),
                  allow_expert_path_change=allow_expert_path_change)


@click.command()
@click.argument("what")
@scale_option
@results_dir_option
def plot(what, scale, results_dir):
    """Draw WHAT (scaling, speed-quality, or a table name) as PNG and SVG under results/<scale>/plots/."""
    for p in api.plot(what, scale, results_dir):
        click.echo(str(p))


@click.command()
@scale_option
@results_dir_option
def report(scale, results_dir):
    """Write results/<scale>/REPORT.md: every table that has results, with verdicts and plots.

    Hand-written context is read from results/<scale>/notes/ when present: `_preface.md` (how the runs
    were made), `<table>.md` (shown under the table) and `<table>.json` ({claim id: why it does not
    reproduce}, quoting the numbers). Calibration regimes, results/<scale>/calibration/<regime>/ (each the
    --results-dir of a `run` of a table's control rows), get a section of their own."""
    path, names = api.write_report(scale, results_dir)
    click.echo(f"wrote {path} ({', '.join(names)})")
