"""What every benchmark shares: compiled forward+backward layer steps and training steps, medians, and paired
ratios with their distribution-free intervals."""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from switchrepro.config import ModelConfig, TrainConfig
from switchrepro.model.build import init_params
from switchrepro.model.t5 import count_params
from switchrepro.moe.layer import MoeFeedForward
from switchrepro.train import trainer
from switchrepro.train.expert_path import resolve_model_expert_path


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn`, after one call that compiles."""
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def layer_step(module, x: jax.Array, token_mask=None) -> Callable[[], object]:
    """A compiled forward+backward of `module` on x (gradients for the input and every parameter), as a
    zero-argument callable; the first call compiles."""
    rngs = {"params": jax.random.PRNGKey(0), "jitter": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}
    is_moe = isinstance(module, MoeFeedForward)
    args = (x, token_mask) if is_moe else (x,)
    params = module.init(rngs, *args, deterministic=False)["params"]

    def loss(p, x):
        out = module.apply({"params": p}, *((x, token_mask) if is_moe else (x,)), deterministic=False,
                           rngs={"jitter": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)})
        y = out[0] if is_moe else out
        aux = out[1].total_aux_loss if is_moe else 0.0
        return jnp.sum(y.astype(jnp.float32) ** 2) + aux

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda: step(params, x)


def layer_time(module, x: jax.Array, repeats: int, token_mask=None) -> float:
    return median_time(layer_step(module, x, token_mask), repeats)


def paired_times(first: Callable[[], object], second: Callable[[], object],
                 pairs: int) -> Tuple[List[float], List[float]]:
    """Seconds per call of each, for `pairs` back-to-back pairs of calls (`first` goes first in even pairs,
    `second` in odd ones): pairing cancels what drifts on a shared machine between the two."""
    fns, times = (first, second), ([], [])
    for i in range(pairs):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            jax.block_until_ready(fns[j]())
            times[j].append(time.perf_counter() - start)
    return times


def paired_ratios(numerator: Callable[[], object], denominator: Callable[[], object], pairs: int) -> List[float]:
    """numerator time / denominator time per pair of paired_times, after one warm-up call of each."""
    for fn in (numerator, denominator):
        jax.block_until_ready(fn())
    return [a / b for a, b in zip(*paired_times(numerator, denominator, pairs), strict=True)]


def median_interval(values: List[float], z: float = 1.96) -> tuple[float, float, float]:
    """(median, low, high): the median of `values` and its distribution-free ~95% confidence interval, the
    order statistics at ranks n/2 -+ z sqrt(n)/2 (binomial, normal approximation; exact enough from ~20)."""
    v = sorted(values)
    n = len(v)
    half = z * n ** 0.5 / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half))
    return statistics.median(v), v[lo], v[hi]


def upper_goal_verdict(low: float, high: float, goal: float) -> str:
    """For a ratio that must be at most `goal`: 'meets' when the whole interval is, 'misses' when none of it
    is, else 'is on the line of'."""
    if high <= goal:
        return "meets"
    if low > goal:
        return "misses"
    return "is on the line of"


class Stepper:
    """One model's compiled training step on a fixed synthetic batch of the real shapes, on the expert path a
    run of `cfg` would take on this host (resolve_model_expert_path)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, inputs_length: int, targets_length: int):
        cfg = resolve_model_expert_path(cfg)[0]
        tc = TrainConfig(steps=1000)
        model, params = init_params(cfg, jax.random.PRNGKey(0), inputs_length=inputs_length,
                                    targets_length=targets_length)
        self.params = count_params(params)
        opt = trainer.make_optimizer(tc)
        self.state = trainer.TrainState(step=jnp.int32(0), params=params, opt_state=opt.init(params))
        self.step_fn = trainer.make_train_step(model, opt, tc)
        rng = np.random.default_rng(0)
        tok = lambda n: jnp.asarray(rng.integers(3, cfg.vocab_size - 100, (batch_size, n)), jnp.int32)
        ones = lambda n: jnp.ones((batch_size, n), jnp.int32)
        targets = tok(targets_length)
        self.batch = {"encoder_input_tokens": tok(inputs_length), "encoder_segment_ids": ones(inputs_length),
                      "decoder_target_tokens": targets,
                      "decoder_input_tokens": jnp.pad(targets[:, :-1], ((0, 0), (1, 0))),
                      "decoder_segment_ids": ones(targets_length), "decoder_loss_weights": ones(targets_length)}
        self.key = jax.random.PRNGKey(0)
        self.step()  # compile

    def step(self) -> float:
        t = time.perf_counter()
        self.state, m = self.step_fn(self.state, self.batch, self.key)
        jax.block_until_ready(m)
        return time.perf_counter() - t

    def seconds_per_step(self, steps: int) -> float:
        """Median of `steps` timed steps."""
        return statistics.median(self.step() for _ in range(steps))


def whole_model_rate(cfg: ModelConfig, batch_size: int, inputs_length: int, targets_length: int,
                     steps: int) -> tuple[float, int]:
    """Training examples/sec of `cfg` (median over `steps` timed steps after compilation)."""
    stepper = Stepper(cfg, batch_size, inputs_length, targets_length)
    return batch_size / stepper.seconds_per_step(steps), stepper.params
