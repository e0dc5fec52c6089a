"""The selective-attention experiment: its pruning spec, the per-position losses under a budget, the memory
ratio and head claims on literal numbers, and a smoke run through the CLI (run, plot, report)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from switchrepro.cli import main
from switchrepro.config import DataConfig, ExperimentConfig, ModelConfig
from switchrepro.config.tables import PruningSpec
from switchrepro.experiments import claims as C
from switchrepro.experiments.tables import selective_attention as SA
from switchrepro.model.build import init_params
from switchrepro.train import pruning_eval
from switchrepro.train.trainer import token_cross_entropy

# ------------------------------------------------------------------------------------------ spec and record


def test_pruning_spec_refuses_unsorted_or_tiny_budgets():
    PruningSpec((2, 4), (4, 8), 3).validate("t")
    with pytest.raises(ValueError, match="increasing"):
        PruningSpec((8, 4), (16,), 3).validate("t")
    with pytest.raises(ValueError, match=">= 2"):
        PruningSpec((1, 4), (16,), 3).validate("t")


def test_passes_keep_the_budgets_below_the_length_and_the_length_itself():
    assert pruning_eval.passes([4, 8, 16, 32], 16) == [4, 8, 16]
    assert pruning_eval.passes([4, 64], 32) == [4, 32]


def test_quality_reads_the_first_positions_and_treats_a_large_budget_as_no_pruning():
    record = {"length": 4, "tokens": [2, 2, 2, 0], "nll": {"2": [1.0, 2.0, 3.0, 0.0], "4": [1.0, 1.0, 1.0, 0.0]}}
    assert pruning_eval.quality(record, 2, 2) == pytest.approx(-(1.0 + 1.0) / 4)  # budget 2 >= context 2: no pruning
    assert pruning_eval.quality(record, 2, 3) == pytest.approx(-(1.0 + 2.0 + 3.0) / 6)
    assert pruning_eval.quality(record, 4, 4) == pytest.approx(-3.0 / 6)
    with pytest.raises(KeyError):
        pruning_eval.quality(record, 3, 4)


def test_position_losses_without_pruning_equal_the_parallel_forward():
    cfg = ModelConfig(vocab_size=64, d_model=32, d_ff=64, num_heads=2, d_kv=8, num_decoder_layers=2,
                      architecture="decoder_only", attention="selective")
    model, params = init_params(cfg, jax.random.PRNGKey(0), inputs_length=4, targets_length=12)
    rng = np.random.default_rng(0)
    targets = rng.integers(2, 64, (3, 12)).astype(np.int32)
    weights = np.ones_like(targets)
    weights[2, 9:] = 0  # a padded tail
    targets[2, 9:] = 0
    batch = {"decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))), "decoder_target_tokens": targets,
             "decoder_segment_ids": (weights > 0).astype(np.int32), "decoder_loss_weights": weights}
    nll, tokens = pruning_eval.position_losses(model, params, batch, 12)
    logits, _ = model.apply({"params": params}, {k: jnp.asarray(v) for k, v in batch.items()}, deterministic=True)
    ce, _ = token_cross_entropy(logits, jnp.asarray(targets))
    np.testing.assert_allclose(nll, np.asarray(jnp.sum(ce * weights, axis=0)), rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(tokens, weights.sum(axis=0))
    pruned, _ = pruning_eval.position_losses(model, params, batch, 3)
    np.testing.assert_allclose(pruned[:3], nll[:3], rtol=2e-5, atol=2e-5)  # the cache is not full yet
    assert not np.allclose(pruned[4:], nll[4:])


def test_measure_refuses_an_encoder_decoder_model(tmp_path):
    cfg = ExperimentConfig(model=ModelConfig(), data=DataConfig(targets_length=32))
    with pytest.raises(ValueError, match="decoder-only"):
        pruning_eval.measure(cfg, tmp_path, [4], [32], 8)


# ------------------------------------------------------------------------------------------------- claims


def _pruning(curves):
    """{(row, seed): {context: {budget: nlp}}} -> the runner's pruning frame."""
    return pd.DataFrame([{"table": "selective_attention", "row": row, "seed": seed, "context": context,
                          "budget": budget, "nlp": nlp}
                         for (row, seed), per_context in curves.items()
                         for context, per_budget in per_context.items() for budget, nlp in per_budget.items()])


# Standard H2 unpruned: -2.00 and -2.02 at context 8 (mean -2.01); -1.90 and -1.92 at context 16 (mean -1.91).
STANDARD = {("Standard H2", 0): {8: {2: -2.5, 4: -2.2, 8: -2.00}, 16: {2: -2.6, 4: -2.3, 8: -2.1, 16: -1.90}},
            ("Standard H2", 1): {8: {2: -2.5, 4: -2.2, 8: -2.02}, 16: {2: -2.6, 4: -2.3, 8: -2.1, 16: -1.92}}}


def test_memory_ratio_is_the_context_over_the_smallest_budget_that_reaches_the_standard_quality():
    selective = {("Selective H2", 0): {8: {2: -2.05, 4: -2.000, 8: -1.99},
                                       16: {2: -1.950, 4: -1.905, 8: -1.90, 16: -1.9}},
                 ("Selective H2", 1): {8: {2: -2.03, 4: -2.005, 8: -2.00},
                                       16: {2: -2.000, 4: -1.950, 8: -1.90, 16: -1.9}}}
    ratios = SA.memory_ratios(_pruning({**STANDARD, **selective}))
    at8, at16 = ratios.iloc[0], ratios.iloc[1]
    assert (at8.context, at8.target) == (8, pytest.approx(-2.01))
    assert at8.budget == 4 and at8.ratio == 2.0  # mean curve -2.04 at 2, -2.0025 at 4 (>= -2.01)
    assert at8.seed_ratios == (2.0, 2.0)  # each seed first reaches -2.01 at budget 4
    assert at16.budget == 8 and at16.ratio == 2.0  # mean curve -1.9275 at 4 (< -1.91), -1.90 at 8
    assert at16.seed_ratios == (4.0, 2.0)  # seed 0 reaches at 4 (-1.905), seed 1 at 8


def test_memory_ratio_of_a_selective_model_that_never_reaches_is_nan():
    selective = {("Selective H2", s): {8: {2: -3.0, 4: -3.0, 8: -2.5}} for s in (0, 1)}
    ratios = SA.memory_ratios(_pruning({**STANDARD, **selective}))
    assert math.isnan(ratios.iloc[0].ratio) and all(math.isnan(x) for x in ratios.iloc[0].seed_ratios)


def _judge(claim, curves):
    summary = pd.DataFrame({"n_ok": [2, 2], "n_diverged": [0, 0], "n_seeds": [2, 2]},
                           index=["Selective H2", "Standard H2"])
    return claim.check(C.Evidence(summary, pruning=_pruning(curves)))


def test_memory_claims_on_literal_curves():
    longest = SA.memory_smaller("Selective H2", "Standard H2", "longest", "x", "x")
    shortest = SA.memory_smaller("Selective H2", "Standard H2", "shortest", "x", "x")
    grows = SA.memory_ratio_grows("Selective H2", "Standard H2", "x", "x")
    good = {("Selective H2", s): {8: {2: -2.2, 4: -2.0, 8: -1.99}, 16: {2: -1.9, 4: -1.9, 8: -1.9, 16: -1.9}}
            for s in (0, 1)}
    assert _judge(longest, {**STANDARD, **good}).status == C.REPRODUCED  # 8x at 16 for both seeds
    assert _judge(shortest, {**STANDARD, **good}).status == C.REPRODUCED  # 2x at 8 for both seeds
    assert _judge(grows, {**STANDARD, **good}).status == C.REPRODUCED  # 2x -> 8x
    bad = {("Selective H2", s): {8: {2: -2.5, 4: -2.3, 8: -2.0}, 16: {2: -2.5, 4: -2.3, 8: -2.0, 16: -1.90}}
           for s in (0, 1)}
    assert _judge(longest, {**STANDARD, **bad}).status == C.NOT_REPRODUCED  # 1x: only unpruned reaches
    assert _judge(grows, {**STANDARD, **bad}).status == C.NOT_REPRODUCED  # 1x -> 1x
    mixed = {**good, ("Selective H2", 1): bad[("Selective H2", 1)]}
    assert _judge(longest, {**STANDARD, **mixed}).status == C.INCONCLUSIVE  # 8x and 1x
    assert _judge(longest, STANDARD).status == C.INCONCLUSIVE  # no selective rows pruned


def test_selective_memory_must_beat_the_standard_model_as_a_sliding_window():
    claim = SA.memory_beats_window("Selective H2", "Standard H2", "x", "x")
    good = {("Selective H2", s): {16: {2: -1.9, 4: -1.9, 8: -1.9, 16: -1.9}} for s in (0, 1)}  # 8x per seed
    assert SA.memory_ratios(_pruning({**STANDARD, **good})).iloc[-1].window_ratio == 1.0  # the window needs all 16
    assert _judge(claim, {**STANDARD, **good}).status == C.REPRODUCED
    # a standard model that uses little context: as a window of 4 keys it already reaches its unpruned NLP
    local = {key: {16: {2: -2.0, 4: -1.905, 8: -1.905, 16: curve[16][16]}} for key, curve in STANDARD.items()}
    assert SA.memory_ratios(_pruning({**local, **good})).iloc[-1].window_ratio == 4.0
    assert _judge(claim, {**local, **good}).status == C.REPRODUCED  # 8x > 4x
    same = {("Selective H2", s): {16: {2: -2.0, 4: -1.9, 8: -1.9, 16: -1.9}} for s in (0, 1)}  # 4x per seed
    assert _judge(claim, {**local, **same}).status == C.NOT_REPRODUCED


def _summary(rows):
    """{row: (mean, std)} with 3 seeds each -> a table_summary-like frame."""
    return pd.DataFrame({"nlp_mean": [m for m, _ in rows.values()], "nlp_std": [s for _, s in rows.values()],
                         "n_ok": 3, "n_diverged": 0, "n_seeds": 3}, index=list(rows))


def test_selective_h_at_least_standard_2h_needs_the_doubling_to_pay():
    claim = SA.at_least("Selective H1", "Standard H2", "Standard H1", "x", "x")
    judged = lambda rows: claim.check(C.Evidence(_summary(rows)))  # noqa: E731
    pays = {"Standard H1": (-2.10, 0.01), "Standard H2": (-2.00, 0.01)}
    assert judged({**pays, "Selective H1": (-2.01, 0.01)}).status == C.REPRODUCED  # within 2 x spread
    assert judged({**pays, "Selective H1": (-1.95, 0.01)}).status == C.REPRODUCED  # better
    assert judged({**pays, "Selective H1": (-2.05, 0.01)}).status == C.NOT_REPRODUCED  # worse by 0.05 > 0.02
    flat = {"Standard H1": (-2.00, 0.01), "Standard H2": (-2.00, 0.01), "Selective H1": (-2.00, 0.01)}
    out = judged(flat)
    assert out.status == C.INCONCLUSIVE and "does not pay" in out.detail


# ------------------------------------------------------------------------------------------------ the CLI


def test_selective_attention_smoke_run_plot_and_report(tmp_path, cache_root):
    results, runs = tmp_path / "results", tmp_path / "runs"
    args = ["--scale", "smoke", "--results-dir", str(results), "--runs-dir", str(runs)]
    result = CliRunner().invoke(main, ["run", "selective_attention", *args, "--rows", "Standard H2,Selective H2",
                                       "--gin", f"DataConfig.cache_dir = '{cache_root}'"])
    assert result.exit_code == 0, result.output
    assert "Context 32 (budget = keys kept per layer" in result.output
    frame = pd.read_csv(results / "smoke" / "selective_attention_pruning.csv")
    assert set(frame["row"]) == {"Standard H2", "Selective H2"} and set(frame["seed"]) == {0, 1}
    assert sorted(frame[frame["context"] == 16]["budget"].unique()) == [4, 8, 16]
    assert sorted(frame[frame["context"] == 32]["budget"].unique()) == [4, 8, 16, 32]
    # the unpruned pass is the longest context's; a budget >= a shorter context is no pruning there
    record = json.loads(next((results / "smoke" / "logs" / "selective_attention").glob("Selective*/pruning.json"))
                        .read_text())
    assert record["length"] == 32 and sorted(record["nll"], key=int) == ["4", "8", "16", "32"]
    plotted = CliRunner().invoke(main, ["plot", "selective_attention", *args[:2], "--results-dir", str(results)])
    assert plotted.exit_code == 0, plotted.output
    assert "selective_attention_quality_vs_budget.png" in plotted.output
    assert "selective_attention_quality_vs_heads.png" in plotted.output
    reported = CliRunner().invoke(main, ["report", "--scale", "smoke", "--results-dir", str(results)])
    assert reported.exit_code == 0, reported.output
    text = (results / "smoke" / "REPORT.md").read_text()
    assert "### Context pruning" in text and "less attention memory for standard attention's quality" in text
