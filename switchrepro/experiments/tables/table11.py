"""Table 11: router exploration strategies. Input jitter beats argmax, sampling from the softmax and input
dropout. Rows: gin/tables/table11.gin; paper: experiments/paper/table11.csv.
"""

from __future__ import annotations

from switchrepro.experiments import claims as C
from switchrepro.experiments import report as R
from switchrepro.experiments.tabledef import TableDef

NAME = "table11"
TITLE = "Table 11: router exploration strategies"

CLAIMS = tuple(
    C.beats("input_jitter", other, claim_id=f"t11-jitter-beats-{other.replace('_', '-')}",
            text=f"Input jitter beats {other.replace('_', ' ')}")
    for other in ("argmax", "sample_softmax", "input_dropout")
)

TABLE = TableDef(NAME, TITLE, CLAIMS, R.quality_only)
