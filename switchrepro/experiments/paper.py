"""The paper's published numbers, one CSV per table under `experiments/paper/` (see its README.md).

Every CSV has a `row` column whose values are the runner's row names, so that our results
join onto the paper's by row. Quality is always the column `nlp` (higher is better). The folder is found
through `switchrepro.resources.paper_dir` (in a checkout or in an installed wheel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from switchrepro.resources import paper_dir

# The published time-to-quality threshold (NLP, nats): Table 1's hours to reach it.
PAPER_THRESHOLD = -1.50


def load_paper_table(table: str, directory: Optional[Path] = None) -> pd.DataFrame:
    """The paper's rows of `table`, in the paper's order, indexed by `row`."""
    path = Path(directory or paper_dir()) / f"{table}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.csv"))
        raise KeyError(f"no paper numbers for {table!r} ({path} is missing); known tables: {', '.join(known)}")
    return pd.read_csv(path).set_index("row")
