"""The paper's published numbers, one CSV per table under `experiments/paper/` (see its README.md).

Every CSV has a `row` column whose values are the runner's row names, so that our results
join onto the paper's by row. Quality is always the column `nlp` (higher is better).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pandas as pd

TABLES = ("table1", "table2", "table3", "table11", "scaling", "table4", "table5", "table6", "table7", "table8",
          "multilingual", "selective_attention")

TITLES = {
    "table1": "Table 1: Switch versus MoE across capacity factors",
    "table2": "Table 2: selective precision",
    "table3": "Table 3: initialization scale",
    "table11": "Table 11: router exploration strategies",
    "scaling": "Scaling with the number of experts (Figures 4, 5, 6 and 12; Table 7)",
    "table4": "Table 4: fine-tuning regularisation (dropout, expert dropout)",
    "table5": "Table 5: fine-tuning results, dense versus Switch at two sizes",
    "table6": "Table 6: distilling Switch-Base into a dense model",
    "table7": "Table 7: distillation compression with more experts in the teacher",
    "table8": "Table 8: distilling a fine-tuned Switch model",
    "multilingual": "Figures 7 and 8: multilingual pre-training, mSwitch versus mT5 per language",
    "selective_attention": "Selective attention (Leviathan et al. 2024): heads, context pruning, Switch FFNs",
}

# The published time-to-quality threshold of Table 1 (NLP, nats).
PAPER_THRESHOLD = -1.50


def paper_dir() -> Path:
    """`$SWITCHREPRO_PAPER_DIR`, or `experiments/paper/` of the source tree."""
    env = os.environ.get("SWITCHREPRO_PAPER_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "experiments" / "paper"


def load_paper_table(table: str, directory: Optional[Path] = None) -> pd.DataFrame:
    """The paper's rows of `table`, in the paper's order, indexed by `row`."""
    if table not in TABLES:
        raise KeyError(f"no paper numbers for {table!r}; known tables: {', '.join(TABLES)}")
    path = Path(directory or paper_dir()) / f"{table}.csv"
    return pd.read_csv(path).set_index("row")
