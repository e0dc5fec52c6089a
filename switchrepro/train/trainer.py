"""Training and evaluation: optax Adafactor, jitted steps, JSONL metrics, orbax checkpoints.

Determinism: the batch at step s is a pure function of (seed, s) (see
`switchrepro.data.cache.train_batch`) and so is the step's PRNG key
(`fold_in(seed_key, s)`), so a run resumed from a checkpoint replays exactly the
steps an uninterrupted run would have taken.

This module never imports TensorFlow: it reads the numpy cache that
`switchrepro.data.cache.ensure_cache` materialised in a separate process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from switchrepro.config import ConfigError, DistillConfig, ExperimentConfig, ModelConfig, TrainConfig
from switchrepro.data import cache as data_cache
from switchrepro.model.build import build_model, init_params, logical_axes
from switchrepro.model.t5 import Transformer, count_params
from switchrepro.moe import parallel
from switchrepro.moe.routing import expert_capacity, num_groups
from switchrepro.train import adafactor, checkpoint
from switchrepro.train import distill as distill_lib
from switchrepro.train.expert_path import (
    EXPERT_PATH_KEY,
    check_expert_path,
    record_expert_path,
    recorded_expert_path,
    resolve_expert_path,
)
from switchrepro.train.finetune import check_same_shapes, peak_score
from switchrepro.train.host import describe as describe_host
from switchrepro.train.metrics_log import MetricsLog

# --------------------------------------------------------------------------------------------- optimiser


def learning_rate_schedule(cfg: TrainConfig) -> Callable[[Any], Any]:
    """T5's inverse-square-root schedule: lr / sqrt(max(step, warmup)), optionally ramped linearly,
    optionally cooled down linearly to 0 over the last `cooldown_steps` updates (the update with
    0-based count c is scaled by min(1, (steps - c) / cooldown_steps), so the last one is not zero)."""

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        lr = cfg.learning_rate / jnp.sqrt(jnp.maximum(step, cfg.warmup_steps))
        if cfg.linear_warmup:
            lr = lr * jnp.minimum(1.0, step / cfg.warmup_steps)
        if cfg.cooldown_steps:
            lr = lr * jnp.minimum(1.0, (cfg.steps + 1.0 - step) / cfg.cooldown_steps)
        return lr

    return schedule


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Adafactor with T5's defaults (factored second moments, decay 0.8, update clipping 1.0,
    updates relative to parameter scale, no momentum): `optax.adafactor`'s arithmetic and state, fused
    per parameter (train/adafactor.py)."""
    return adafactor.adafactor(learning_rate=learning_rate_schedule(cfg), min_dim_size_to_factor=128,
                               decay_rate=0.8, clipping_threshold=1.0, eps=1e-30)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


# --------------------------------------------------------------------------------------------- losses


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float):
    """Token cross-entropy in nats plus T5X's output-logit z-loss.

    Args:
      logits: <float32>[batch, length, vocab].
      targets: <int32>[batch, length].
      weights: <float32>[batch, length], 0 on padding.
    Returns: (sum of weighted CE, sum of weighted z-loss, sum of weights) as float32 scalars.
    """
    ce, log_z = token_cross_entropy(logits, targets)
    return jnp.sum(ce * weights), jnp.sum(z_loss * log_z**2 * weights), jnp.sum(weights)


def token_cross_entropy(logits: jax.Array, targets: jax.Array):
    """(<float32>[batch, length] cross-entropy of each target token in nats, the logits' log-partition)."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0], log_z


def moe_summary(moe_metrics: Dict[str, Any]) -> Dict[str, jax.Array]:
    """Sums the auxiliary losses over sparse layers (mesh-tensorflow convention) and averages diagnostics."""
    if not moe_metrics:
        return {"aux_loss": jnp.float32(0.0)}
    ms = list(moe_metrics.values())
    mean = lambda f: jnp.mean(jnp.stack([f(m) for m in ms]))
    return {
        "aux_loss": sum(m.total_aux_loss for m in ms),
        "load_balance_loss": mean(lambda m: m.load_balance_loss),
        "router_z_loss": mean(lambda m: m.z_loss),
        "fraction_dropped": mean(lambda m: m.fraction_dropped),
        "router_entropy": mean(lambda m: m.router_entropy),
        "router_confidence": mean(lambda m: m.router_confidence),
    }


def per_layer(moe_metrics: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Per-layer router metrics as plain Python data (for the JSONL log and load heatmaps)."""
    out = {}
    for name, m in sorted(moe_metrics.items()):
        out[name] = {
            "fraction_dropped": float(m.fraction_dropped),
            "tokens_per_expert": [round(float(v), 6) for v in np.asarray(m.tokens_per_expert)],
            "router_entropy": float(m.router_entropy),
            "router_confidence": float(m.router_confidence),
            "load_balance_loss": float(m.load_balance_loss),
            "z_loss": float(m.z_loss),
            "expert_capacity": int(m.expert_capacity),
        }
    return out


# --------------------------------------------------------------------------------------------- steps


def make_train_step(model: Transformer, optimizer: optax.GradientTransformation, cfg: TrainConfig,
                    placement: Optional["Placement"] = None, *, teacher_model: Optional[Transformer] = None,
                    distill: Optional[DistillConfig] = None):
    """The jitted step (state, batch, base_rng) -> (state, metrics); with `placement`, its inputs and
    outputs keep the mesh shardings (state like the params, batch over every device).

    With `distill` (and the teacher's `teacher_model`), the step is (state, batch, base_rng, teacher_params)
    and the loss is `distill.distillation_loss` against the teacher's eval-mode logits instead of the plain
    cross-entropy; the z-loss and router losses are unchanged. At teacher_weight 0 it is the plain step.
    """
    if distill is not None and teacher_model is None:
        raise ValueError("a distillation step needs the teacher's model (teacher_model)")

    def loss_fn(params, batch, rng, teacher_params=None):
        dropout_rng, jitter_rng = jax.random.split(rng)
        logits, moe = model.apply({"params": params}, batch, deterministic=False,
                                  rngs={"dropout": dropout_rng, "jitter": jitter_rng})
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        targets = batch["decoder_target_tokens"]
        ce_sum, z_sum, n = cross_entropy(logits, targets, weights, cfg.logits_z_loss)
        n = jnp.maximum(n, 1.0)
        summary = moe_summary(moe)
        extra = {}
        if distill is None:
            objective = ce_sum
        else:
            teacher_logits, _ = teacher_model.apply({"params": teacher_params}, batch, deterministic=True)
            objective, _, _ = distill_lib.distillation_loss(logits, teacher_logits, targets, weights,
                                                            distill.teacher_weight, distill.temperature)
            extra = {"distillation_loss": objective / n}
        loss = (objective + z_sum) / n + summary["aux_loss"]
        return loss, {"loss": loss, "cross_entropy": ce_sum / n, **extra, **summary}

    def train_step(state: TrainState, batch, base_rng, teacher_params=None):
        rng = jax.random.fold_in(base_rng, state.step)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, rng, teacher_params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["learning_rate"] = learning_rate_schedule(cfg)(state.step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    if placement is None:
        return jax.jit(train_step, donate_argnums=(0,))
    if distill is not None:
        raise ValueError("distillation trains on one device; drop the mesh (--mesh) for a distillation run")
    return jax.jit(train_step, donate_argnums=(0,),
                   in_shardings=(placement.state, placement.batch, placement.replicated),
                   out_shardings=(placement.state, placement.replicated))


def make_eval_step(model: Transformer, placement: Optional["Placement"] = None):
    """eval_step(params, batch) -> (<float32>[batch] CE sum per row, <float32>[batch] target tokens per row,
    MoE metrics). Per row, so that a multilingual evaluation can sum each language's rows."""
    def eval_step(params, batch):
        logits, moe = model.apply({"params": params}, batch, deterministic=True)
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        ce, _ = token_cross_entropy(logits, batch["decoder_target_tokens"])
        return jnp.sum(ce * weights, axis=-1), jnp.sum(weights, axis=-1), moe

    if placement is None:
        return jax.jit(eval_step)
    return jax.jit(eval_step, in_shardings=(placement.state.params, placement.batch),
                   out_shardings=placement.replicated)


def evaluate(eval_step, params, batches: Iterable[Tuple[Dict[str, np.ndarray], int]],
             place_batch: Callable[[Dict[str, np.ndarray]], Any] = lambda b: b,
             languages: Optional[np.ndarray] = None, language_names: Sequence[str] = ()) -> Dict[str, Any]:
    """Held-out negative log-perplexity (nats per target token; the paper's quality measure).

    `batches` yields (batch, real rows) as `switchrepro.data.cache.eval_batches` does; padding rows
    have loss weight 0, so they add nothing. With `languages` (<int>[rows], each row's language id in the
    order the batches hold them: a multilingual cache's `languages`), the result also holds
    "eval_languages": {name: NLP over that language's rows} for every language with a target token.
    """
    ce_rows, n_rows, layer_rows = [], [], []
    for batch, real in batches:
        ce, n, moe = eval_step(params, place_batch(batch))
        ce_rows.append(np.asarray(ce, np.float64)[:real])
        n_rows.append(np.asarray(n, np.float64)[:real])
        layer_rows.append(per_layer(moe))
    ce_all = np.concatenate(ce_rows) if ce_rows else np.zeros(0)
    n_all = np.concatenate(n_rows) if n_rows else np.zeros(0)
    total, count = float(ce_all.sum()), float(n_all.sum())
    out = {"eval_neg_log_perplexity": -total / max(count, 1.0), "eval_target_tokens": int(count)}
    if languages is not None:
        ids = np.asarray(languages)[:len(ce_all)]
        ce_by = np.bincount(ids, weights=ce_all, minlength=len(language_names))
        n_by = np.bincount(ids, weights=n_all, minlength=len(language_names))
        out["eval_languages"] = {name: round(float(-ce_by[i] / n_by[i]), 6)
                                 for i, name in enumerate(language_names) if n_by[i] > 0}
    if layer_rows and layer_rows[0]:
        # Average the per-layer diagnostics over eval batches.
        merged = {}
        for name in layer_rows[0]:
            rows = [r[name] for r in layer_rows]
            merged[name] = {k: (np.mean([r[k] for r in rows], axis=0).round(6).tolist()
                                if k != "expert_capacity" else rows[0][k]) for k in rows[0]}
        out["eval_moe_layers"] = merged
        out["eval_fraction_dropped"] = float(np.mean([v["fraction_dropped"] for v in merged.values()]))
    return out


# --------------------------------------------------------------------------------------------- loop


@dataclasses.dataclass
class RunResult:
    metrics_path: Path
    final: Dict[str, Any]
    diverged_at: Optional[int]


def _to_float(tree) -> Dict[str, float]:
    return {k: float(v) for k, v in tree.items()}


def flops_per_token(cfg: ModelConfig, inputs_length: int, targets_length: int) -> Dict[str, float]:
    """Forward matmul FLOPs per target token (Kaplan et al. style: 2 x multiply-adds), for the
    encoder and decoder together, counting each token's routed experts and ignoring softmax/norms."""
    c = cfg
    ffn_mult = 3 if c.activation == "geglu" else 2
    inner = c.num_heads * c.d_kv
    k = c.moe.experts_per_token if c.moe else 1

    def ffn(sparse):
        one = 2 * ffn_mult * c.d_model * c.d_ff
        return one * k + 2 * c.d_model * c.moe.num_experts if sparse else one

    enc_sparse, dec_sparse = set(c.sparse_layers("encoder")), set(c.sparse_layers("decoder"))
    proj = 2 * c.d_model * inner  # one [d_model, heads*d_kv] projection
    enc = sum(4 * proj + 4 * inputs_length * inner + ffn(i in enc_sparse) for i in range(c.num_encoder_layers))
    dec = sum(4 * proj + 4 * targets_length * inner  # self-attention
              + 2 * proj + 4 * inputs_length * inner  # cross-attention: query and output projections, scores
              + ffn(i in dec_sparse) for i in range(c.num_decoder_layers))
    cross_kv = c.num_decoder_layers * 2 * proj  # keys and values of every encoder token, once per decoder layer
    logits = 2 * c.d_model * c.vocab_size
    if c.architecture == "decoder_only":  # no encoder, no cross-attention: inputs_length is not used
        lm = sum(4 * proj + 4 * targets_length * inner + ffn(i in dec_sparse) for i in range(c.num_decoder_layers))
        per_example = (lm + logits) * targets_length
        return {"flops_per_example": float(per_example), "flops_per_target_token": per_example / targets_length}
    per_example = (enc + cross_kv) * inputs_length + (dec + logits) * targets_length
    return {"flops_per_example": float(per_example), "flops_per_target_token": per_example / targets_length}


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a sharded run keeps things: `state` (a TrainState of NamedShardings), `batch` (one sharding for
    every batch array) and `replicated` (scalars, keys, metrics)."""

    mesh: Any
    state: Any
    batch: Any
    replicated: Any

    def place_batch(self, batch: Dict[str, np.ndarray]) -> Dict[str, jax.Array]:
        return parallel.shard_batch(self.mesh, batch)


def initial_state(cfg: ExperimentConfig, mesh=None):
    """(model, optimizer, step-0 TrainState, PRNG key for the training steps), all derived from the seed.

    Training and `switchrepro eval` both build this before restoring a checkpoint into it. With a
    ('data', 'expert') `mesh`, the model is expert-parallel and the state is placed on the mesh (see
    `placement`); the initial values do not depend on the mesh.
    """
    return _initial_state_and_placement(cfg, mesh)[:4]


def _initial_state_and_placement(cfg: ExperimentConfig, mesh):
    """`initial_state` plus the mesh `Placement` it used (None without a mesh), so `train` builds it once."""
    init_key, step_key = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
    model, params = init_params(cfg.model, init_key, inputs_length=cfg.data.inputs_length,
                                targets_length=cfg.data.targets_length)
    optimizer = make_optimizer(cfg.train)
    if mesh is None:
        state = TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params))
        return model, optimizer, state, step_key, None
    place = placement(cfg, mesh, params, optimizer)
    params = jax.device_put(params, place.state.params)
    opt_state = jax.jit(optimizer.init, out_shardings=place.state.opt_state)(params)
    state = TrainState(step=jax.device_put(jnp.int32(0), place.replicated), params=params, opt_state=opt_state)
    return build_model(cfg.model, mesh=mesh), optimizer, state, step_key, place


def placement(cfg: ExperimentConfig, mesh, params, optimizer) -> Placement:
    """Shardings for a run on `mesh`: expert kernels over 'expert', optimizer state like its parameter,
    batches over every device. Raises ValueError when experts or batch do not divide over the mesh."""
    parallel.check_fits(mesh, cfg.model.moe and cfg.model.moe.num_experts, cfg.data.batch_size)
    param_sh = parallel.tree_shardings(mesh, logical_axes(cfg.model))
    opt_abstract = jax.eval_shape(optimizer.init, params)
    opt_sh = parallel.opt_state_shardings(mesh, opt_abstract, params, param_sh)
    replicated = NamedSharding(mesh, PartitionSpec())
    return Placement(mesh, TrainState(step=replicated, params=param_sh, opt_state=opt_sh),
                     NamedSharding(mesh, parallel.BATCH), replicated)


def train(cfg: ExperimentConfig, run_dir: Path, *, train_cache, eval_cache, progress: Optional[bool] = None,
          stop_after: Optional[int] = None, echo: Callable[[str], None] = print, mesh=None,
          teacher: Optional[Tuple[Transformer, Any]] = None, pretrained: Any = None,
          downstream_eval: Optional[Callable[[Any, int], Dict[str, Any]]] = None,
          allow_expert_path_change: bool = False) -> RunResult:
    """Trains `cfg` in `run_dir`, resuming from the latest checkpoint there.

    The experts' path (native kernels or XLA's dot, resolve_expert_path) is resolved once, here, and recorded
    in run_dir/config.json and the host description; a resume on a host that would take another path raises
    ConfigError, unless `allow_expert_path_change`.

    Args:
      train_cache, eval_cache: `switchrepro.data.cache.Cache` objects.
      teacher: (model, params) of the teacher when `cfg.distill` is set (see `restore_params`). A fresh
        run with `distill.init_from_teacher` starts from the teacher's non-expert weights; a resumed run
        continues from its own checkpoint.
      pretrained: parameters of the pre-trained model when `cfg.finetune` is set (see `restore_params`): a
        fresh run starts from them, with a fresh optimizer; a resumed run continues from its own checkpoint.
      downstream_eval: called as downstream_eval(params, step) at every evaluation; its dict joins the
        evaluation row (fine-tuning: decoded validation examples scored by T5's metrics).
      stop_after: stop right after this step without a final checkpoint, as if the process were killed
        there (tests kill-and-resume; the next run resumes from the last periodic checkpoint).
      mesh: a ('data', 'expert') jax Mesh (switchrepro.moe.parallel.make_mesh) for data and expert
        parallelism, or None for one device. Metrics equal the one-device run's up to float32 rounding
        when every device routes the same groups (see MoeFeedForward).
    """
    cfg.validate()
    tc, dc = cfg.train, cfg.data
    if (cfg.distill is None) != (teacher is None):
        raise ValueError("pass the teacher (model, params) exactly when the config has a DistillConfig")
    if (cfg.finetune is None) != (pretrained is None):
        raise ValueError("pass the pre-trained params exactly when the config has a FinetuneConfig")
    run_dir.mkdir(parents=True, exist_ok=True)
    as_configured = cfg
    cfg, expert_path = resolve_expert_path(cfg)
    model, optimizer, state, step_key, place = _initial_state_and_placement(cfg, mesh)
    params = state.params
    ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", keep=tc.keep_checkpoints)
    state = ckpt.restore_latest(state, echo=echo, set_aside=True)
    start = int(state.step)
    if 0 < start < tc.steps:
        try:
            check_expert_path(run_dir, recorded_expert_path(run_dir), expert_path, allow_expert_path_change)
        except ConfigError:
            ckpt.close()
            raise
    transfer = None
    if start == 0 and pretrained is not None:
        check_same_shapes(pretrained, state.params)
        params = jax.tree_util.tree_map(jnp.copy, pretrained)  # the step donates the state, never the caller's arrays
        state = TrainState(step=state.step, params=params, opt_state=optimizer.init(params))
        echo(f"fine-tuning from the pre-trained run {cfg.finetune.pretrained}")
    if start == 0 and cfg.distill is not None and cfg.distill.init_from_teacher:
        params, transfer = distill_lib.transfer_non_expert(teacher[1], state.params)
        params = jax.tree_util.tree_map(jnp.copy, params)  # the step donates the state, never the teacher's arrays
        state = TrainState(step=state.step, params=params, opt_state=optimizer.init(params))
        echo(f"student initialised from the teacher: {len(transfer.copied)} tensors copied, "
             f"{len(transfer.expert_or_router)} expert/router tensors and {len(transfer.shape_mismatch)} of "
             f"another shape left at their initialisation")
    log = MetricsLog(run_dir / "metrics.jsonl", start)
    if log.dropped_torn_line:
        echo(f"{log.path} ended in a half-written line (a crash while logging): dropped, its step is replayed")
    n_params = count_params(params)
    flops = flops_per_token(cfg.model, dc.inputs_length, dc.targets_length)
    epochs = data_cache.epochs_for(tc.steps, dc.batch_size, train_cache.num_examples)
    echo(f"params {n_params:,} | {flops['flops_per_example'] / 1e6:.1f} MFLOPs/example | "
         f"{train_cache.num_examples:,} train examples, {tc.steps} steps x {dc.batch_size} = {epochs:.3f} epochs"
         + (f" | resuming at step {start}" if start else ""))
    if cfg.model.moe is not None:
        echo("expert capacity per layer: " + capacity_summary(cfg, dc, 1 if mesh is None else mesh.size))
    host = describe_host()
    if expert_path is not None:
        host[EXPERT_PATH_KEY] = expert_path
    if start < tc.steps and expert_path is not None:
        record_expert_path(run_dir, as_configured, expert_path)
        echo(f"expert path: {expert_path}")
    if start < tc.steps:  # every process that trains this run, resumes included
        with (run_dir / "hosts.jsonl").open("a") as f:
            f.write(json.dumps({"resumed_at_step": start, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **host}) + "\n")
    if start == 0:
        log.write({"step": 0, "event": "start", "params": n_params, "epochs": epochs, **flops,
                   "train_examples": train_cache.num_examples, "host": host,
                   **({"init_from_teacher": {
                       "copied": len(transfer.copied),
                       "not_copied": len(transfer.expert_or_router) + len(transfer.shape_mismatch)}}
                      if transfer is not None else {}),
                   **({"finetuned_from": cfg.finetune.pretrained} if cfg.finetune is not None else {})})

    if cfg.distill is None:
        train_step = make_train_step(model, optimizer, tc, place)
    else:
        distill_step = make_train_step(model, optimizer, tc, place, teacher_model=teacher[0], distill=cfg.distill)
        train_step = lambda state, batch, key: distill_step(state, batch, key, teacher[1])
    eval_step = make_eval_step(model, place)
    eval_batches = lambda: data_cache.eval_batches(eval_cache, dc.batch_size, dc.eval_examples)
    languages = getattr(eval_cache, "languages", None)  # multilingual: NLP per language too
    place_batch = (lambda b: b) if place is None else place.place_batch
    if place is not None:
        echo(memory_summary(train_step, state, place_batch(data_cache.train_batch(train_cache, 0, dc.batch_size,
                                                                                  tc.seed)), step_key, mesh))
    last_step = tc.steps if stop_after is None else min(tc.steps, stop_after)
    show = tc.progress if progress is None else progress
    bar = _progress(start, tc.steps, show)
    diverged_at, final = None, {}
    timer = _Throughput(dc.batch_size, dc.targets_length + dc.inputs_length)
    wall0 = time.time()
    step = start
    for step in range(start + 1, last_step + 1):
        batch = data_cache.train_batch(train_cache, step - 1, dc.batch_size, tc.seed)
        state, metrics = train_step(state, place_batch(batch), step_key)
        do_log = step % tc.log_every == 0 or step == tc.steps
        do_eval = step % tc.eval_every == 0 or step == tc.steps
        if do_log or do_eval:
            m = _to_float(jax.device_get(metrics))
            timer.mark(step)
            row = {"step": step, **{k: round(v, 6) for k, v in m.items()}, **timer.rates(),
                   "wall_seconds": round(time.time() - wall0, 3),
                   "epoch": step * dc.batch_size / train_cache.num_examples}
            if not math.isfinite(m["loss"]):
                diverged_at = step
                row["diverged"] = True
            if do_eval and diverged_at is None:
                row.update(evaluate(eval_step, state.params, eval_batches(), place_batch, languages=languages,
                                    language_names=eval_cache.meta.get("languages", ())))
                if downstream_eval is not None:
                    row.update(downstream_eval(state.params, step))
            log.write(row)
            final = row
            bar.set_postfix(loss=f"{m['loss']:.3f}", **({"eval": f"{row['eval_neg_log_perplexity']:.3f}"}
                                                        if "eval_neg_log_perplexity" in row else {}))
            if diverged_at is not None:
                echo(f"diverged at step {step} (loss {m['loss']})")
                break
        elif step == start + 1:
            jax.block_until_ready(state.step)
            timer.mark(step)  # the first step compiles; rates exclude it
        if step % tc.checkpoint_every == 0 and step != tc.steps:
            ckpt.save(step, state)
        bar.update(1)
    bar.close()
    if diverged_at is None and stop_after is None and int(state.step) > start:
        ckpt.save(int(state.step), state)
    ckpt.close()
    rows = log.rows()
    if start >= tc.steps:  # already complete: report the logged final evaluation
        final = _last_eval_row(rows)
    if diverged_at is not None:
        log.write({"step": diverged_at, "event": "diverged"})
    elif int(state.step) == tc.steps and not any(r.get("event") == "done" for r in rows):
        # (also when a crash tore the "done" line itself: the resumed run starts at the last step)
        peak = {}
        if cfg.finetune is not None:  # the paper reports a fine-tuning run's best validation score
            best = peak_score(rows)
            peak = {"peak_eval_score": best["value"], "peak_step": best["step"]} if best else {}
        log.write({"step": tc.steps, "event": "done", **{k: v for k, v in final.items() if k.startswith("eval_")
                                                          and k not in ("eval_moe_layers", "eval_languages")}, **peak})
    return RunResult(run_dir / "metrics.jsonl", final, diverged_at)


def restore_params(cfg: ExperimentConfig, run_dir: Path, echo: Callable[[str], None] = print):
    """(model, params, step) of the latest checkpoint in `run_dir`, trained with `cfg` (a teacher, or a
    pre-trained model to fine-tune). Raises FileNotFoundError when the run has no checkpoint."""
    model, _, state, _ = initial_state(resolve_expert_path(cfg)[0])
    ckpt = checkpoint.Checkpointer(Path(run_dir) / "checkpoints", keep=cfg.train.keep_checkpoints)
    try:
        if ckpt.manager.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {Path(run_dir) / 'checkpoints'}: train that run first")
        state = ckpt.restore_latest(state, echo=echo)
    finally:
        ckpt.close()
    return model, state.params, int(state.step)


def load_params(cfg: ExperimentConfig, run_dir: Optional[Path] = None, exported: Optional[Path] = None,
                echo: Callable[[str], None] = print):
    """(model, params, step) of a finished run: from its exported parameters (`exported`, see
    checkpoint.export_params) if given, else from the latest checkpoint in `run_dir` (`restore_params`)."""
    if exported is None:
        return restore_params(cfg, run_dir, echo=echo)
    shapes = jax.eval_shape(lambda: init_params(cfg.model, jax.random.PRNGKey(0), inputs_length=cfg.data.inputs_length,
                                                targets_length=cfg.data.targets_length)[1])  # shapes only, no init
    params, step = checkpoint.load_exported_params(exported, shapes)
    return build_model(resolve_expert_path(cfg)[0].model), params, step


def _last_eval_row(rows) -> Dict[str, Any]:
    evals = [r for r in rows if "eval_neg_log_perplexity" in r and "event" not in r]
    return evals[-1] if evals else {}


def memory_summary(train_step, state, batch, step_key, mesh) -> str:
    """Per-device bytes of parameters, optimizer state and the step's temporaries (XLA's estimate)."""
    mib = lambda b: f"{b / 2**20:.1f} MiB"
    params, opt = parallel.per_device_bytes(state.params), parallel.per_device_bytes(state.opt_state)
    try:
        mem = train_step.lower(state, batch, step_key).compile().memory_analysis()
        temp = mib(mem.temp_size_in_bytes) if mem is not None else "n/a"
    except Exception:  # not every backend reports memory
        temp = "n/a"
    return (f"mesh {parallel.describe(mesh)} ({mesh.size} devices, {jax.process_count()} process(es)); "
            f"per device: params {mib(params)}, optimizer state {mib(opt)}, step activations/temporaries {temp}")


def capacity_summary(cfg: ExperimentConfig, dc, devices: int = 1) -> str:
    m = cfg.model.moe
    parts = []
    for stack, length in (("encoder", dc.inputs_length), ("decoder", dc.targets_length)):
        tokens = dc.batch_size * length
        g = num_groups(tokens, m.group_size, multiple_of=devices)
        s = tokens // g
        train_c, eval_c = (expert_capacity(s, m.num_experts, cf, m.min_capacity, m.capacity_rounding)
                           for cf in (m.capacity_factor_train, m.capacity_factor_eval))
        parts.append(f"{stack} {g} group(s) x {s} tokens -> C={train_c} train, {eval_c} eval")
    return "; ".join(parts)


class _Throughput:
    """examples/sec and tokens/sec since the first (compiling) step."""

    def __init__(self, batch_size: int, tokens_per_example: int):
        self.batch_size, self.tokens = batch_size, tokens_per_example
        self.t0 = self.s0 = None
        self.t1 = self.s1 = None

    def mark(self, step: int) -> None:
        now = time.perf_counter()
        if self.t0 is None:
            self.t0, self.s0 = now, step
        self.t1, self.s1 = now, step

    def rates(self) -> Dict[str, float]:
        if self.t0 is None or self.s1 == self.s0:
            return {}
        secs = self.t1 - self.t0
        ex = (self.s1 - self.s0) * self.batch_size / secs
        return {"examples_per_sec": round(ex, 3), "tokens_per_sec": round(ex * self.tokens, 1)}


def _progress(start: int, total: int, show: bool):
    return tqdm(total=total, initial=start, disable=not show, unit="step", dynamic_ncols=True, leave=False)
