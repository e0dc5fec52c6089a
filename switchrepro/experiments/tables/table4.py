"""Table 4: fine-tuning regularisation. Fine-tuned Switch-Base beats T5-Base, expert dropout 0.4 helps and
a uniform dropout of 0.3 hurts, on two tasks. Rows: gin/tables/table4.gin; paper: experiments/paper/table4.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from switchrepro.experiments import claims as C
from switchrepro.experiments import report as R
from switchrepro.experiments.tabledef import Column, PlotData, TableDef
from switchrepro.plots import figures as F

NAME = "table4"
TITLE = "Table 4: fine-tuning regularisation (dropout, expert dropout)"


def _claims() -> tuple[C.Claim, ...]:
    out = [C.pretrained_control("t4")]
    for task in ("sentiment", "cloze_qa"):
        row = lambda label, t=task: f"{label} / {t}"  # noqa: E731
        out += [
            C.beats(row("Switch-Base (d=0.1)"), row("T5-Base (d=0.1)"), "score", claim_id=f"t4-{task}-switch-beats-t5",
                    text=f"{task}: fine-tuned Switch-Base beats fine-tuned T5-Base (both d=0.1)"),
            C.beats(row("Switch-Base (d=0.1, ed=0.4)"), row("Switch-Base (d=0.1)"), "score",
                    claim_id=f"t4-{task}-expert-dropout-helps",
                    text=f"{task}: expert dropout 0.4 beats uniform dropout 0.1 for Switch-Base"),
            C.beats(row("Switch-Base (d=0.1)"), row("Switch-Base (d=0.3)"), "score",
                    claim_id=f"t4-{task}-dropout-0.3-hurts",
                    text=f"{task}: Switch-Base with dropout 0.1 beats dropout 0.3"),
        ]
    return tuple(out)


def columns(summary: pd.DataFrame, curves: Optional[pd.DataFrame]) -> list[Column]:
    return R.finetune_columns()


def plots(d: PlotData, out_dir: Path) -> list[Path]:
    """Validation score vs fine-tuning step, one panel per task."""
    return F.score_vs_step(d.curves, out_dir, **d.kw) if d.has_curves else []


TABLE = TableDef(NAME, TITLE, _claims(), columns, plots)
