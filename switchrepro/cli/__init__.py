"""The `switchrepro` command line: one module per command group, each command a thin wrapper of the library.

    cli/train.py    train, distill, finetune, eval, inspect   (one run directory)
    cli/tables.py   run, plot, report                         (a paper table; REPORT.md)
    cli/data.py     data build, data info                     (the embedded corpus)
    cli/bench.py    bench moe, attention, table, peer         (timings)
    cli/common.py   the one-line error, shared options, the start of a command that computes

The work itself is `switchrepro.api`'s (and, below it, the library's); gin is parsed only in
`switchrepro.config.gin`. Importing this package changes nothing in the process: the commands that train
or benchmark apply the allocator setting themselves (cli/common.py `start_compute`).
"""

from __future__ import annotations

import click

from switchrepro.cli.bench import bench
from switchrepro.cli.common import OneLineErrors, UserError
from switchrepro.cli.data import data
from switchrepro.cli.tables import plot, report, run
from switchrepro.cli.train import distill, eval_cmd, finetune, inspect_cmd, train

__all__ = ["UserError", "main"]


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Reproduce the Switch Transformer paper's tables with JAX/Flax, offline by default."""


for command in (train, distill, finetune, eval_cmd, inspect_cmd, run, plot, report, data, bench):
    main.add_command(command)
