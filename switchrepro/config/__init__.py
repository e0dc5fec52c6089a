"""Typed, frozen configuration for models, MoE layers, data and training.

The library is plain Python: these dataclasses are the whole configuration
surface. gin only binds them at the edge (`switchrepro.config.gin`, which the
command line and `switchrepro.api` use), as in T5X. Every field has a default so
that a config can be built in a test with a few keyword arguments.

Beside them: `config.tables` (what a paper table is: TableSpec, Row, PruningSpec),
`config.store` (a config's hash, its config.json, the run directory holding it)
and `config.gin` (gin files and bindings -> these dataclasses).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from switchrepro.config.tasks import TASK_INFO

ROUTERS = ("switch", "top2", "noisy_topk")
DISPATCHES = ("scatter", "einsum", "dropless")
GROUPED_MATMULS = ("auto", "ragged_dot", "blocks")
EXPERT_MATMULS = ("auto", "batched", "loop", "native")
ROUNDINGS = ("round", "floor", "ceil")
EXPLORATIONS = ("input_jitter", "argmax", "sample_softmax", "input_dropout")
DTYPES = ("float32", "bfloat16")
ATTENTIONS = ("standard", "selective")  # of causal self-attention (the decoder)
ARCHITECTURES = ("encoder_decoder", "decoder_only")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says what to change."""


class DamagedFileError(ValueError):
    """A run's or a table's saved file cannot be read; the message is one line that names it."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """A sparse feed-forward layer: router, capacity, losses and dispatch.

    Loss conventions (documented choice, see docs/semantics.md):
      * load-balancing loss = aux_loss_coef * N * sum_i f_i P_i per layer, with
        f_i taken from router assignments *before* capacity dropping; the
        per-layer losses are SUMMED over sparse layers (mesh-tensorflow, the
        paper's code). T5X averages over layers instead.
      * router z-loss (ST-MoE eq. 5) = z_loss_coef * mean(logsumexp(logits)^2),
        also summed over layers.
    """

    num_experts: int = 8
    router: str = "switch"  # switch (top-1) | top2 (GShard/MTF baseline) | noisy_topk (Shazeer 2017)
    capacity_factor_train: float = 1.25
    capacity_factor_eval: float = 2.0
    min_capacity: int = 4
    capacity_rounding: str = "round"  # round | floor | ceil
    group_size: int = 1024  # tokens per routing group (capacity is per group)
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0
    jitter_eps: float = 0.01  # multiplicative input jitter U(1-eps, 1+eps), training only
    exploration: str = "input_jitter"  # Table 11: input_jitter | argmax | sample_softmax | input_dropout
    input_dropout_rate: float = 0.1  # only for exploration="input_dropout"
    router_dtype: str = "float32"  # selective precision: float32 router in a bfloat16 model
    dispatch: str = "scatter"  # scatter (default) | einsum (paper-faithful oracle) | dropless (no capacity)
    grouped_matmul: str = "auto"  # dropless only: ragged_dot | blocks | auto (blocks on CPU, else ragged_dot)
    expert_matmul: str = "auto"  # scatter/einsum: batched | loop (one expert at a time) | native (CPU kernels,
    # switchrepro/backends/cpu/native/expert_gemm.py) | auto (resolved once per run and recorded as expert_path
    # in config.json: native where it runs, else XLA's dot, looping over experts from LOOP_MIN_ROWS rows)
    second_expert_threshold: float = 0.2  # top2: 2nd expert kept w.p. min(1, g2/threshold) in training
    noisy_top_k: int = 2  # noisy_topk: experts per token
    importance_loss_coef: float = 0.1  # noisy_topk: w_importance * CV(importance)^2
    load_loss_coef: float = 0.1  # noisy_topk: w_load * CV(load)^2
    expert_dropout: float = 0.0  # dropout on the expert hidden activation (fine-tuning, paper Table 4)
    router_init_std: float = 0.02

    def validate(self) -> None:
        _check(self.num_experts >= 1, f"num_experts must be a positive integer, got {self.num_experts}")
        _check(self.router in ROUTERS, f"router must be one of {ROUTERS}, got {self.router!r}")
        _check(self.dispatch in DISPATCHES, f"dispatch must be one of {DISPATCHES}, got {self.dispatch!r}")
        _check(self.grouped_matmul in GROUPED_MATMULS,
               f"grouped_matmul must be one of {GROUPED_MATMULS}, got {self.grouped_matmul!r}")
        _check(0.0 <= self.expert_dropout < 1.0, f"expert_dropout must be in [0, 1), got {self.expert_dropout}")
        _check(self.expert_matmul in EXPERT_MATMULS,
               f"expert_matmul must be one of {EXPERT_MATMULS}, got {self.expert_matmul!r}")
        _check(self.capacity_rounding in ROUNDINGS,
               f"capacity_rounding must be one of {ROUNDINGS}, got {self.capacity_rounding!r}")
        _check(self.exploration in EXPLORATIONS,
               f"exploration must be one of {EXPLORATIONS}, got {self.exploration!r}")
        _check(self.router_dtype in DTYPES, f"router_dtype must be one of {DTYPES}, got {self.router_dtype!r}")
        for name in ("capacity_factor_train", "capacity_factor_eval"):
            v = getattr(self, name)
            _check(v > 0, f"{name} must be > 0 (e.g. 1.25), got {v}")
        _check(self.min_capacity >= 0, f"min_capacity must be >= 0, got {self.min_capacity}")
        _check(self.group_size >= 1, f"group_size must be >= 1, got {self.group_size}")
        _check(self.router != "top2" or self.num_experts >= 2, "router='top2' needs num_experts >= 2")
        _check(self.router != "noisy_topk" or 1 <= self.noisy_top_k <= self.num_experts,
               f"noisy_top_k must be in [1, num_experts={self.num_experts}], got {self.noisy_top_k}")
        _check(0 <= self.jitter_eps < 1, f"jitter_eps must be in [0, 1), got {self.jitter_eps}")

    @property
    def experts_per_token(self) -> int:
        return {"switch": 1, "top2": 2, "noisy_topk": self.noisy_top_k}[self.router]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A T5.1.1-style encoder-decoder; sparse FFNs at explicit layer indices."""

    vocab_size: int = 8192
    d_model: int = 128
    d_ff: int = 512
    num_heads: int = 4
    d_kv: int = 32
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    activation: str = "relu"  # relu | geglu
    dropout_rate: float = 0.0
    tie_embeddings: bool = False  # T5.1.1 unties the output logits
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    init_scale: float = 0.1  # truncated normal with std sqrt(init_scale / fan_in) (paper section 2.4)
    dtype: str = "float32"  # activation dtype; params stay float32
    # Sparse layers: None means "every other FFN" (layers 1, 3, 5, ...), as in the paper.
    # An explicit tuple lists the sparse layer indices; () gives a dense model.
    encoder_sparse_layers: Optional[Tuple[int, ...]] = None
    decoder_sparse_layers: Optional[Tuple[int, ...]] = None
    moe: Optional[MoeConfig] = None  # None: dense model
    # "selective": the decoder's causal self-attention is selective attention (model/selective.py)
    attention: str = "standard"
    # "decoder_only": a language model of num_decoder_layers layers (model/decoder_only.py), no encoder
    architecture: str = "encoder_decoder"

    def sparse_layers(self, stack: str) -> Tuple[int, ...]:
        if self.moe is None:
            return ()
        n = self.num_encoder_layers if stack == "encoder" else self.num_decoder_layers
        explicit = self.encoder_sparse_layers if stack == "encoder" else self.decoder_sparse_layers
        if explicit is None:
            return tuple(range(1, n, 2))
        return tuple(explicit)

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "d_ff", "num_heads", "d_kv"):
            _check(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _check(self.num_encoder_layers >= 1 and self.num_decoder_layers >= 1, "need at least one layer per stack")
        _check(self.activation in ("relu", "geglu"), f"activation must be relu or geglu, got {self.activation!r}")
        _check(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        _check(self.attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        _check(self.architecture in ARCHITECTURES,
               f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        _check(0 <= self.dropout_rate < 1, f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        _check(self.init_scale > 0, f"init_scale must be > 0, got {self.init_scale}")
        if self.moe is not None:
            self.moe.validate()
            for stack, n in (("encoder", self.num_encoder_layers), ("decoder", self.num_decoder_layers)):
                bad = [i for i in self.sparse_layers(stack) if not 0 <= i < n]
                _check(not bad, f"{stack}_sparse_layers {bad} out of range for {n} layers")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which seqio task feeds training and evaluation, and how batches are shaped."""

    task: str = "switchrepro_span_corruption"  # or switchrepro_byte_span_corruption, ..._byte_span20_..., c4_...
    inputs_length: int = 128
    targets_length: int = 32
    batch_size: int = 32
    eval_examples: int = 512  # held-out examples scored at each evaluation
    tfds_data_dir: Optional[str] = None
    cache_dir: Optional[str] = None  # None: $SWITCHREPRO_CACHE or ~/.cache/switchrepro
    max_train_examples: Optional[int] = None  # None: materialise the whole training split

    def validate(self) -> None:
        _check(self.inputs_length >= 8, f"inputs_length must be >= 8, got {self.inputs_length}")
        _check(self.targets_length >= 4, f"targets_length must be >= 4, got {self.targets_length}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.eval_examples >= 1, f"eval_examples must be >= 1, got {self.eval_examples}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    seed: int = 0
    learning_rate: float = 1.0  # Adafactor base: lr(step) = learning_rate / sqrt(max(step, warmup_steps))
    warmup_steps: int = 100
    linear_warmup: bool = False  # T5 holds lr constant during warmup; True ramps it linearly from 0
    cooldown_steps: int = 0  # >0: lr decays linearly to 0 over the last cooldown_steps (quiets the final evals)
    logits_z_loss: float = 1e-4  # T5X output-logit z-loss (not the router z-loss)
    eval_every: int = 50
    checkpoint_every: int = 100
    log_every: int = 10
    keep_checkpoints: int = 2
    progress: bool = True

    def validate(self) -> None:
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.warmup_steps >= 1, f"warmup_steps must be >= 1, got {self.warmup_steps}")
        _check(0 <= self.cooldown_steps <= self.steps,
               f"cooldown_steps must be between 0 and steps ({self.steps}), got {self.cooldown_steps}")
        _check(self.eval_every >= 1 and self.checkpoint_every >= 1 and self.log_every >= 1,
               "eval_every, checkpoint_every and log_every must be >= 1")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Train this run's model as the student of a teacher run (paper section 4.2, Tables 6 to 8).

    The teacher is named by its configuration hash, not its path, so the student's own hash (and run
    directory) says which teacher it learned from wherever the runs live.
    """

    teacher: str = ""  # the teacher run's configuration hash (switchrepro.config.store.config_hash)
    teacher_weight: float = 0.25  # soft (teacher) share of the loss; the paper's "0.75 mix" of hard and soft
    temperature: float = 1.0
    init_from_teacher: bool = True  # start from the teacher's non-expert weights (those of matching path and shape)

    def validate(self) -> None:
        _check(bool(self.teacher), "DistillConfig.teacher must name the teacher run's configuration hash")
        _check(0.0 <= self.teacher_weight <= 1.0,
               f"teacher_weight must be in [0, 1] (0.25 = the paper's 0.75 hard/soft mix, 0 = no distillation "
               f"loss), got {self.teacher_weight}")
        _check(self.temperature > 0, f"temperature must be > 0 (1.0 = no softening), got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tune a pre-trained run on a downstream text-to-text task (paper section 4.1, Tables 4 and 5).

    The task is DataConfig.task (e.g. switchrepro_byte_sentiment); the model starts from the pre-trained
    run's latest checkpoint, named by its configuration hash as DistillConfig names a teacher. At every
    evaluation the trainer also decodes validation examples greedily and scores them with T5's metric
    functions; a run reports its peak validation score, as the paper does.
    """

    pretrained: str = ""  # the pre-trained run's configuration hash (switchrepro.config.store.config_hash)
    decode_examples: int = 256  # validation examples decoded and scored at each evaluation (0: all)

    def validate(self) -> None:
        _check(bool(self.pretrained), "FinetuneConfig.pretrained must name the pre-trained run's configuration hash")
        _check(self.decode_examples >= 0, f"decode_examples must be >= 0 (0 = all), got {self.decode_examples}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    distill: Optional[DistillConfig] = None  # None: plain pre-training
    finetune: Optional[FinetuneConfig] = None  # None: pre-training (span corruption)

    def validate(self) -> "ExperimentConfig":
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if self.distill is not None:
            self.distill.validate()
        if self.finetune is not None:
            self.finetune.validate()
        info = TASK_INFO.get(self.data.task)  # an unknown task is refused when its data is requested
        if info is not None:
            # A smaller table would silently clamp token ids in the embedding lookup; a larger one wastes softmax.
            _check(info.vocab_size == self.model.vocab_size,
                   f"ModelConfig.vocab_size = {self.model.vocab_size} does not match task {self.data.task!r}, whose "
                   f"vocabulary has {info.vocab_size} ids; set ModelConfig.vocab_size = {info.vocab_size}")
        return self


def to_dict(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    if isinstance(cfg, ExperimentConfig):
        for added_later in ("distill", "finetune"):  # as run directories saved before these existed
            if getattr(cfg, added_later) is None:
                d.pop(added_later)
    return d
