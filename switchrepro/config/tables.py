"""What a paper table is, as plain data: rows, per-scale settings, seeds and the quality threshold.

A table's gin file (gin/tables/<name>.gin) binds `TableSpec`; `switchrepro.config.gin` parses it and hands
the runner this frozen dataclass, so the runner itself never sees gin.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

SCALES = ("smoke", "mini", "paper")


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a paper table.

    Attributes:
      name: display name, as in the paper (e.g. "Switch-Base cf1.25").
      model: key into TableSpec.models[scale]: which gin model file this row starts from.
      bindings: gin bindings applied after the scale's bindings (e.g. "MoeConfig.capacity_factor_train = 1.0").
      pretrained: another row of the table whose trained parameters (same seed) this row starts from and
        fine-tunes (paper Tables 4, 5 and 8).
      teacher: another row of the table whose trained model (same seed) this row learns from by
        distillation (paper Tables 6 to 8).
      task: a key of TableSpec.tasks: the downstream task this row trains on (None: pre-training data).
      schedule: a key of TableSpec.schedules: the bindings that replace the scale's pre-training
        schedule (None: "finetune" for rows with `pretrained`, the pre-training schedule otherwise).
    """

    name: str
    model: str
    bindings: Tuple[str, ...] = ()
    pretrained: Optional[str] = None
    teacher: Optional[str] = None
    task: Optional[str] = None
    schedule: Optional[str] = None

    @property
    def stage(self) -> str:
        """'pretrain', 'finetune' (starts from `pretrained`) or 'distill' (learns from `teacher`; with
        `pretrained` too, it is fine-tuned with distillation, as in paper Table 8)."""
        return "distill" if self.teacher else "finetune" if self.pretrained else "pretrain"

    @property
    def sources(self) -> Tuple[str, ...]:
        return tuple(r for r in (self.pretrained, self.teacher) if r)


@dataclasses.dataclass(frozen=True)
class PruningSpec:
    """Context pruning at inference (selective attention's table): each finished run's held-out LM rows are
    scored with a key/value cache of each budget (model/pruning.py), and the quality is read at each context
    length (the first `context` positions of every row).

    Attributes:
      budgets: cached positions per layer, each >= 2, increasing; a budget >= a context is no pruning there.
      contexts: context lengths, increasing; the largest must not exceed the rows' length (targets_length).
      examples: held-out rows scored (the first ones of the validation cache).
    """

    budgets: Tuple[int, ...]
    contexts: Tuple[int, ...]
    examples: int

    def validate(self, where: str) -> "PruningSpec":
        for name in ("budgets", "contexts"):
            values = getattr(self, name)
            _check_spec(len(values) > 0 and list(values) == sorted(set(values)),
                        f"{where}: pruning {name} must be a non-empty increasing list, got {list(values)}")
        _check_spec(self.budgets[0] >= 2, f"{where}: pruning budgets must be >= 2 (the segment start and the newest "
                    f"key), got {self.budgets[0]}")
        _check_spec(self.examples >= 1, f"{where}: pruning examples must be >= 1, got {self.examples}")
        return self


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """A paper experiment: rows x seeds at one of three scales.

    Attributes:
      name: table id (table1, table2, table3, table11, scaling).
      title: what the paper's table or figure shows.
      rows: the rows in the paper's order.
      models: per scale, model key -> gin model file (e.g. {"smoke": {"dense": "models/tiny_dense.gin"}}).
      scale_bindings: per scale, gin bindings applied to every row (steps, batch, eval cadence...).
      seeds: per scale, the default number of seeds.
      threshold: per scale, the negative log-perplexity that "time to quality" is measured against
        (the paper's -1.50 at paper scale); None for tables without a threshold.
      skip_rows: per scale, rows left out unless asked for by name (e.g. 128 experts on a CPU).
      schedules: name -> per scale, bindings applied after scale_bindings to the rows with that schedule
        (e.g. "finetune": steps, learning rate, dropout and evaluation cadence of fine-tuning).
      tasks: per scale, task key -> seqio task name, or a list of bindings naming the task and its feature
        lengths (e.g. {"mini": {"sentiment": "switchrepro_byte_sentiment"}}).
      pruning: per scale, the context-pruning evaluation of every finished run (selective attention's table).
    """

    name: str
    title: str
    rows: Tuple[Row, ...]
    models: Dict[str, Dict[str, str]]
    scale_bindings: Dict[str, Tuple[str, ...]]
    seeds: Dict[str, int]
    threshold: Optional[Dict[str, float]] = None
    skip_rows: Optional[Dict[str, Tuple[str, ...]]] = None
    schedules: Optional[Dict[str, Dict[str, Tuple[str, ...]]]] = None
    tasks: Optional[Dict[str, Dict[str, object]]] = None
    pruning: Optional[Dict[str, PruningSpec]] = None

    def default_rows(self, scale: str) -> Tuple[Row, ...]:
        """The rows a plain `run` trains at `scale`: all rows but that scale's skip_rows (and the rows that
        those it keeps start from or learn from, skipped or not)."""
        skip = set((self.skip_rows or {}).get(scale, ()))
        return self.with_sources(r.name for r in self.rows if r.name not in skip)

    def schedule_bindings(self, row: Row, scale: str) -> Tuple[str, ...]:
        """The scale's bindings, then the row's schedule's (see Row.schedule)."""
        name = row.schedule or ("finetune" if row.pretrained else None)
        extra = (self.schedules or {}).get(name, {}).get(scale, ()) if name else ()
        return (*self.scale_bindings[scale], *extra)

    def task_binding(self, row: Row, scale: str) -> Tuple[str, ...]:
        """The bindings of a row's downstream task at `scale`: TableSpec.tasks gives a seqio task name
        (-> `DataConfig.task = '<name>'`) or a list of bindings (the task and its feature lengths); () for
        pre-training rows."""
        if not row.task:
            return ()
        task = self.tasks[scale][row.task]
        return (f"DataConfig.task = '{task}'",) if isinstance(task, str) else tuple(task)

    def with_sources(self, names) -> Tuple[Row, ...]:
        """The rows named, preceded by every row they start from or learn from (recursively), in table order."""
        wanted = set()
        todo = list(names)
        while todo:
            row = self.row(todo.pop())
            if row.name not in wanted:
                wanted.add(row.name)
                todo.extend(row.sources)
        return tuple(r for r in self.rows if r.name in wanted)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"{self.name} has no row {name!r}; rows are: {', '.join(r.name for r in self.rows)}")

    def validate(self) -> "TableSpec":
        if not self.rows:
            raise ValueError(f"table {self.name} has no rows")
        for scale in SCALES:
            if scale not in self.models or scale not in self.scale_bindings or scale not in self.seeds:
                raise ValueError(f"table {self.name} must give models, scale_bindings and seeds for scale {scale!r}")
            missing = sorted({r.model for r in self.rows} - set(self.models[scale]))
            if missing:
                raise ValueError(f"table {self.name}, scale {scale}: no model file for {missing}")
        names = [r.name for r in self.rows]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name} has duplicate row names")
        for i, r in enumerate(self.rows):
            for src in r.sources:
                _check_spec(src in names[:i], f"table {self.name}, row {r.name!r}: its source row {src!r} must be "
                            "an earlier row of the table")
            if r.schedule is not None:
                _check_spec(r.schedule in (self.schedules or {}), f"table {self.name}, row {r.name!r}: no schedule "
                            f"{r.schedule!r} in TableSpec.schedules")
            if r.task is not None:
                for scale in SCALES:
                    _check_spec(r.task in (self.tasks or {}).get(scale, {}), f"table {self.name}, row {r.name!r}: "
                                f"TableSpec.tasks[{scale!r}] has no task {r.task!r}")
            if r.pretrained and not r.schedule:
                _check_spec("finetune" in (self.schedules or {}), f"table {self.name}: row {r.name!r} fine-tunes, "
                            "so TableSpec.schedules needs a 'finetune' entry")
        for name, per_scale in (self.schedules or {}).items():
            _check_spec(set(per_scale) == set(SCALES), f"table {self.name}: schedule {name!r} must give bindings "
                        f"for every scale {SCALES}")
        if self.pruning is not None:
            _check_spec(set(self.pruning) == set(SCALES), f"table {self.name}: pruning must be given for every scale "
                        f"{SCALES}")
            for scale, p in self.pruning.items():
                p.validate(f"table {self.name}, scale {scale}")
        for scale, skipped in (self.skip_rows or {}).items():
            unknown = sorted(set(skipped) - set(names))
            if scale not in SCALES or unknown:
                raise ValueError(f"table {self.name}: skip_rows[{scale!r}] names unknown scale or rows {unknown}")
        return self


def _check_spec(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


ROW_KEYS = ("name", "model", "bindings", "pretrained", "teacher", "task", "schedule")


def _row(r: dict) -> Row:
    unknown = sorted(set(r) - set(ROW_KEYS))
    _check_spec(not unknown, f"row {r.get('name')!r} has unknown keys {unknown}; a row takes {', '.join(ROW_KEYS)}")
    return Row(name=r["name"], model=r["model"], bindings=tuple(r.get("bindings", ())), pretrained=r.get("pretrained"),
               teacher=r.get("teacher"), task=r.get("task"), schedule=r.get("schedule"))


def from_gin_values(name: str, title: str, rows, models, scale_bindings, seeds, threshold=None,
                    skip_rows=None, schedules=None, tasks=None, pruning=None) -> TableSpec:
    """Builds a TableSpec from the lists and dicts that gin parses (rows as dicts)."""
    return TableSpec(
        name=name, title=title,
        rows=tuple(_row(r) for r in rows),
        models={s: dict(m) for s, m in models.items()},
        scale_bindings={s: tuple(b) for s, b in scale_bindings.items()},
        seeds=dict(seeds),
        threshold=None if threshold is None else {s: float(v) for s, v in threshold.items()},
        skip_rows=None if skip_rows is None else {s: tuple(v) for s, v in skip_rows.items()},
        schedules=None if schedules is None else {n: {s: tuple(b) for s, b in v.items()} for n, v in schedules.items()},
        tasks=None if tasks is None else {s: {k: t if isinstance(t, str) else tuple(t) for k, t in v.items()}
                                          for s, v in tasks.items()},
        pruning=None if pruning is None else {s: _pruning(s, p) for s, p in pruning.items()},
    ).validate()


PRUNING_KEYS = ("budgets", "contexts", "examples")


def _pruning(scale: str, p: dict) -> PruningSpec:
    _check_spec(isinstance(p, dict) and set(p) == set(PRUNING_KEYS),
                f"pruning[{scale!r}] must be a dict with exactly the keys {', '.join(PRUNING_KEYS)}, got {p!r}")
    return PruningSpec(budgets=tuple(int(b) for b in p["budgets"]), contexts=tuple(int(c) for c in p["contexts"]),
                       examples=int(p["examples"]))
