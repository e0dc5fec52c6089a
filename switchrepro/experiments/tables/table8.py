"""Table 8: distilling a fine-tuned Switch model into a dense one: the distilled T5-Base beats the plainly
fine-tuned T5-Base, keeping part of the teacher's gain. Rows: gin/tables/table8.gin; paper:
experiments/paper/table8.csv.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from switchrepro.experiments import claims as C
from switchrepro.experiments import report as R
from switchrepro.experiments.tabledef import Column, TableDef
from switchrepro.experiments.tables import table4

NAME = "table8"
TITLE = "Table 8: distilling a fine-tuned Switch model"
DENSE = "T5-Base / sentiment"  # the dense row a distilled student is compared with (the "gain kept" baseline)

_TEACHER = C.beats("Switch-Base / sentiment", DENSE, "score", claim_id="t8-teacher-ahead",
                   text="The fine-tuned teacher Switch-Base beats the fine-tuned T5-Base (sentiment)")
CLAIMS = (
    C.pretrained_control("t8"), _TEACHER,
    C.distillation_keeps_gain("Distilled T5-Base / sentiment", DENSE, "Switch-Base / sentiment", _TEACHER.id,
                              claim_id="t8-distilled-keeps-gain", metric="score",
                              text="The distilled T5-Base beats the plainly fine-tuned T5-Base (sentiment)"),
)


def columns(summary: pd.DataFrame, curves: Optional[pd.DataFrame]) -> list[Column]:
    return [*R.finetune_columns(), *R.kept_columns(summary, DENSE, "score")]


TABLE = TableDef(NAME, TITLE, CLAIMS, columns, table4.plots)
