"""Look inside a trained run: what each FFN branch adds to the residual stream, how confident each router
is, and how stable its choices are from one checkpoint to the next (`switchrepro inspect --run-dir DIR`).

These are the numbers behind the mini-scale calibration in results/mini-spm8k/REPORT.md: a Switch layer scales
its expert's output by the router probability (paper eq. 2), so a router that stays near 1/E, or that keeps
moving tokens between experts, shows up here before it shows up in the loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable

import jax.numpy as jnp
import numpy as np
import pandas as pd

from switchrepro.config import ExperimentConfig
from switchrepro.train import trainer
from switchrepro.train.checkpoint import Checkpointer
from switchrepro.train.expert_path import resolve_expert_path


def agreement(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Share of real tokens that have the same first-choice expert in `a` and `b`.

    Args:
      a, b: <int32>[batch, length] first-choice expert of each token (two checkpoints, same inputs).
      mask: <bool>[batch, length] real tokens.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return float("nan")
    return float(np.mean(np.asarray(a)[mask] == np.asarray(b)[mask]))


def _rms(x, mask: np.ndarray) -> float:
    x = np.asarray(x, np.float64)[np.asarray(mask, bool)]
    return float(np.sqrt(np.mean(x**2))) if x.size else float("nan")


def _real_tokens(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {"encoder": np.asarray(batch["encoder_input_tokens"]) > 0,
            "decoder": np.asarray(batch["decoder_loss_weights"]) > 0}


def layer_stats(model, params, batch: Dict[str, np.ndarray]) -> Dict[str, dict]:
    """Per layer: RMS of the FFN input (after its norm) and of the FFN branch; for sparse layers also the
    first-choice expert, gate and kept mask of every token (evaluation path: no noise, eval capacity)."""
    _, state = model.apply({"params": params}, {k: jnp.asarray(v) for k, v in batch.items()},
                           deterministic=True, mutable=["intermediates"],
                           capture_intermediates=lambda m, _: (m.name or "") in ("ffn", "pre_mlp_norm"))
    real = _real_tokens(batch)
    out = {}
    for layer, inter in state["intermediates"].items():
        if "ffn" not in inter:
            continue
        mask = real["encoder" if layer.startswith("encoder") else "decoder"]
        stats = {"mask": mask, "input_rms": _rms(inter["pre_mlp_norm"]["__call__"][0], mask),
                 "ffn_rms": _rms(inter["ffn"]["__call__"][0][0], mask)}
        if "moe" in inter["ffn"]:
            stats.update({k: np.asarray(v) for k, v in inter["ffn"]["moe"]["first_choice"][0].items()})
        out[layer] = stats
    return out


def inspect_run(cfg: ExperimentConfig, run_dir: Path, batch: Dict[str, np.ndarray],
                steps: Iterable[int] | None = None) -> pd.DataFrame:
    """One row per (checkpoint step, FFN layer) of the run in `run_dir`, all on the same `batch`.

    Columns: step, layer, sparse, input_rms, ffn_rms, ffn_to_input (their ratio), and for sparse layers
    gate (mean router probability of the chosen expert over kept tokens), uniform_gate (1/E), dropped
    (share of real tokens over capacity) and same_expert_as_previous (share of real tokens whose first
    choice is unchanged since the previous checkpoint listed; NaN for the first).
    """
    model, _, state, _ = trainer.initial_state(resolve_expert_path(cfg)[0])  # this host's expert path
    ckpt = Checkpointer(Path(run_dir, "checkpoints"), keep=cfg.train.keep_checkpoints)
    available = ckpt.steps()
    steps = available if steps is None else sorted(steps)
    missing = sorted(set(steps) - set(available))
    if not available or missing:
        raise ValueError(f"checkpoint steps {missing or 'any'} not in {run_dir}/checkpoints (has {available}); "
                         "pass steps that exist")
    experts = cfg.model.moe.num_experts if cfg.model.moe is not None else None
    rows, previous = [], None
    for step in steps:
        params = ckpt.restore(state, step).params  # CheckpointError: one line, the caller adds the path
        stats = layer_stats(model, params, batch)
        for layer, st in stats.items():
            row = {"step": step, "layer": layer, "sparse": "expert_index" in st, "input_rms": st["input_rms"],
                   "ffn_rms": st["ffn_rms"], "ffn_to_input": st["ffn_rms"] / st["input_rms"]}
            if row["sparse"]:
                kept = st["kept"] & st["mask"]
                row.update(gate=float(st["gate"][kept].mean()) if kept.any() else float("nan"),
                           uniform_gate=1.0 / experts, dropped=1.0 - kept.sum() / max(st["mask"].sum(), 1),
                           same_expert_as_previous=agreement(previous[layer]["expert_index"], st["expert_index"],
                                                             st["mask"]) if previous else float("nan"))
            rows.append(row)
        previous = stats
    ckpt.close()
    return pd.DataFrame(rows)
