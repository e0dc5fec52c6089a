"""What every `switchrepro` command shares: the one-line error, the option groups, the start of a command
that computes.

Bad input (an unknown gin file or binding, a bad option value, impossible values, missing data, a damaged
run file, an unwritable path) prints one `error:` line and exits with status 2. The library raises
`switchrepro.api.UserError` (or a ConfigError / DamagedFileError) with that line; the full detail of a
library error goes to the run directory's errors.log; SWITCHREPRO_DEBUG=1 shows tracebacks instead.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from switchrepro import api
from switchrepro import config as C
from switchrepro.backends.cpu import allocator

SCALES = ("smoke", "mini", "paper")


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def debug() -> bool:
    return bool(os.environ.get("SWITCHREPRO_DEBUG"))


class OneLineErrors(click.Group):
    """Click's own usage errors (a bad option value, an unknown command or option), the library's one-line
    errors and OS errors on a path become the CLI's one `error:` line with exit status 2."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise usage_error(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise usage_error(e) from None
        except (api.UserError, C.ConfigError, C.DamagedFileError) as e:
            raise UserError(str(e)) from None
        except OSError as e:
            if debug():
                raise
            where = f": {e.filename}" if e.filename else ""
            raise UserError(f"{e.strerror or type(e).__name__}{where}") from None


def usage_error(e: click.UsageError) -> UserError:
    path = e.ctx.command_path.split(" ") if e.ctx is not None else []
    command = " ".join(["switchrepro", *path[1:]])  # the program name, however it was invoked
    message = " ".join(e.format_message().split())
    return UserError(f"{message} (see `{command} --help`)")


def start_compute() -> None:
    """The first thing a command that trains or benchmarks does: the process-wide allocator setting (see
    switchrepro/backends/cpu/allocator.py), before JAX starts its threads."""
    allocator.keep_freed_memory()


def command_line() -> list:
    """This process's command line as `switchrepro ...` words (what run directories and tables record)."""
    return ["switchrepro"] + sys.argv[1:]


def command_text() -> str:
    """This process's command line as one copy-paste runnable `switchrepro ...` string."""
    return shlex.join(command_line())


def writable_parent(output) -> None:
    """An --output file's folder must be writable: fail now, not after minutes of timing."""
    if output is not None:
        api.ensure_writable(output.parent if str(output.parent) else Path("."), "--output")


def config_options(f):
    f = click.option("--gin", "bindings", multiple=True, metavar="NAME=VALUE",
                     help="gin binding, e.g. --gin 'MoeConfig.num_experts=32' (repeatable).")(f)
    f = click.option("--gin-file", "gin_files", multiple=True, metavar="FILE",
                     help="gin file: a path or a name under gin/ (repeatable, later files win).")(f)
    f = click.option("--tfds-data-dir", default=None, help="TFDS directory holding c4/en:3.1.0 (for C4 tasks).")(f)
    return f


def parallel_options(f):
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


def expert_path_option(f):
    return click.option("--allow-expert-path-change", is_flag=True,
                        help="Resume a run even if this host resolves the MoE expert path (switchrepro/backends) "
                             "differently from the one recorded in its config.json; without it such a resume "
                             "stops with one line.")(f)


def scale_option(f):
    return click.option("--scale", type=click.Choice(SCALES), default="mini", show_default=True)(f)


def results_dir_option(f):
    return click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
                        show_default=True)(f)
