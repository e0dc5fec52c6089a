"""Plan a paper table: rows x seeds -> the runs to train, each with its configuration and run directory.

Each (row, seed) is keyed by a hash of its full configuration (`switchrepro.config.store.config_hash`); its
run directory is `<runs_dir>/<scale>/<table>/<row>-s<seed>-<hash>`. Planning builds configurations only:
nothing here trains, and `dry_run_table` estimates what training would cost.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
import pandas as pd

from switchrepro.config import ExperimentConfig
from switchrepro.config.store import config_hash
from switchrepro.config.tables import Row, TableSpec
from switchrepro.model.build import build_model
from switchrepro.model.t5 import dummy_batch
from switchrepro.train.metrics_log import read_metrics
from switchrepro.train.trainer import flops_per_token

# Forward GFLOP/s a whole tiny model sustained in training on the 2-core CPU VM (76.6 examples/s x
# 236 MFLOPs/example, measured once on a tiny model); used only for --dry-run time estimates.
CPU_FORWARD_GFLOPS = 18.0

# (gin files, bindings) -> (config, operative gin text); switchrepro.config.gin.parse_config. A row that starts
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

