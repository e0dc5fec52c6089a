"""`switchrepro bench peer`: the missing-extra error, the settings it refuses, the capacities it documents, and
(where torch and transformers are installed, e.g. .venv-peer) that the Hugging Face models it times are
switchrepro's models: same parameter count, same function on the same weights, sane first losses."""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from switchrepro.bench import peer as P
from switchrepro.bench import peer_hf as H
from switchrepro.cli import main
from switchrepro.model.build import init_params
from switchrepro.model.t5 import count_params
from switchrepro.train import trainer

# Tiny shapes: 2+2 layers (Switch FFN at layer 1 of each stack), everything in seconds.
TINY = P.PeerSpec(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_heads=2, num_layers=2, batch_size=4,
                  inputs_length=16, targets_length=8)


def _peer():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


def _jax_batch(spec):
    b = P.make_batch(spec)
    ones = lambda a: jnp.ones(a.shape, jnp.int32)
    return {"encoder_input_tokens": jnp.asarray(b["inputs"]), "encoder_segment_ids": ones(b["inputs"]),
            "decoder_target_tokens": jnp.asarray(b["targets"]),
            "decoder_input_tokens": jnp.asarray(b["decoder_inputs"]),
            "decoder_segment_ids": ones(b["targets"]), "decoder_loss_weights": ones(b["targets"])}


def _torch_inputs(spec):
    import torch

    b = P.make_batch(spec)
    return {"input_ids": torch.from_numpy(b["inputs"]).long(),
            "decoder_input_ids": torch.from_numpy(b["decoder_inputs"]).long(),
            "labels": torch.from_numpy(b["targets"]).long()}


# --------------------------------------------------------------------------------------------- without torch


@pytest.mark.parametrize("missing", [["torch"], ["torch", "transformers"]])
def test_missing_peer_packages_is_a_one_line_error(monkeypatch, missing):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # find_spec() then reports it missing, as when not installed
    absent = P.missing_peer_packages()  # what is simulated, plus what this environment really lacks
    assert set(missing) <= set(absent)
    result = CliRunner().invoke(main, ["bench", "peer", "--steps", "1"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"needs {' and '.join(absent)} (not installed" in lines[0]
    assert "pip install -c constraints.txt -e '.[peer]'" in lines[0] and "separate environment" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args,message", [
    (["--num-layers", "1", "--experts", "8"], "num_layers >= 2"),
    (["--threads", "4096"], "usable cores"),
    (["--experts", "0"], "comma-separated positive integers"),
])
def test_impossible_settings_fail_before_any_worker_starts(monkeypatch, args, message):
    monkeypatch.setattr(P, "missing_peer_packages", lambda: [])
    monkeypatch.setattr(P, "Worker", None)  # a started worker would be a TypeError, not an error line
    result = CliRunner().invoke(main, ["bench", "peer", *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output


def test_a_failing_worker_is_a_one_line_error_carrying_its_stderr():
    with pytest.raises(P.PeerError) as err:  # the worker dies on the bad job, before building its side
        P.Worker("jax", "T5 dense", {"spec": {"no_such_field": 1}, "experts": 0}, P.worker_env(1))
    message = str(err.value)
    assert "the jax worker (T5 dense) exited with status 1" in message and "no_such_field" in message
    assert "\n" not in message and "Traceback" in err.value.detail


def test_capacities_per_stack_and_grouping():
    spec = P.PeerSpec()  # the benchmark's shapes: batch 32 x (128 + 32)
    c32 = P.capacities(spec, 32)
    assert c32["switchrepro"] == {"encoder_groups": 4, "encoder_group_tokens": 1024, "encoder_capacity": 40,
                                  "decoder_groups": 1, "decoder_group_tokens": 1024, "decoder_capacity": 40}
    # HF: one group per sequence; round(1.25 * 128 / 32) = 5, round(1.25 * 32 / 32) = 1 -> min_capacity 4.
    assert c32["hf"] == {"encoder_capacity": 5, "decoder_capacity": 4}
    c128 = P.capacities(spec, 128)
    assert c128["switchrepro"]["encoder_capacity"] == c128["switchrepro"]["decoder_capacity"] == 10
    assert c128["hf"] == {"encoder_capacity": 4, "decoder_capacity": 4}


def test_batch_is_fixed_by_the_seed_and_shifted_right():
    a, b = P.make_batch(TINY), P.make_batch(TINY)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["inputs"].shape == (4, 16) and a["targets"].shape == (4, 8) and a["inputs"].dtype == np.int32
    assert a["inputs"].min() >= 3 and a["inputs"].max() < TINY.vocab_size
    assert np.array_equal(a["decoder_inputs"][:, 1:], a["targets"][:, :-1]) and not a["decoder_inputs"][:, 0].any()
    other = P.make_batch(dataclasses.replace(TINY, seed=1))
    assert not np.array_equal(a["inputs"], other["inputs"])


# --------------------------------------------------------------------------------------------- with torch


@pytest.mark.parametrize("experts", [0, 4], ids=["dense", "switch4"])
def test_hf_model_has_our_parameters_and_structure(experts):
    _peer()
    cfg = P.model_config(TINY, experts)
    _, params = init_params(cfg, jax.random.PRNGKey(0), inputs_length=16, targets_length=8)
    hf = H.build_hf_model(TINY, experts)
    assert H.count_hf_params(hf) == count_params(params)
    assert hf.encoder.embed_tokens is hf.shared and hf.decoder.embed_tokens is hf.shared
    assert hf.lm_head.weight is not hf.shared.weight
    if experts:
        for stack, name in ((hf.encoder, "encoder"), (hf.decoder, "decoder")):
            sparse = [i for i, block in enumerate(stack.block) if block.layer[-1].is_sparse]
            assert tuple(sparse) == cfg.sparse_layers(name) == (1,)
            assert stack.block[1].layer[-1].mlp.router.expert_capacity == P.capacities(TINY, experts)["hf"][
                f"{name}_capacity"]


@pytest.mark.parametrize("experts", [0, 4], ids=["dense", "switch4"])
def test_hf_model_computes_our_function_on_our_weights(experts):
    """Evaluation mode (no jitter) with room for every token on both sides: the logits agree to float32
    rounding, so the models are the same (attention scaling, relative buckets, routing, gating, untied head)."""
    _peer()
    import torch

    cfg = P.model_config(TINY, experts)
    if experts:  # capacity_factor_eval = E: no token dropped in ours; HF's capacity = the sequence length
        cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, capacity_factor_eval=float(experts)))
    model, params = init_params(cfg, jax.random.PRNGKey(1), inputs_length=16, targets_length=8)
    hf = H.build_hf_model(TINY, experts, {"encoder_capacity": 16, "decoder_capacity": 8})
    H.load_switchrepro_params(hf, jax.tree_util.tree_map(np.asarray, params), cfg)
    ours, _ = model.apply({"params": params}, _jax_batch(TINY), deterministic=True)
    hf.eval()
    with torch.no_grad():
        theirs = hf(**_torch_inputs(TINY)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-5)


@pytest.mark.parametrize("experts", [0, 4], ids=["dense", "switch4"])
def test_first_training_losses_are_near_ln_vocab_on_both_sides(experts):
    """Each tool from its own initialisation (HF's re-initialised like ours), training mode, with the router
    losses: both start near ln(vocab), as a uniform predictor; one HF optimiser step keeps the loss finite."""
    _peer()
    import torch

    spec = TINY
    cfg = P.model_config(spec, experts)
    tc = trainer.TrainConfig()
    model, params = init_params(cfg, jax.random.PRNGKey(0), inputs_length=16, targets_length=8)
    opt = trainer.make_optimizer(tc)
    state = trainer.TrainState(step=jnp.int32(0), params=params, opt_state=opt.init(params))
    _, metrics = trainer.make_train_step(model, opt, tc)(state, _jax_batch(spec), jax.random.PRNGKey(0))
    torch.manual_seed(0)
    hf = H.build_hf_model(spec, experts)
    hf.train()
    inputs = _torch_inputs(spec)
    if experts:
        inputs["output_router_logits"] = True
    ln_v = np.log(spec.vocab_size)
    assert abs(float(metrics["loss"]) - ln_v) < 0.5
    for kind in P.HF_OPTIMIZERS:
        hf_opt = H.make_hf_optimizer(hf.parameters(), kind)
        loss = hf(**inputs).loss
        assert abs(float(loss.detach()) - ln_v) < 0.5
        loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        assert np.isfinite(float(hf(**inputs).loss.detach()))


def test_run_peer_bench_alternates_two_worker_processes(tmp_path):
    """The whole path once, at toy size: both workers start, step, report equal parameter counts."""
    _peer()
    lines = []
    text = P.run_peer_bench(TINY, [2], steps=1, warmup=0, rounds=2, threads=1, echo=lines.append)
    assert "| T5 dense |" in text and "| Switch, 2 experts |" in text and "MISMATCH" not in text
    assert sum("round 2/2" in ln for ln in lines) == 2
    assert "transformers" in text and "jax" in text
