"""`switchrepro bench table`: training time of a table's rows at their real shapes, to estimate what a table
costs before training it."""

from __future__ import annotations

from typing import Callable, Tuple

import pandas as pd

from switchrepro.bench.timing import Stepper


def run_table_bench(rows, seeds: int, steps: int = 10, rounds: int = 1,
                    echo: Callable[[str], None] = print) -> Tuple[str, pd.DataFrame]:
    """Training time of a table's rows at their real shapes. `rows`: [(row name, ExperimentConfig)].

    Every row's step is compiled first, then timed in `rounds` rounds (rows in turn, the order reversed
    every other round, so that drifts in machine load hit all rows alike); a round's time is the median
    of `steps` steps on synthetic batches, in this process with its cores and XLA threads. The estimate
    is seeds x TrainConfig.steps x the median round, leaving out evaluation and checkpoints (a few percent
    at mini scale). Returns the markdown table and one row per (row, round): `row`, `round`,
    `sec_per_step`, `batch_size`."""
    steppers = {}
    for name, cfg in rows:
        d = cfg.data
        steppers[name] = (Stepper(cfg.model, d.batch_size, d.inputs_length, d.targets_length), cfg)
    timed = []
    for r in range(rounds):
        order = list(steppers) if r % 2 == 0 else list(steppers)[::-1]
        for name in order:
            timed.append({"row": name, "round": r, "sec_per_step": steppers[name][0].seconds_per_step(steps),
                          "batch_size": steppers[name][1].data.batch_size})
    frame = pd.DataFrame(timed)
    lines = ["| row | params | examples/sec | sec/step | spread over rounds | steps x seeds | est. minutes |",
             "|---|---|---|---|---|---|---|"]
    total = 0.0
    for name, (stepper, cfg) in steppers.items():
        secs = frame.loc[frame["row"] == name, "sec_per_step"]
        sec_per_step = float(secs.median())
        spread = f"{100 * float(secs.std(ddof=1)) / float(secs.mean()):.1f}%" if len(secs) > 1 else "-"
        minutes = seeds * cfg.train.steps * sec_per_step / 60
        total += minutes
        lines.append(f"| {name} | {stepper.params:,} | {cfg.data.batch_size / sec_per_step:.1f} | {sec_per_step:.3f} "
                     f"| {spread} | {cfg.train.steps} x {seeds} | {minutes:.1f} |")
        echo(lines[-1])
    lines.append(f"| **all** | | | | | | **{total:.1f}** |")
    echo(lines[-1])
    return "\n".join(lines) + "\n", frame
