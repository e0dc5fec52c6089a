"""Table 3: initialization scale. A 0.1x smaller initialization gives better quality and a lower
seed-to-seed variance. Rows: gin/tables/table3.gin; paper: experiments/paper/table3.csv.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from switchrepro.experiments import claims as C
from switchrepro.experiments import report as R
from switchrepro.experiments.tabledef import Column, TableDef

NAME = "table3"
TITLE = "Table 3: initialization scale"

CLAIMS = (
    C.beats("init 0.1", "init 1.0", claim_id="t3-small-init-beats",
            text="0.1x initialization gives better quality than 1.0x"),
    C.lower_variance("init 0.1", "init 1.0", claim_id="t3-small-init-lower-variance",
                     text="0.1x initialization lowers the seed-to-seed variance"),
)


def columns(summary: pd.DataFrame, curves: Optional[pd.DataFrame]) -> list[Column]:
    """Mean and std apart, at the paper's two decimals."""
    return [
        ("ours: mean NLP", R.ours(lambda s: f"{s['nlp_mean']:.4f}" if s["n_ok"] else R.ours_nlp(s))),
        ("paper: mean NLP", lambda s, p: R.paper_cell(p, "nlp", 2)),
        ("ours: std", R.ours(lambda s: f"{s['nlp_std']:.4f}" if s["n_ok"] >= 2 else R.DASH)),
        ("paper: std", lambda s, p: R.paper_cell(p, "nlp_std", 2)),
        ("ours: seeds (diverged)", R.ours(lambda s: f"{int(s['n_seeds'])} ({int(s['n_diverged'])})")),
    ]


TABLE = TableDef(NAME, TITLE, CLAIMS, columns)
