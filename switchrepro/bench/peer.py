"""`switchrepro bench peer`: training examples/sec of switchrepro against Hugging Face transformers (PyTorch)
on the same models, the two tools alternating in one sitting.

Models: T5 dense (`T5ForConditionalGeneration`) and Switch (`SwitchTransformersForConditionalGeneration`,
each --experts count), built to match switchrepro's `ModelConfig` parameter for parameter:

* T5.1.1 layout on both sides: pre-norm RMSNorm, no biases, relative position bias in the first layer of
  each stack (shared by its layers), ReLU FFN, one token embedding shared by encoder and decoder, an
  UNTIED output layer without the 1/sqrt(d_model) rescale, no dropout, float32. transformers 5 always
  ties T5's output layer to the embedding (T5Config forces tie_word_embeddings=True) and, with
  tie_word_embeddings=False, leaves Switch's encoder/decoder embeddings as separate tables; `build_hf_model`
  therefore shares the embedding and unties the output layer by hand, and `run_peer_bench` checks that
  both tools count the same parameters.
* Switch FFN at layers 1, 3, ... of each stack: ours `ModelConfig.sparse_layers` (None = every other FFN);
  HF `num_sparse_*_layers = num_layers // 2`, i.e. `encoder_sparse_step = decoder_sparse_step = 2`,
  which makes layer i sparse when i % 2 == 1 (checked after building).
* Same initial distributions on both sides (`init_like_switchrepro`): HF's own initialisation starts the
  router and output layer at std 1.0 (confident, unbalanced routing and a first loss far above
  ln(vocab)), which would change what the HF step computes.

Grouping and capacity (the one semantic difference that matters for speed):

* switchrepro routes groups of `MoeConfig.group_size` tokens (default 1024) taken row-major over the whole
  batch: at batch 32 the encoder's 4096 tokens are 4 groups of 1024 (8 sequences each) and the decoder's
  1024 tokens one group. Capacity per expert per group is
  C = max(min_capacity, round(capacity_factor * group_tokens / E)) (`routing.expert_capacity`), and the
  experts always compute all E x C buffer slots per group (static shapes): about capacity_factor x the
  tokens' FLOPs whatever the routing.
* HF routes each sequence as its own group (`torch.cumsum` over the sequence axis) with one fixed
  `expert_capacity` for the whole model, and its experts compute only the kept tokens (a Python loop over
  the experts that received any). The "equivalent" HF capacity is the same formula applied to HF's
  groups: per stack C_hf = max(min_capacity, round(capacity_factor * sequence_length / E)); since HF has
  one config value, `build_hf_model` sets each router's `expert_capacity` per stack.

Optimiser: ours is the trainer's (`trainer.make_optimizer`: optax's Adafactor, fused per parameter,
factored second moments, decay 0.8, update clipping 1.0, updates relative to parameter scale, no momentum,
eps 1e-30; learning rate 1/sqrt(max(step, 100)) = 0.1 over the first 100 steps). HF's default is
`transformers.optimization.Adafactor(lr=0.1, scale_parameter=True, relative_step=False, warmup_init=False,
decay_rate=-0.8, clip_threshold=1.0, beta1=None, eps=(1e-30, 1e-3))`, the same update at a fixed rate;
`--hf-optimizer torch` uses `torch.optim.Adafactor(lr=0.1, beta2_decay=-0.8, d=1.0, eps=(None, 1e-3))`,
whose min(lr, 1/sqrt(t)) schedule is T5's exactly. The HF step is eager PyTorch in train mode
(forward with labels, loss.backward(), optimizer.step()), with the Switch router losses
(output_router_logits=True; aux coefficient 0.01, router z-loss 0 as ours). Ours also adds T5X's
1e-4 output-logit z-loss. Differences left: HF factors every 2-D parameter (optax only those whose
second-largest dimension is >= 128), and HF sums one load-balancing loss per stack (ours one per layer).

Timing: one process tree. The parent (this module's `run_peer_bench`, which never imports torch and
runs no JAX computation) starts two workers per model, `python -m switchrepro.bench.peer_jax` and
`python -m switchrepro.bench.peer_hf` (`serve` is their loop), so that torch and XLA never share a process
or thread pools; both are pinned to the same cores with one
intra-op thread per core. For R rounds (the order flips each round) each worker runs W warm-up steps then
N timed steps on a fixed batch of random token ids while the other waits on its stdin; a round's rate is
batch / median step time, a tool's rate the median over rounds, ratio = switchrepro / HF.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from switchrepro.config import ConfigError, ModelConfig, MoeConfig, TrainConfig
from switchrepro.moe.routing import expert_capacity, num_groups
from switchrepro.train.host import cpu_model, usable_cores

PEER_PACKAGES = ("torch", "transformers")
HF_OPTIMIZERS = ("transformers", "torch")
# jax.nn.initializers.variance_scaling('truncated_normal') divides the std by this (the std of a unit
# normal truncated to [-2, 2]) so that the truncated samples have the requested std.
TRUNCATED_NORMAL_STD = 0.87962566103423978


class PeerError(RuntimeError):
    """A timing worker failed. str() is one line; `detail` holds the end of the worker's stderr."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


def missing_peer_packages() -> List[str]:
    """Which of torch and transformers this interpreter cannot import (found by name, not imported)."""
    return [name for name in PEER_PACKAGES if importlib.util.find_spec(name) is None]


def missing_message(missing: Sequence[str]) -> str:
    return (f"`switchrepro bench peer` needs {' and '.join(missing)} (not installed in {sys.prefix}); install the "
            "peer extra into a separate environment, not the training .venv: python3 -m venv .venv-peer && "
            ".venv-peer/bin/pip install -c constraints.txt -e '.[peer]', then run .venv-peer/bin/switchrepro "
            "bench peer")


# --------------------------------------------------------------------------------------------- the models


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """The benchmarked shapes (defaults: the peer benchmark's settings), shared by every model of a run."""

    vocab_size: int = 32128
    d_model: int = 256
    d_kv: int = 64
    d_ff: int = 1024
    num_heads: int = 4
    num_layers: int = 4  # per stack
    batch_size: int = 32
    inputs_length: int = 128
    targets_length: int = 32
    capacity_factor: float = 1.25
    group_size: int = 1024  # switchrepro's MoeConfig.group_size; HF always groups by sequence
    seed: int = 0
    hf_optimizer: str = "transformers"  # transformers | torch

    def validate(self, experts: Sequence[int] = ()) -> "PeerSpec":
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers", "batch_size",
                     "group_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.vocab_size < 8:
            raise ConfigError(f"vocab_size must be >= 8 (token ids are drawn from [3, vocab)), got {self.vocab_size}")
        if self.inputs_length < 2 or self.targets_length < 2:
            raise ConfigError("inputs_length and targets_length must be >= 2")
        if self.hf_optimizer not in HF_OPTIMIZERS:
            raise ConfigError(f"hf_optimizer must be one of {HF_OPTIMIZERS}, got {self.hf_optimizer!r}")
        if experts and self.num_layers < 2:
            # HF's sparse step is num_layers // num_sparse_layers; with one layer it makes that layer sparse.
            raise ConfigError("Switch models need num_layers >= 2 (sparse FFN at layers 1, 3, ...)")
        model_config(self, max(experts, default=0)).validate()
        return self


def model_config(spec: PeerSpec, experts: int) -> ModelConfig:
    """switchrepro's config for the benchmarked model: T5 dense (experts 0) or Switch with `experts` experts
    (every other FFN; the other MoeConfig fields are tiny_switch.gin's values, i.e. the defaults)."""
    moe = None
    if experts:
        moe = MoeConfig(num_experts=experts, capacity_factor_train=spec.capacity_factor, group_size=spec.group_size)
    return ModelConfig(vocab_size=spec.vocab_size, d_model=spec.d_model, d_ff=spec.d_ff, num_heads=spec.num_heads,
                       d_kv=spec.d_kv, num_encoder_layers=spec.num_layers, num_decoder_layers=spec.num_layers,
                       activation="relu", dropout_rate=0.0, tie_embeddings=False, dtype="float32", moe=moe)


def capacities(spec: PeerSpec, experts: int) -> Dict[str, Dict[str, int]]:
    """Per stack, how each tool groups a batch's tokens and the expert capacity per group (plain arithmetic:
    no JAX computation).

    Returns {'switchrepro': {'encoder_groups', 'encoder_group_tokens', 'encoder_capacity', 'decoder_...'},
             'hf': {'encoder_capacity', 'decoder_capacity'}} (HF: one group per sequence).
    """
    moe = model_config(spec, experts).moe
    ours, hf = {}, {}
    for stack, length in (("encoder", spec.inputs_length), ("decoder", spec.targets_length)):
        tokens = spec.batch_size * length
        g = num_groups(tokens, moe.group_size)
        ours[f"{stack}_groups"] = g
        ours[f"{stack}_group_tokens"] = tokens // g
        ours[f"{stack}_capacity"] = expert_capacity(tokens // g, experts, moe.capacity_factor_train,
                                                    moe.min_capacity, moe.capacity_rounding)
        hf[f"{stack}_capacity"] = expert_capacity(length, experts, moe.capacity_factor_train, moe.min_capacity,
                                                  moe.capacity_rounding)
    return {"switchrepro": ours, "hf": hf}


def make_batch(spec: PeerSpec) -> Dict[str, np.ndarray]:
    """The fixed batch both tools train on: random ids from `spec.seed` (never 0 = pad, 1 = eos, 2 = unk).

    Returns <int32> arrays: inputs [batch, inputs_length], targets [batch, targets_length] and
    decoder_inputs [batch, targets_length] (targets shifted right, 0 first, as seqio's feature converter).
    """
    rng = np.random.default_rng(spec.seed)
    inputs = rng.integers(3, spec.vocab_size, (spec.batch_size, spec.inputs_length)).astype(np.int32)
    targets = rng.integers(3, spec.vocab_size, (spec.batch_size, spec.targets_length)).astype(np.int32)
    decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    return {"inputs": inputs, "targets": targets, "decoder_inputs": decoder_inputs}


def hf_learning_rate() -> float:
    """The rate ours uses over the timed steps: learning_rate / sqrt(warmup_steps) with TrainConfig's defaults
    (1.0 / sqrt(100) = 0.1; constant until step 100)."""
    tc = TrainConfig()
    return tc.learning_rate / math.sqrt(tc.warmup_steps)


# --------------------------------------------------------------------------------------------- the workers


def versions(*names: str) -> Dict[str, str]:
    """The installed version of each distribution in `names` ('?' where it is not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "?"
    return out


def serve(start: Callable[[PeerSpec, Dict[str, Any]], Any]) -> None:
    """A worker's loop: reads its job (one JSON line) on stdin, builds its side with start(spec, job) (an object
    with `ready`, a dict, and `step()` -> (seconds, loss)), answers `ready`, then runs {"warmup", "steps"}
    requests, one JSON line each, until stdin closes. stdout carries only these lines."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print goes to stderr
    job = json.loads(sys.stdin.readline())
    if job.get("cores") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(job["cores"]))  # before XLA / torch size their thread pools
    side = start(PeerSpec(**job["spec"]), job)
    protocol.write(json.dumps(side.ready) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        for _ in range(request["warmup"]):
            side.step()
        steps = [side.step() for _ in range(request["steps"])]
        protocol.write(json.dumps({"times": [t for t, _ in steps], "loss": steps[-1][1]}) + "\n")


class Worker:
    """The parent's handle on one worker process; `run` blocks until the worker has stepped."""

    def __init__(self, tool: str, label: str, job: Dict[str, Any], env: Dict[str, str]):
        self.tool, self.label = tool, label
        self.stderr = tempfile.TemporaryFile(mode="w+")
        # No preexec_fn / fork tricks: a fresh interpreter, so neither library is loaded twice in one process.
        self.proc = subprocess.Popen([sys.executable, "-m", f"switchrepro.bench.peer_{tool}"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env=env)
        self._send(job)
        self.ready = self._receive()

    def _send(self, obj) -> None:
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._fail()

    def _receive(self) -> Dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self._fail()
        return json.loads(line)

    def _fail(self):
        code = self.proc.wait()
        self.stderr.seek(0)
        lines = [ln for ln in self.stderr.read().splitlines() if ln.strip()]
        self.stderr.close()
        last = lines[-1].strip() if lines else "no message"
        raise PeerError(f"the {self.tool} worker ({self.label}) exited with status {code}: {last}",
                        "\n".join(lines[-30:]))

    def run(self, warmup: int, steps: int) -> Dict[str, Any]:
        self._send({"warmup": warmup, "steps": steps})
        return self._receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def worker_env(threads: int) -> Dict[str, str]:
    """The workers' environment: one computing device, `threads` intra-op threads, no network, quiet logs."""
    env = dict(os.environ)
    # The test suite simulates 8 XLA devices; a benchmark worker computes on one.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


# --------------------------------------------------------------------------------------------- the parent


@dataclasses.dataclass
class PeerRow:
    name: str
    experts: int
    ready: Dict[str, Dict[str, Any]]  # tool -> the worker's ready message
    rates: Dict[str, List[float]]  # tool -> examples/sec per round
    capacity: Optional[Dict[str, Dict[str, int]]] = None

    def rate(self, tool: str) -> float:
        return statistics.median(self.rates[tool])

    @property
    def ratio(self) -> float:
        return self.rate("jax") / self.rate("hf")

    @property
    def params_match(self) -> bool:
        return self.ready["jax"]["params"] == self.ready["hf"]["params"]


def time_model(spec: PeerSpec, experts: int, steps: int, warmup: int, rounds: int, cores: Sequence[int],
               echo: Callable[[str], None] = print) -> PeerRow:
    """Both tools on one model: start their workers, then `rounds` rounds of (warmup + steps) each, the
    order flipping every round. Returns the per-round rates."""
    name = f"Switch, {experts} experts" if experts else "T5 dense"
    cap = capacities(spec, experts) if experts else None
    job = {"spec": dataclasses.asdict(spec), "experts": experts, "cores": list(cores), "threads": len(cores),
           "hf_capacity": cap["hf"] if cap else None}
    env = worker_env(len(cores))
    workers: Dict[str, Worker] = {}
    try:
        for tool in ("jax", "hf"):  # one at a time: neither builds while the other compiles
            workers[tool] = Worker(tool, name, job, env)
        rates: Dict[str, List[float]] = {"jax": [], "hf": []}
        for r in range(rounds):
            order = ("jax", "hf") if r % 2 == 0 else ("hf", "jax")
            for tool in order:
                times = workers[tool].run(warmup, steps)["times"]
                rates[tool].append(spec.batch_size / statistics.median(times))
            echo(f"  {name}, round {r + 1}/{rounds}: switchrepro {rates['jax'][-1]:.1f} ex/s, "
                 f"HF {rates['hf'][-1]:.1f} ex/s")
    finally:
        for w in workers.values():
            w.close()
    return PeerRow(name, experts, {t: w.ready for t, w in workers.items()}, rates, cap)


def format_report(spec: PeerSpec, rows: Sequence[PeerRow], steps: int, warmup: int, rounds: int,
                  cores: Sequence[int]) -> str:
    jax_ready, hf_ready = rows[0].ready["jax"], rows[0].ready["hf"]
    jv, hv = jax_ready["versions"], hf_ready["versions"]
    cfg = model_config(spec, 0)
    sparse = ", ".join(str(i) for i in range(1, spec.num_layers, 2))
    lines = [
        "## switchrepro vs Hugging Face transformers: training examples/sec",
        "",
        f"- host: {cpu_model()}, {len(usable_cores()) or os.cpu_count()} usable of {os.cpu_count()} logical CPUs; "
        f"both tools pinned to cores {list(cores)}, {len(cores)} thread(s) each (torch.set_num_threads = "
        f"{hf_ready['torch_threads']}, interop {hf_ready['torch_interop_threads']}; XLA: its default pool, one "
        f"intra-op thread per pinned core, XLA_FLAGS={jax_ready['xla_flags']!r}); Python {platform.python_version()}",
        f"- memory: switchrepro's process: {jax_ready.get('malloc', 'system default')} (as the `switchrepro` "
        "command sets it); the HF process: the system default",
        f"- versions: switchrepro {jv['switchrepro']}, jax {jv['jax']}, jaxlib {jv['jaxlib']}, flax {jv['flax']}, "
        f"optax {jv['optax']}; torch {hv['torch']}, transformers {hv['transformers']}",
        f"- model: d_model {spec.d_model}, d_kv {spec.d_kv}, d_ff {spec.d_ff}, {spec.num_layers}+{spec.num_layers} "
        f"layers, {spec.num_heads} heads, vocab {spec.vocab_size}, {cfg.activation}, no dropout, float32, untied "
        f"output layer; Switch: top-1 FFN at layers {sparse} of each stack, capacity factor {spec.capacity_factor}, "
        "router jitter 0.01, aux loss 0.01",
        f"- batch: {spec.batch_size} x ({spec.inputs_length} inputs + {spec.targets_length} targets), random ids "
        f"(seed {spec.seed}), the same batch every step",
        f"- switchrepro: the trainer's jitted step (forward, backward, optax Adafactor); routing groups of "
        f"<= {spec.group_size} tokens over the batch, all E x C slots computed",
        f"- HF: eager PyTorch, train mode, loss.backward(), {hf_ready['optimizer']} (lr {hf_learning_rate():g}, "
        f"relative to parameter scale); Switch routes each sequence as a group and computes only kept tokens",
        f"- timing: per model {rounds} round(s) alternating the tools (order flips each round), each {warmup} "
        f"warm-up + {steps} timed steps; a round's rate = batch / median step; table = median over rounds; "
        "ratio = switchrepro / HF",
        "",
        "| model | params (switchrepro / HF) | switchrepro ex/s | HF ex/s | ratio |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        params = f"{row.ready['jax']['params']:,} / {row.ready['hf']['params']:,}"
        if not row.params_match:
            params += " (MISMATCH)"
        lines.append(f"| {row.name} | {params} | {row.rate('jax'):.1f} | {row.rate('hf'):.1f} | {row.ratio:.2f} |")
    lines += ["", "| model | switchrepro rounds (ex/s) | HF rounds (ex/s) | loss at step 1 (switchrepro / HF) | "
              "capacity switchrepro: groups x tokens, C (enc; dec) | capacity HF: per sequence (enc; dec) | "
              "HF attention |",
              "|---|---|---|---|---|---|---|"]
    for row in rows:
        rounds_text = {t: ", ".join(f"{r:.1f}" for r in row.rates[t]) for t in ("jax", "hf")}
        loss = f"{row.ready['jax']['first_loss']:.3f} / {row.ready['hf']['first_loss']:.3f}"
        if row.capacity:
            o, h = row.capacity["switchrepro"], row.capacity["hf"]
            ours = (f"{o['encoder_groups']} x {o['encoder_group_tokens']}, {o['encoder_capacity']}; "
                    f"{o['decoder_groups']} x {o['decoder_group_tokens']}, {o['decoder_capacity']}")
            hf = f"{h['encoder_capacity']}; {h['decoder_capacity']}"
        else:
            ours = hf = "-"
        lines.append(f"| {row.name} | {rounds_text['jax']} | {rounds_text['hf']} | {loss} | {ours} | {hf} | "
                     f"{row.ready['hf']['attention']} |")
    mismatched = [row.name for row in rows if not row.params_match]
    if mismatched:
        lines += ["", f"Parameter counts differ for {', '.join(mismatched)}: the two tools do not train the same "
                      "model, so these ratios compare different work."]
    return "\n".join(lines) + "\n"


def run_peer_bench(spec: PeerSpec, experts: Sequence[int], steps: int = 10, warmup: int = 3, rounds: int = 3,
                   threads: Optional[int] = None, echo: Callable[[str], None] = print) -> str:
    """Time the dense T5 and a Switch model per entry of `experts` in both tools; returns the markdown report.

    `threads`: cores (and threads) per tool, default every usable core. Raises ConfigError for impossible
    settings and PeerError when a worker fails.
    """
    spec.validate(experts)
    usable = usable_cores() or list(range(os.cpu_count() or 1))
    threads = threads or len(usable)
    if threads > len(usable):
        raise ConfigError(f"--threads {threads} is more than the {len(usable)} usable cores {usable}; pass at most "
                          f"{len(usable)}")
    cores = usable[:threads]
    rows = []
    for e in [0, *experts]:
        echo(f"{'Switch, %d experts' % e if e else 'T5 dense'}: starting the workers (compiling / building) ...")
        rows.append(time_model(spec, e, steps, warmup, rounds, cores, echo=echo))
        row = rows[-1]
        echo(f"  params switchrepro {row.ready['jax']['params']:,}, HF {row.ready['hf']['params']:,}"
             f"{'' if row.params_match else ' (MISMATCH)'}; median switchrepro {row.rate('jax'):.1f} ex/s, "
             f"HF {row.rate('hf'):.1f} ex/s, ratio {row.ratio:.2f}")
    text = format_report(spec, rows, steps, warmup, rounds, cores)
    echo("")
    echo(text.rstrip("\n"))
    return text
