"""`switchrepro bench moe`, `attention`, `table` and `peer`: timings as ratios measured in one sitting."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import click

from switchrepro import api
from switchrepro import config as C
from switchrepro.bench import attention as bench_attention_lib
from switchrepro.bench import moe as bench_moe_lib
from switchrepro.bench import peer as P
from switchrepro.bench import table as bench_table_lib
from switchrepro.cli.common import SCALES, UserError, command_text, results_dir_option, start_compute, writable_parent
from switchrepro.experiments import store
from switchrepro.moe import parallel
from switchrepro.train import host


@click.group()
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
    start_compute()
    writable_parent(output)  # fail now, not after minutes of timing
    if mesh_text:
        try:
            mesh = parallel.make_mesh(parallel.parse_mesh(mesh_text))
            for e in counts:  # before any timing
                parallel.check_experts(e, mesh)
            if (tokens // 128) % mesh.size:
                raise ValueError(f"--tokens {tokens} is {tokens // 128} sequences of 128, which do not divide "
                                 f"over the {mesh.size} devices of the mesh; pass a multiple of {128 * mesh.size}")
        except ValueError as err:
            raise UserError(str(err)) from err
        text = bench_moe_lib.run_mesh_bench(mesh, counts, repeats=repeats, tokens=tokens, echo=click.echo)
    else:
        text = bench_moe_lib.run_moe_bench(counts, repeats=repeats, whole_model_steps=whole_model_steps, tokens=tokens,
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
    start_compute()
    try:
        wanted = [int(x) for x in lengths.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--lengths takes comma-separated integers, e.g. 128,256; got {lengths!r}") from None
    if not wanted or min(wanted) < 2:
        raise UserError(f"--lengths needs context lengths >= 2, got {lengths!r}")
    writable_parent(output)
    text = bench_attention_lib.run_attention_bench(wanted, batch_size=batch_size, pairs=pairs, warmup=warmup,
                                                   echo=click.echo)
    if output:
        output.write_text(text)


@bench.command("table")
@click.argument("table")
@click.option("--scale", type=click.Choice(SCALES), default="mini", show_default=True)
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
@results_dir_option
def bench_table(table, scale, rows, steps, output, bindings, rounds, save, results_dir):
    """Time one training step of each row of TABLE at its real shapes (synthetic batches, in this process with
    its cores and XLA threads) and estimate the table's training time: rows x seeds x steps. Run it under
    `taskset -c 0` with XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" for the
    one-core time of a `run --workers` process."""
    start_compute()
    if save and (rows or bindings or rounds < 2):
        raise UserError("--save times the table as it is run: drop --rows and --gin, and use --rounds 2 or more "
                        "(each seed's speed is one round's timing, so the rounds give the spread)")
    writable_parent(output)
    if save:
        api.ensure_writable(results_dir, "--results-dir")
    spec = api.table_spec(table)
    planned = api.plan_table(spec, scale, bindings, Path("runs"), 1, rows)
    where = f"{api.backend_line()}; {host.layout(host.describe())}"
    click.echo(where)
    click.echo(f"{table} at {scale} scale, {spec.seeds[scale]} seed(s) per row; {steps} timed steps per row "
               f"and round, {rounds} round(s)")
    text, timed = bench_table_lib.run_table_bench([(r.row.name, r.config) for r in planned], spec.seeds[scale], steps,
                                    rounds=rounds, echo=click.echo)
    command = command_text()
    if output:
        output.write_text(f"`{command}`\n\n{where}\n\n{text}")
    if save:
        path = store.save_speed(results_dir, scale, table, timed, {
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
    start_compute()
    missing = P.missing_peer_packages()
    if missing:
        raise UserError(P.missing_message(missing))
    writable_parent(output)
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
        output.write_text(f"`{command_text()}`\n\n{text}")
