"""Running the TensorFlow subprocesses (cache materialisation, T5 scoring) from a TF-free process.

The training process never imports TensorFlow: what needs it (seqio pipelines, T5's metrics) runs in a
child `python -m switchrepro.data.materialize` / `python -m switchrepro.data.downstream score`, CPU only,
and its failure comes back as one line (the child's last error line).

    env = subprocess_env()                  the child's environment (CPU only, this checkout importable)
    code, tail = run_teeing_stderr(cmd)     run it, showing its progress bar, keeping its stderr tail
    last_error_line(tail)                   the line to put in a DataError
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

# TensorFlow's C++ start-up log lines (absl format, e.g. "E0000 00:00:1796184848.365766 3796 cuda_platform.cc:52]
# failed call to cuInit"): on a machine without a GPU they read as failures to a new user, and they say nothing
# about the data. They are kept in the tail used for error messages, but not shown.
TF_LOG_NOISE = re.compile(rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]|WARNING: All log messages before "
                          rb"absl::InitializeLog\(\) is called)")


def subprocess_env() -> Dict[str, str]:
    """Environment of the TensorFlow subprocesses (materialisation, scoring)."""
    # CPU only: the data pipeline must not take accelerator memory from the training process.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    repo = str(Path(__file__).resolve().parents[2])  # works without an installed package too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    return env


def run_teeing_stderr(cmd) -> Tuple[int, str]:
    """Run cmd, passing its stderr (the progress bar) through; return (exit code, stderr tail)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=subprocess_env())
    tail, pending = b"", b""

    def show(piece: bytes) -> None:
        if TF_LOG_NOISE.match(piece):
            return
        try:
            sys.stderr.write(piece.decode("utf-8", errors="replace"))
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or replaced: keep draining the pipe
            pass

    while chunk := os.read(proc.stderr.fileno(), 65536):
        tail = (tail + chunk)[-65536:]
        *complete, pending = re.split(rb"(?<=[\r\n])", pending + chunk)  # whole lines (and \r progress updates)
        for piece in complete:
            show(piece)
    show(pending)
    proc.stderr.close()
    return proc.wait(), tail.decode("utf-8", errors="replace")


def last_error_line(text: str) -> str:
    """The last non-blank line of a child's output (a `\\r` progress update counts as a line)."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
    return lines[-1] if lines else "(no output)"
