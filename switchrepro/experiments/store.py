"""A table's saved results: results/<scale>/<table>.csv and the files beside it, written and read back.

`save` writes what `run` collected; `load_saved`, `load_languages`, `load_pruning` and `load_speed` read it
back for `report`, `plot` and the library (`switchrepro.api.load_table`). A damaged file is a ResultsError
whose one line names it and the command that rewrites it. Writers hold the table's results lock and
rename each whole file into place, so a reader or a second process never sees half a table.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence, Tuple

import pandas as pd

from switchrepro.config import DamagedFileError
from switchrepro.config.tables import TableSpec
from switchrepro.experiments.planning import PlannedRun, run_status
from switchrepro.train.run_lock import Lock


class ResultsError(DamagedFileError):
    """A saved results file cannot be read; the message is one line naming it."""


PRUNING_COLUMNS = ["table", "row", "seed", "context", "budget", "nlp"]


def save(spec: TableSpec, scale: str, runs: Sequence[PlannedRun], results: pd.DataFrame, curves: pd.DataFrame,
         loads: dict, results_dir: Path, meta: dict, languages: Optional[pd.DataFrame] = None,
         pruning: Optional[pd.DataFrame] = None) -> Path:
    """Writes results/<scale>/<table>.csv (+ _curves.csv, _loads.json, _meta.json, _languages.csv.gz when
    `languages` has rows, _pruning.csv when `pruning` has rows) and copies each run's small logs
    (metrics.jsonl, config.gin, pruning.json) under results/<scale>/logs/<table>/ so they can be committed.

    Each file is written whole and then renamed into place, under the table's results lock, so a reader
    or a second process never sees half a table."""
    out = results_dir / scale
    out.mkdir(parents=True, exist_ok=True)
    with results_lock(results_dir, scale, spec.name):
        write_atomic(out / f"{spec.name}.csv", results.to_csv(index=False))
        write_atomic(out / f"{spec.name}_curves.csv", curves.to_csv(index=False))
        write_atomic(out / f"{spec.name}_loads.json", json.dumps(loads, indent=1, sort_keys=True) + "\n")
        write_atomic(out / f"{spec.name}_meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
        if languages is not None and len(languages):
            tmp = out / f".{spec.name}_languages.csv.gz.{os.getpid()}.tmp"
            # mtime 0 and no file name in the gzip header (pandas wrote the temporary name, with its pid): the
            # same frame gives the same bytes, so a committed file changes only when its numbers do
            tmp.write_bytes(gzip.compress(languages.to_csv(index=False).encode(), mtime=0))
            os.replace(tmp, out / f"{spec.name}_languages.csv.gz")
        if pruning is not None and len(pruning):
            write_atomic(out / f"{spec.name}_pruning.csv", pruning.to_csv(index=False))
        copy_logs(spec, runs, out)
    return out / f"{spec.name}.csv"


# -------------------------------------------------------------------------- speed from one sitting


def save_speed(results_dir: Path, scale: str, table: str, timed: pd.DataFrame, meta: dict) -> Path:
    """Writes `switchrepro bench table --save` timings: results/<scale>/<table>_speed.csv (`row`, `round`,
    `sec_per_step`, `batch_size`) and _speed.json (command, host, date)."""
    out = Path(results_dir) / scale
    out.mkdir(parents=True, exist_ok=True)
    with results_lock(results_dir, scale, table):
        write_atomic(out / f"{table}_speed.csv", timed.to_csv(index=False))
        write_atomic(out / f"{table}_speed.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out / f"{table}_speed.csv"


def load_speed(results_dir: Path, scale: str, table: str) -> Optional[Tuple[pd.DataFrame, dict]]:
    """The saved one-sitting timings of `table`, or None."""
    path = Path(results_dir) / scale / f"{table}_speed.csv"
    if not path.exists():
        return None
    try:
        timed = pd.read_csv(path)
        meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
        if not {"row", "round", "sec_per_step"} <= set(timed.columns):
            raise ValueError("missing columns")
    except (ValueError, pd.errors.ParserError) as e:
        raise ResultsError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]}); rerun "
                           f"`switchrepro bench table {table} --scale {scale} --rounds 3 --save`") from None
    return timed, meta


def apply_speed(results: pd.DataFrame, curves: pd.DataFrame, timed: pd.DataFrame):
    """Training-log speed replaced by one-sitting timings: the run with seed s of a row gets the row's
    timing round s mod R as its seconds per step, so the seeds' spread in speed is the rounds' spread.
    `examples_per_sec` = batch / that time, `wall_seconds` (results and curves) = step x that time
    (evaluation and checkpoints left out). Rows without a timing keep their logs' figures; the column
    `speed_source` says which is which."""
    results, curves = results.copy(), curves.copy()
    results["speed_source"] = "training log"
    for row, rounds in timed.sort_values("round").groupby("row", sort=False):
        secs = rounds["sec_per_step"].to_numpy()
        batch = rounds["batch_size"].to_numpy()
        for i in results.index[results["row"] == row]:
            k = int(results.at[i, "seed"]) % len(secs)
            results.at[i, "examples_per_sec"] = batch[k] / secs[k]
            results.at[i, "wall_seconds"] = results.at[i, "final_step"] * secs[k]
            results.at[i, "speed_source"] = "bench table"
            if len(curves):
                mask = (curves["row"] == row) & (curves["seed"] == results.at[i, "seed"])
                curves.loc[mask, "wall_seconds"] = curves.loc[mask, "step"] * secs[k]
    return results, curves


def results_lock(results_dir: Path, scale: str, table: str) -> Lock:
    """The lock a table's results files are written under."""
    return Lock(Path(results_dir) / scale / f".{table}.lock")


def write_atomic(path: Path, text: str) -> None:
    """Writes `path` whole: a temporary file beside it, renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def copy_logs(spec: TableSpec, runs: Sequence[PlannedRun], out: Path) -> None:
    """Each finished run's small logs (metrics.jsonl, config.gin, pruning.json) under out/logs/<table>/."""
    for run in runs:
        if run_status(run) in ("done", "diverged"):
            dst = out / "logs" / spec.name / run.run_dir.name
            dst.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.jsonl", "config.gin", "pruning.json"):
                if (run.run_dir / name).exists():
                    shutil.copy2(run.run_dir / name, dst / name)



def load_languages(results_dir: Path, scale: str, table: str) -> Optional[pd.DataFrame]:
    """The per-language frame `save` wrote for `table` (see collect_languages), or None if it has none."""
    path = Path(results_dir) / scale / f"{table}_languages.csv.gz"
    if not path.exists():
        return None
    try:
        # codes such as "007" and "nan" are strings, not numbers or missing values
        frame = pd.read_csv(path, dtype={"lang": str}, keep_default_na=False, na_values=[""])
        if not {"row", "seed", "step", "lang", "nlp"} <= set(frame.columns):
            raise ValueError("missing columns")
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as e:
        raise ResultsError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]}); rerun "
                           f"`switchrepro run {table} --collect-only` to rewrite it from the runs") from None
    frame["lang"] = frame["lang"].astype(str)
    return frame


def load_pruning(results_dir: Path, scale: str, table: str) -> Optional[pd.DataFrame]:
    """The context-pruning frame `save` wrote for `table` (see collect_pruning), or None if it has none."""
    path = Path(results_dir) / scale / f"{table}_pruning.csv"
    if not path.exists():
        return None
    try:
        frame = pd.read_csv(path)
        if not set(PRUNING_COLUMNS) <= set(frame.columns):
            raise ValueError("missing columns")
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise ResultsError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]}); rerun "
                           f"`switchrepro run {table} --collect-only` to rewrite it from the runs") from None
    return frame


def _read_saved(path: Path, parse, empty, table: str):
    """parse(path), `empty` for a missing or empty file, a damaged one as a one-line ResultsError."""
    if not path.exists() or path.stat().st_size <= 1:
        return empty
    try:
        return parse(path)
    except (ValueError, pd.errors.ParserError) as e:
        raise ResultsError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]}); rerun "
                           f"`switchrepro run {table}` to rewrite it from the runs") from None


def load_saved(results_dir: Path, scale: str, table: str):
    """(results, curves, loads, meta) as `save` wrote them, or None if the table has not been run."""
    out = Path(results_dir) / scale
    if not (out / f"{table}.csv").exists():
        return None
    results = _read_saved(out / f"{table}.csv", pd.read_csv, None, table)
    if results is None or "row" not in results.columns:
        raise ResultsError(f"{out / f'{table}.csv'} is damaged (no 'row' column); rerun `switchrepro run {table}` "
                           "to rewrite it from the runs")
    curves = _read_saved(out / f"{table}_curves.csv", pd.read_csv, pd.DataFrame(), table)
    loads = _read_saved(out / f"{table}_loads.json", lambda p: json.loads(p.read_text()), {}, table)
    return results, curves, loads, load_meta(results_dir, scale, table)


def load_meta(results_dir: Path, scale: str, table: str) -> dict:
    """The saved table's meta ({} when the table has not been saved); reads only the meta file."""
    return _read_saved(Path(results_dir) / scale / f"{table}_meta.json", lambda p: json.loads(p.read_text()), {},
                       table)


def has_results(results_dir: Path, scale: str, table: str) -> bool:
    """Whether `save` has written `table` at `scale` under `results_dir`."""
    return (Path(results_dir) / scale / f"{table}.csv").exists()
