"""Context pruning, measured: a finished decoder-only run's held-out rows scored token by token with a
key/value cache of each budget (model/pruning.py), as held-out loss per position.

Because the model is causal and the cache only ever holds earlier keys, the loss at positions < L with a
budget b is the loss of a context of length L with budget b: one pass over rows of the longest context gives
every shorter context too (the first L positions of each row). A budget >= the longest context is no pruning.

The result lives beside the run as `pruning.json`:

    {"step": final step, "examples": rows scored (of "requested_examples"), "length": positions per row,
     "tokens": [per position], "nll": {"<budget>": [summed nats per position]}, "seconds": wall time of the passes}

`quality(record, budget, context)` turns it into a negative log-perplexity.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, Sequence

import jax.numpy as jnp
import numpy as np

from switchrepro.config import ExperimentConfig
from switchrepro.data import cache as data_cache
from switchrepro.model.pruning import score_with_budget
from switchrepro.train.trainer import restore_params, token_cross_entropy

PRUNING_FILE = "pruning.json"
ROWS_PER_PASS = 64  # rows scored together (memory: rows x length x vocab float32 logits)


def passes(budgets: Sequence[int], length: int) -> list[int]:
    """The budgets worth a pass over rows of `length` positions: those below it, then `length` itself
    (no pruning: the reference every budget is compared with)."""
    return sorted({int(b) for b in budgets if b < length} | {int(length)})


def position_losses(model, params, batch: Dict[str, np.ndarray], budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(<float64>[length] summed nats, <float64>[length] scored tokens) per position over the rows of `batch`
    (`decoder_input_tokens`, `decoder_target_tokens`, `decoder_segment_ids`, `decoder_loss_weights`,
    each <int32>[rows, length]), each layer keeping at most `budget` keys."""
    nll = np.zeros(batch["decoder_input_tokens"].shape[1])
    tokens = np.zeros_like(nll)
    rows = batch["decoder_input_tokens"].shape[0]
    for start in range(0, rows, ROWS_PER_PASS):
        part = {k: jnp.asarray(v[start:start + ROWS_PER_PASS]) for k, v in batch.items()}
        logits = score_with_budget(model, params, part, budget)
        ce, _ = token_cross_entropy(logits, part["decoder_target_tokens"])
        weights = part["decoder_loss_weights"].astype(jnp.float32)
        nll += np.asarray(jnp.sum(ce * weights, axis=0), np.float64)
        tokens += np.asarray(jnp.sum(weights, axis=0), np.float64)
    return nll, tokens


def measure(cfg: ExperimentConfig, run_dir: Path, budgets: Sequence[int], contexts: Sequence[int], examples: int,
            echo: Callable[[str], None] = print) -> dict:
    """Scores the first `examples` held-out rows of the finished run in `run_dir` (its latest checkpoint)
    at every budget of `passes(budgets, max(contexts))`, writes `run_dir/pruning.json` and returns it.
    ValueError (one line, what to change) for a model or data that cannot be pruned this way."""
    if cfg.model.architecture != "decoder_only":
        raise ValueError("context pruning needs a decoder-only language model (ModelConfig.architecture = "
                         f"'decoder_only'), got {cfg.model.architecture!r}")
    length = int(max(contexts))
    if length > cfg.data.targets_length:
        raise ValueError(f"pruning context {length} is longer than the rows (DataConfig.targets_length = "
                         f"{cfg.data.targets_length}); use contexts up to {cfg.data.targets_length}")
    model, params, step = restore_params(cfg, run_dir, echo=echo)
    held_out = data_cache.cache_for_config(dataclasses.replace(cfg.data, eval_examples=examples), "validation")
    n = min(examples, held_out.num_examples)
    batch = {k: np.asarray(a[:n, :length], np.int32) for k, a in held_out.arrays.items() if k.startswith("decoder")}
    t0 = time.time()
    nll, tokens = {}, None
    for budget in passes(budgets, length):
        nll[str(budget)], tokens = position_losses(model, params, batch, budget)
    record = {"step": int(step), "examples": int(n), "requested_examples": int(examples), "length": length,
              "tokens": tokens.tolist(), "nll": {b: v.tolist() for b, v in nll.items()},
              "seconds": round(time.time() - t0, 1)}
    write(run_dir, record)
    return record


def write(run_dir: Path, record: dict) -> None:
    tmp = Path(run_dir) / f".{PRUNING_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, Path(run_dir) / PRUNING_FILE)


def up_to_date(record: dict, budgets: Sequence[int], contexts: Sequence[int], examples: int) -> bool:
    """Whether a saved record answers this request (same rows, and every pass it needs)."""
    length = int(max(contexts))
    return (record.get("length") == length and record.get("requested_examples") == examples
            and all(str(b) in record.get("nll", {}) for b in passes(budgets, length)))


def quality(record: dict, budget: int, context: int) -> float:
    """Held-out negative log-perplexity over the first `context` positions with `budget` keys per layer
    (a budget >= `context` is no pruning: the record's full-length pass)."""
    key = str(budget if budget < context else record["length"])
    if key not in record["nll"] or context > record["length"]:
        raise KeyError(f"the pruning record has no pass for budget {budget} at context {context}")
    nll = np.asarray(record["nll"][key][:context])
    tokens = np.asarray(record["tokens"][:context])
    return float(-nll.sum() / max(tokens.sum(), 1.0))
