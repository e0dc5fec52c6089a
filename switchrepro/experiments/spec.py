"""What a paper table is, as plain data: rows, per-scale settings, seeds and the quality threshold.

A table's gin file (gin/tables/<name>.gin) binds `TableSpec`; `switchrepro.cli` parses it and hands
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
    """

    name: str
    model: str
    bindings: Tuple[str, ...] = ()


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
    """

    name: str
    title: str
    rows: Tuple[Row, ...]
    models: Dict[str, Dict[str, str]]
    scale_bindings: Dict[str, Tuple[str, ...]]
    seeds: Dict[str, int]
    threshold: Optional[Dict[str, float]] = None
    skip_rows: Optional[Dict[str, Tuple[str, ...]]] = None

    def default_rows(self, scale: str) -> Tuple[Row, ...]:
        """The rows a plain `run` trains at `scale`: all rows but that scale's skip_rows."""
        skip = set((self.skip_rows or {}).get(scale, ()))
        return tuple(r for r in self.rows if r.name not in skip)

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
        for scale, skipped in (self.skip_rows or {}).items():
            unknown = sorted(set(skipped) - set(names))
            if scale not in SCALES or unknown:
                raise ValueError(f"table {self.name}: skip_rows[{scale!r}] names unknown scale or rows {unknown}")
        return self


def from_gin_values(name: str, title: str, rows, models, scale_bindings, seeds, threshold=None,
                    skip_rows=None) -> TableSpec:
    """Builds a TableSpec from the lists and dicts that gin parses (rows as dicts)."""
    return TableSpec(
        name=name, title=title,
        rows=tuple(Row(name=r["name"], model=r["model"], bindings=tuple(r.get("bindings", ()))) for r in rows),
        models={s: dict(m) for s, m in models.items()},
        scale_bindings={s: tuple(b) for s, b in scale_bindings.items()},
        seeds=dict(seeds),
        threshold=None if threshold is None else {s: float(v) for s, v in threshold.items()},
        skip_rows=None if skip_rows is None else {s: tuple(v) for s, v in skip_rows.items()},
    ).validate()
