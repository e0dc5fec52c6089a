"""The path a run's experts take (native kernels or XLA's dot), resolved once when it starts and recorded.

MoeConfig.expert_matmul='auto' takes the native kernels wherever they run (switchrepro.backends.experts): a
choice of the host, not of the configuration, so it is not part of the config hash. The trainer therefore
resolves it here, passes the resolved setting into the model, and records the path as the top-level
"expert_path" of <run dir>/config.json and in each process's host description (hosts.jsonl). A resume on a
host that would take another path stops (check_expert_path): different kernels round differently, so the
rest of the run would not be the run it continues. Automatic but recorded, never silent.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Tuple

from switchrepro.backends import experts as expert_backend
from switchrepro.config import ConfigError, ExperimentConfig, ModelConfig, to_dict
from switchrepro.moe import grouped

EXPERT_PATH_KEY = "expert_path"  # top-level key in <run dir>/config.json (not part of the config or its hash)


def resolve_expert_path(cfg: ExperimentConfig) -> Tuple[ExperimentConfig, Optional[str]]:
    """(cfg as this host runs it, the path its experts take here), or (cfg, None) for a dense model.

    The path is switchrepro.backends.experts.resolve_expert_path's ('native', 'xla', 'loop', 'batched'), or for
    dispatch 'dropless' the grouped matmul ('blocks', 'ragged_dot'). The returned config carries the resolved
    setting, so nothing inside the traced layers asks the host; the run's hash stays that of `cfg` (with
    'auto'), and the path is recorded beside it (record_expert_path)."""
    model, path = resolve_model_expert_path(cfg.model)
    return (cfg if path is None else dataclasses.replace(cfg, model=model)), path


def resolve_model_expert_path(model: ModelConfig) -> Tuple[ModelConfig, Optional[str]]:
    """resolve_expert_path for a ModelConfig alone (benchmarks build models without an ExperimentConfig)."""
    moe = model.moe
    if moe is None:
        return model, None
    if moe.dispatch == "dropless":
        path = grouped.resolve(moe.grouped_matmul)
        moe = dataclasses.replace(moe, grouped_matmul=path)
    else:
        path = expert_backend.resolve_expert_path(moe.expert_matmul, model.d_model, model.d_ff, model.dtype)
        moe = dataclasses.replace(moe, expert_matmul=expert_backend.expert_matmul_setting(path))
    return dataclasses.replace(model, moe=moe), path


def recorded_expert_path(run_dir: Path) -> Optional[str]:
    """The expert path that `run_dir` was trained on (its config.json's "expert_path"), None if none is recorded
    (a new run, a dense model, or a run from before paths were recorded)."""
    saved = Path(run_dir) / "config.json"
    if not saved.exists():
        return None
    try:
        return json.loads(saved.read_text()).get(EXPERT_PATH_KEY)
    except ValueError:  # the CLI reports a damaged config.json when it loads the run; nothing to compare here
        return None


def record_expert_path(run_dir: Path, cfg: ExperimentConfig, path: str) -> None:
    """Writes `path` as config.json's top-level "expert_path" (config.json holds `cfg`, the unresolved
    configuration, when the caller has not saved it yet)."""
    saved = Path(run_dir) / "config.json"
    d = json.loads(saved.read_text()) if saved.exists() else to_dict(cfg)
    if d.get(EXPERT_PATH_KEY) != path:
        d[EXPERT_PATH_KEY] = path
        saved.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def check_expert_path(run_dir: Path, recorded: Optional[str], path: Optional[str], allow_change: bool) -> None:
    """Raises ConfigError when a resumed run would continue on another expert path than it was trained on
    (different kernels round differently: the rest of the run would not be the run it continues), unless
    `allow_change`."""
    if recorded is None or path is None or recorded == path or allow_change:
        return
    raise ConfigError(f"{run_dir} was trained on the expert path '{recorded}' and this host would take '{path}'; "
                      f"pass --allow-expert-path-change to continue on {path}")
