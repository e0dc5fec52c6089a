"""`switchrepro bench peer`, the Hugging Face side: the transformers model matching switchrepro's, initialised
like it, its optimiser, and the worker that times it (`python -m switchrepro.bench.peer_hf`, started by
bench/peer.py). torch and transformers are imported inside the functions that use them: they live in the peer
environment only (see bench/peer.py's missing_message).
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from switchrepro.bench.peer import (
    HF_OPTIMIZERS,
    TRUNCATED_NORMAL_STD,
    PeerSpec,
    capacities,
    hf_learning_rate,
    make_batch,
    model_config,
    serve,
    versions,
)
from switchrepro.config import ModelConfig


def build_hf_model(spec: PeerSpec, experts: int, hf_capacity: Optional[Dict[str, int]] = None):
    """The Hugging Face model matching `model_config(spec, experts)`, initialised like switchrepro's.

    `hf_capacity`: {'encoder_capacity', 'decoder_capacity'} slots per expert per sequence (default:
    `capacities(spec, experts)['hf']`). Raises ValueError if the sparse layers or the tying differ from ours.
    """
    import torch
    from transformers import (
        SwitchTransformersConfig,
        SwitchTransformersForConditionalGeneration,
        T5Config,
        T5ForConditionalGeneration,
    )

    cfg = model_config(spec, experts)
    common = dict(vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
                  num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
                  num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.relative_attention_num_buckets,
                  relative_attention_max_distance=cfg.relative_attention_max_distance, dropout_rate=0.0,
                  layer_norm_epsilon=1e-6, use_cache=False, tie_word_embeddings=False, pad_token_id=0)
    if experts:
        moe = cfg.moe
        cap = hf_capacity or capacities(spec, experts)["hf"]
        hf_cfg = SwitchTransformersConfig(
            **common, num_experts=experts, expert_capacity=cap["encoder_capacity"],
            num_sparse_encoder_layers=cfg.num_encoder_layers // 2,
            num_sparse_decoder_layers=cfg.num_decoder_layers // 2, router_bias=False,
            router_jitter_noise=moe.jitter_eps, router_dtype=moe.router_dtype, router_ignore_padding_tokens=False,
            router_z_loss_coef=moe.z_loss_coef, router_aux_loss_coef=moe.aux_loss_coef, dense_act_fn="relu")
        model = SwitchTransformersForConditionalGeneration(hf_cfg)
        for stack, name in ((model.encoder, "encoder"), (model.decoder, "decoder")):
            sparse = tuple(i for i, block in enumerate(stack.block) if block.layer[-1].is_sparse)
            if sparse != cfg.sparse_layers(name):
                raise ValueError(f"HF made {name} layers {sparse} sparse, switchrepro {cfg.sparse_layers(name)}")
            for i in sparse:  # HF has one expert_capacity per model; ours differs per stack (sequence lengths)
                stack.block[i].layer[-1].mlp.router.expert_capacity = cap[f"{name}_capacity"]
    else:
        model = T5ForConditionalGeneration(T5Config(**common, feed_forward_proj="relu"))
    if getattr(model.config, "scale_decoder_outputs", False):
        raise ValueError("HF T5 would rescale the decoder output by 1/sqrt(d_model); switchrepro's untied output "
                         "layer does not (pass tie_word_embeddings=False)")
    # One embedding table for encoder and decoder, and a separate output layer, as switchrepro.
    model.set_input_embeddings(model.shared)
    if model.lm_head.weight is model.shared.weight:
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    init_like_switchrepro(model, cfg)
    return model


def init_like_switchrepro(model, cfg: ModelConfig) -> None:
    """Re-initialise an HF model built by `build_hf_model` with switchrepro's initial distributions.

    Kernels: truncated normal, std sqrt(init_scale / fan_in) (paper section 2.4; experts per expert); the
    query kernel additionally times d_kv**-0.5, since HF's T5 attention does not scale q k^T and ours
    divides q by sqrt(d_kv). Token embedding N(0, 1), relative position bias N(0, 0.1), router
    N(0, router_init_std), norm scales 1.
    """
    import torch

    def trunc(weight, fan_in: int, extra: float = 1.0) -> None:
        std = math.sqrt(cfg.init_scale / fan_in) / TRUNCATED_NORMAL_STD * extra
        torch.nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                if name.endswith("router.classifier"):
                    torch.nn.init.normal_(module.weight, 0.0, cfg.moe.router_init_std)
                else:
                    trunc(module.weight, module.in_features, cfg.d_kv ** -0.5 if name.endswith(".q") else 1.0)
            elif isinstance(module, torch.nn.Embedding):
                std = 0.1 if name.endswith("relative_attention_bias") else 1.0
                torch.nn.init.normal_(module.weight, 0.0, std)
            elif type(module).__name__.endswith("LayerNorm"):
                torch.nn.init.ones_(module.weight)


def load_switchrepro_params(model, params, cfg: ModelConfig) -> None:
    """Copy switchrepro parameters (the pytree of `init_params`, arrays convertible to numpy) into an HF model
    from `build_hf_model(spec, experts)` of the same config, so both compute the same function.

    Kernels are [in, out] in Flax and [out, in] in torch; experts are stacked [E, in, out] in ours and one
    Linear per expert in HF; the relative position table is [heads, buckets] in ours, [buckets, heads] in HF.
    """
    import torch

    def put(dst, src, transpose: bool = True, scale: float = 1.0) -> None:
        a = np.asarray(src, np.float32)
        a = a.T if transpose else a
        if tuple(dst.shape) != a.shape:
            raise ValueError(f"shape mismatch: HF {tuple(dst.shape)} vs switchrepro {a.shape}")
        dst.data.copy_(torch.from_numpy(np.ascontiguousarray(a * scale)))

    def attention(hf, p) -> None:
        put(hf.q.weight, p["query"]["kernel"], scale=cfg.d_kv ** -0.5)
        put(hf.k.weight, p["key"]["kernel"])
        put(hf.v.weight, p["value"]["kernel"])
        put(hf.o.weight, p["out"]["kernel"])

    def ffn(hf_layer, p) -> None:
        put(hf_layer.layer_norm.weight, p["pre_mlp_norm"]["scale"], transpose=False)
        if "moe" in p["ffn"]:
            q, mlp = p["ffn"]["moe"], hf_layer.mlp
            put(mlp.router.classifier.weight, q["router"])
            for e in range(cfg.moe.num_experts):
                put(mlp.experts[f"expert_{e}"].wi.weight, q["wi"][e])
                put(mlp.experts[f"expert_{e}"].wo.weight, q["wo"][e])
        else:
            mlp = getattr(hf_layer, "DenseReluDense", None) or hf_layer.mlp  # T5 | Switch
            put(mlp.wi.weight, p["ffn"]["mlp"]["wi"]["kernel"])
            put(mlp.wo.weight, p["ffn"]["mlp"]["wo"]["kernel"])

    put(model.shared.weight, params["token_embedder"]["embedding"], transpose=False)
    for i, block in enumerate(model.encoder.block):
        p = params[f"encoder_layer_{i}"]
        put(block.layer[0].layer_norm.weight, p["pre_attention_norm"]["scale"], transpose=False)
        attention(block.layer[0].SelfAttention, p["attention"])
        ffn(block.layer[1], p)
    for i, block in enumerate(model.decoder.block):
        p = params[f"decoder_layer_{i}"]
        put(block.layer[0].layer_norm.weight, p["pre_self_attention_norm"]["scale"], transpose=False)
        attention(block.layer[0].SelfAttention, p["self_attention"])
        put(block.layer[1].layer_norm.weight, p["pre_cross_attention_norm"]["scale"], transpose=False)
        attention(block.layer[1].EncDecAttention, p["encoder_decoder_attention"])
        ffn(block.layer[2], p)
    put(model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight,
        params["encoder_relpos"]["rel_embedding"])
    put(model.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight,
        params["decoder_relpos"]["rel_embedding"])
    put(model.encoder.final_layer_norm.weight, params["encoder_norm"]["scale"], transpose=False)
    put(model.decoder.final_layer_norm.weight, params["decoder_norm"]["scale"], transpose=False)
    put(model.lm_head.weight, params["logits_dense"]["kernel"])


def count_hf_params(model) -> int:
    """Distinct parameters (a shared tensor counts once, as torch's parameters() yields it once)."""
    return int(sum(p.numel() for p in model.parameters()))


def make_hf_optimizer(params, kind: str):
    """The Adafactor closest to ours (see the module docstring); `kind` is 'transformers' or 'torch'."""
    lr = hf_learning_rate()
    if kind == "transformers":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8, beta1=None,
                         weight_decay=0.0, scale_parameter=True, relative_step=False, warmup_init=False)
    if kind == "torch":
        import torch

        # eps1 = None (float32 machine epsilon): torch clamps the variance estimate at eps1**2, and 1e-30**2
        # underflows to 0 in float32, so any all-zero gradient row (an unused token id) would give 0 / 0 = NaN.
        return torch.optim.Adafactor(params, lr=lr, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0)
    raise ValueError(f"hf_optimizer must be one of {HF_OPTIMIZERS}, got {kind!r}")


class HfSide:
    """Hugging Face's model trained the way its users do: eager PyTorch, train mode, loss.backward(), step()."""

    def __init__(self, spec: PeerSpec, experts: int, hf_capacity: Optional[Dict[str, int]], threads: int):
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(spec.seed)
        self._torch = torch
        self.model = build_hf_model(spec, experts, hf_capacity)
        self.model.train()
        self.opt = make_hf_optimizer(self.model.parameters(), spec.hf_optimizer)
        b = make_batch(spec)
        self.inputs = {"input_ids": torch.from_numpy(b["inputs"]).long(),
                       "decoder_input_ids": torch.from_numpy(b["decoder_inputs"]).long(),
                       "labels": torch.from_numpy(b["targets"]).long()}
        if experts:
            self.inputs["output_router_logits"] = True  # adds the router losses, as ours trains with them
        first_s, first_loss = self.step()
        self.ready = {"params": count_hf_params(self.model), "first_loss": first_loss, "first_step_s": first_s,
                      "versions": versions("torch", "transformers"), "torch_threads": torch.get_num_threads(),
                      "torch_interop_threads": torch.get_num_interop_threads(),
                      "attention": getattr(self.model.config, "_attn_implementation", "?"),
                      "optimizer": f"{type(self.opt).__module__}.{type(self.opt).__name__}"}

    def step(self) -> Tuple[float, float]:
        t = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = self.model(**self.inputs).loss
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t, float(loss.detach())


def start(spec: PeerSpec, job: Dict[str, Any]) -> HfSide:
    return HfSide(spec, job["experts"], job.get("hf_capacity"), job["threads"])


if __name__ == "__main__":
    serve(start)
