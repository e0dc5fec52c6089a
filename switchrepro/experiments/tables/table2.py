"""Table 2: selective precision. A bfloat16 router diverges; casting only the router to float32 is stable,
matches float32's quality and runs faster. Rows: gin/tables/table2.gin; paper: experiments/paper/table2.csv.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from switchrepro.experiments import claims as C
from switchrepro.experiments import report as R
from switchrepro.experiments.tabledef import Column, TableDef

NAME = "table2"
TITLE = "Table 2: selective precision"

CLAIMS = (
    C.diverges("bfloat16", claim_id="t2-bfloat16-diverges", text="A bfloat16 router diverges"),
    C.stable("selective", claim_id="t2-selective-stable", text="Selective precision (float32 router) is stable"),
    C.matches("selective", "float32", claim_id="t2-selective-matches-float32",
              text="Selective precision matches float32 quality"),
    C.beats("selective", "float32", metric="examples_per_sec", claim_id="t2-selective-faster-float32",
            text="Selective precision is faster than float32"),
)


def columns(summary: pd.DataFrame, curves: Optional[pd.DataFrame]) -> list[Column]:
    return [
        *R.nlp_columns(),
        ("ours: diverged", R.ours(lambda s: f"{int(s['n_diverged'])}/{int(s['n_seeds'])}")),
        ("paper: diverged", lambda s, p: R.paper_cell(p, "diverged")),
        *R.speed_columns(),
    ]


TABLE = TableDef(NAME, TITLE, CLAIMS, columns)
