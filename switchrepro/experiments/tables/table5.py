"""Table 5: fine-tuning results. Fine-tuned Switch beats its FLOP-matched dense model on every task, at two
sizes. Rows: gin/tables/table5.gin; paper: experiments/paper/table5.csv.
"""

from __future__ import annotations

from switchrepro.experiments import claims as C
from switchrepro.experiments.tabledef import TableDef
from switchrepro.experiments.tables import table4

NAME = "table5"
TITLE = "Table 5: fine-tuning results, dense versus Switch at two sizes"
TASKS = ("sentiment", "spam", "cloze_qa", "wordnet_qa")


def _claims() -> tuple[C.Claim, ...]:
    out = [C.pretrained_control("t5"), C.pretrained_control("t5", "Switch-Large", "T5-Large"),
           C.beats("T5-Large", "T5-Base", claim_id="t5-control-larger-dense", control=True,
                   text="Positive control: the larger dense T5-Large beats T5-Base (pre-training NLP)")]
    for task in TASKS:
        for size in ("Base", "Large"):
            out.append(C.beats(f"Switch-{size} / {task}", f"T5-{size} / {task}", "score",
                               claim_id=f"t5-{task}-switch-{size.lower()}-beats-t5",
                               text=f"{task}: fine-tuned Switch-{size} beats the FLOP-matched T5-{size}"))
    return tuple(out)


TABLE = TableDef(NAME, TITLE, _claims(), table4.columns, table4.plots)
