"""The registry of the paper's tables: one module per table in this package, each building a `TableDef`
(switchrepro.experiments.tabledef) with everything specific to that table except its rows (gin/tables/<name>.gin)
and its published numbers (experiments/paper/<name>.csv).

The Makefile's tables, the CLI's table names, the titles and `report` all come from here. Adding a table is
one module here (listed below), one gin file and one CSV; see docs/architecture.md.
"""

from __future__ import annotations

from switchrepro.experiments import claims as C
from switchrepro.experiments.tabledef import TableDef
from switchrepro.experiments.tables import (
    multilingual,
    scaling,
    selective_attention,
    table1,
    table2,
    table3,
    table4,
    table5,
    table6,
    table7,
    table8,
    table11,
)

_MODULES = (table1, table2, table3, table11, scaling, table6, table7, table4, table5, table8, multilingual,
            selective_attention)

# In the order `make reproduce` runs them: each table's sources (pre-trained and teacher runs) come first.
NAMES: tuple[str, ...] = tuple(m.NAME for m in _MODULES)
# In the paper's order: the order of REPORT.md's sections.
REPORT_ORDER: tuple[str, ...] = ("table1", "table2", "table3", "table11", "scaling", "table4", "table5", "table6",
                                 "table7", "table8", "multilingual", "selective_attention")
TITLES: dict[str, str] = {m.NAME: m.TITLE for m in _MODULES}
_TABLES: dict[str, TableDef] = {m.NAME: m.TABLE for m in _MODULES}

# `switchrepro plot WHAT`: WHAT is a table name, or one of these single figures -> (table, figure name).
PLOT_ALIASES: dict[str, tuple[str, str]] = {what: (t.name, what) for t in _TABLES.values() for what in t.figures}

# "How verdicts are decided" in REPORT.md: the generic rule, then the tables' own.
POSITIVE_CONTROL_RULE = (
    "**Positive control.** table1, scaling and multilingual first check that the larger dense model "
    "(T5-Large, mT5-Large) beats the base one; selective_attention, that standard attention with 2 heads beats 1. "
    "If that control is not reproduced, the regime cannot show what "
    "parameters buy, and every other "
    "verdict of the table reads **regime invalid** (its detail keeps what it would have been)."
)
VERDICT_RULE = "\n\n".join((C.VERDICT_RULE, POSITIVE_CONTROL_RULE, multilingual.RULE, selective_attention.RULE,
                            C.TEACHER_RULE))


def get(name: str) -> TableDef:
    """The table called `name`; ValueError naming the known ones otherwise."""
    try:
        return _TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(NAMES)}") from None


def plot_target(what: str) -> str:
    """The table whose results `switchrepro plot WHAT` draws."""
    return PLOT_ALIASES[what][0] if what in PLOT_ALIASES else what


def calibrated() -> tuple[TableDef, ...]:
    """The tables whose control rows a calibration regime may hold, in the order they are looked for."""
    return tuple(_TABLES[n] for n in CALIBRATION_ORDER)


# A regime under results/<scale>/calibration/ is a `run` of one of these tables' control rows.
CALIBRATION_ORDER: tuple[str, ...] = tuple(n for n in ("scaling", "table1") if _TABLES[n].calibrated)
