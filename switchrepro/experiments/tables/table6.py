"""Table 6: distilling Switch-Base into a dense model. Each distilled student beats T5-Base trained without
the teacher; initialising from the teacher's non-expert weights and mixing hard and soft loss each help.
Rows: gin/tables/table6.gin; paper: experiments/paper/table6.csv.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import pandas as pd

from switchrepro.experiments import claims as C
from switchrepro.experiments import report as R
from switchrepro.experiments.tabledef import Column, TableDef

NAME = "table6"
TITLE = "Table 6: distilling Switch-Base into a dense model"
DENSE = "T5-Base"  # the dense row a distilled student is compared with (the "gain kept" baseline)
STUDENTS = ("Distillation", "+ Init. non-expert weights from teacher", "+ 0.75 mix of hard and soft loss")


def _claims() -> tuple[C.Claim, ...]:
    teacher = C.beats("Switch-Base", DENSE, claim_id="t6-teacher-ahead", text="The teacher Switch-Base beats T5-Base")
    return (
        teacher,
        *[C.distillation_keeps_gain(student, DENSE, "Switch-Base", teacher.id,
                                    claim_id=f"t6-{C.slug(student)}-keeps-gain",
                                    text=f"{student.lstrip('+ ')}: the student beats T5-Base")
          for student in STUDENTS],
        dataclasses.replace(C.beats(STUDENTS[2], "Initialization Baseline (no distillation)",
                                    claim_id="t6-distillation-beats-init-only",
                                    text="The gain comes from distillation: the 0.75-mix student beats the "
                                         "initialisation-only baseline"), teacher_claim=teacher.id),
        dataclasses.replace(C.beats(STUDENTS[1], STUDENTS[0], claim_id="t6-init-helps",
                                    text="Initialising the student from the teacher's non-expert weights helps "
                                         "distillation"), teacher_claim=teacher.id),
    )


def columns(summary: pd.DataFrame, curves: Optional[pd.DataFrame]) -> list[Column]:
    return [*R.params_columns(), *R.nlp_columns(), *R.kept_columns(summary, DENSE, "nlp")]


TABLE = TableDef(NAME, TITLE, _claims(), columns)
