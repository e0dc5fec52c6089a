"""`switchrepro bench attention`: the cost of selective attention, as paired training steps of the tiny
decoder-only LM with standard and with selective attention."""

from __future__ import annotations

import statistics
from typing import Callable, List

import jax

from switchrepro.bench.timing import Stepper, median_interval, paired_times
from switchrepro.config import ModelConfig

__all__ = ["SELECTIVE_GOAL", "attention_verdict", "median_interval", "run_attention_bench"]

SELECTIVE_GOAL = 1.10  # selective attention may add less than 10% to a training step of the tiny decoder


def attention_verdict(low: float, high: float, goal: float = SELECTIVE_GOAL) -> str:
    """Met when the whole interval is under the goal, not met when it is all at or over it."""
    if high < goal:
        return "met"
    if low >= goal:
        return "NOT met"
    return "on the line (interval spans the goal)"


def run_attention_bench(lengths: List[int], batch_size: int = 32, pairs: int = 150, warmup: int = 5,
                        echo: Callable[[str], None] = print) -> str:
    """Training-step time of the tiny decoder-only LM (d_model 128, 2 layers, 4 heads of 32, byte vocabulary)
    with standard and with selective attention, at each context length, as paired steps: `pairs` times one
    step of each model back to back (which goes first alternates), and the ratio is the median over pairs of
    selective / standard, with its ~95% interval. Pairing cancels what drifts on a shared machine (other
    tenants, frequency): on the 2-core VM, medians of alternating 30-step rounds moved by up to 0.18 between
    sittings at context 128, the paired median by under 0.02. Returns a markdown table."""
    lines = [f"### Tiny decoder-only LM training step, batch {batch_size}, selective vs standard attention "
             f"({jax.default_backend()}, {pairs} paired steps after {warmup} warm-up steps)", "",
             "| context | standard ms/step | selective ms/step | ratio (median of pairs) | ~95% interval | goal |",
             "|---|---|---|---|---|---|"]
    for length in lengths:
        steppers = {att: Stepper(ModelConfig(vocab_size=384, d_model=128, d_ff=512, num_heads=4, d_kv=32,
                                              num_decoder_layers=2, attention=att, architecture="decoder_only"),
                                  batch_size, 8, length) for att in ("standard", "selective")}
        for stepper in steppers.values():
            for _ in range(warmup):
                stepper.step()
        t_std, t_sel = paired_times(steppers["standard"].step, steppers["selective"].step, pairs)
        ratio, low, high = median_interval([s / t for s, t in zip(t_sel, t_std, strict=True)])
        std, sel = statistics.median(t_std), statistics.median(t_sel)
        line = (f"| {length} | {std * 1e3:.1f} | {sel * 1e3:.1f} | {ratio:.3f} | {low:.3f}-{high:.3f} | "
                f"< {SELECTIVE_GOAL:.2f}: {attention_verdict(low, high)} |")
        echo(line)
        lines.append(line)
    return "\n".join(lines) + "\n"
