"""The machine and thread layout a run trains on, recorded with every run.

XLA's CPU results depend on the thread count (it changes how reductions are split), so two runs are
comparable bit for bit only on the same CPU with the same layout. Each run records the layout in its
"start" metrics row, and every process that trains it (first start and each resume) appends one line to
`<run dir>/hosts.jsonl`.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, List

import jax

from switchrepro.backends.cpu import allocator, native


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> List[int]:
    """The CPU cores this process may run on (taskset / the container); [] where the OS cannot say."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the switchrepro source that trains ('abc1234', '+dirty' with uncommitted
    changes), or the package version outside a git checkout. Runs that differ only in code version can
    differ in float rounding (for example after a speed change), never in configuration."""
    root = Path(__file__).resolve().parents[2]
    try:
        git = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,
                                        timeout=10, check=True).stdout.strip()
        sha = git("rev-parse", "--short=10", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "switchrepro")
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return "switchrepro " + version("switchrepro")
        except PackageNotFoundError:
            return "unknown"


def describe() -> Dict[str, Any]:
    """CPU, usable cores, XLA threading flags and JAX devices of this process (the trainer adds the run's
    "expert_path")."""
    usable = len(usable_cores()) or os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,  # what taskset / the container allows this process
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc": allocator.policy(),
        "native_buffers": native.status(),
        "native_expert_matmul": native.gemm_status(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "code": code_version(),
    }


def layout(host: Dict[str, Any]) -> str:
    """One short label for comparing runs: 'AMD EPYC, 2 of 2 CPUs, XLA_FLAGS=...'."""
    flags = " ".join(f for f in str(host.get("xla_flags", "")).split()
                     if "thread" in f or "eigen" in f or "device_count" in f)
    return (f"{host.get('cpu', '?')}, {host.get('usable_cpus', '?')} of {host.get('logical_cpus', '?')} CPUs"
            + (f", {flags}" if flags else ""))
