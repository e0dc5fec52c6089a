"""A configuration on disk: its stable hash, its config.json, and the run directory that holds it.

A run directory is keyed by `config_hash`, and committed runs under results/ are reused by that hash, so
the hash of every configuration must never change: options added after runs were committed are left out
where they hold their neutral value (`without_neutral_additions`), and keys that record how a run was
computed rather than what it computes (the trainer's resolved "expert_path") are not part of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import sys
from pathlib import Path

from switchrepro.config import (
    ConfigError,
    DataConfig,
    DistillConfig,
    ExperimentConfig,
    FinetuneConfig,
    ModelConfig,
    MoeConfig,
    TrainConfig,
    to_dict,
)

__all__ = ["RECORDED_KEYS", "config_from_dict", "config_hash", "load_run_config", "prepare_run_dir", "read_json",
           "same_configuration", "to_dict", "without_neutral_additions"]

# Top-level keys of a run's config.json that the trainer records beside the configuration (how the run was
# computed on this host, e.g. the resolved MoE expert path): not options, so neither hashed nor compared.
RECORDED_KEYS = ("expert_path",)

_ADDED_LATER = (("train", "cooldown_steps", 0), ("model.moe", "grouped_matmul", "auto"), ("", "distill", None),
                ("", "finetune", None), ("model", "attention", "standard"),
                ("model", "architecture", "encoder_decoder"), ("model.moe", "expert_matmul", "auto"))


def without_neutral_additions(d: dict) -> dict:
    """A config dict without the options added after runs were committed, where they hold their
    neutral value: old runs keep their keys, and their saved config.json still matches."""
    d = json.loads(json.dumps(d))
    for section, name, neutral in _ADDED_LATER:
        part = d
        for key in filter(None, section.split(".")):  # "" is the top level
            part = part.get(key) or {}  # model.moe is None in a dense model
        if name in part and part[name] == neutral:
            part.pop(name)
    return d


def config_hash(cfg: ExperimentConfig) -> str:
    """A stable hash of everything that determines a run's metrics (progress-bar flags excluded)."""
    d = dataclasses.asdict(cfg)
    d["train"].pop("progress", None)
    return hashlib.sha256(json.dumps(without_neutral_additions(d), sort_keys=True).encode()).hexdigest()[:10]


def _options(d: dict) -> dict:
    """A saved config.json's configuration: the dict without the RECORDED_KEYS."""
    return {k: v for k, v in d.items() if k not in RECORDED_KEYS}


def config_from_dict(d: dict) -> ExperimentConfig:
    """The ExperimentConfig of a saved config.json (`to_dict`'s form; RECORDED_KEYS are ignored)."""
    d = _options(d)
    model = dict(d["model"])
    if model.get("moe") is not None:
        model["moe"] = MoeConfig(**model["moe"])
    for k in ("encoder_sparse_layers", "decoder_sparse_layers"):
        if model.get(k) is not None:
            model[k] = tuple(model[k])
    distill, finetune = d.get("distill"), d.get("finetune")
    return ExperimentConfig(model=ModelConfig(**model), data=DataConfig(**d["data"]), train=TrainConfig(**d["train"]),
                            distill=DistillConfig(**distill) if distill is not None else None,
                            finetune=FinetuneConfig(**finetune) if finetune is not None else None)


def read_json(path: Path, what: str):
    """`path`'s JSON; ConfigError (one line naming the file) if it is damaged."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is damaged ({what} is not valid JSON: {e.msg} at line {e.lineno}); "
                          "restore it from a copy or delete it") from None


def same_configuration(saved: dict, cfg: ExperimentConfig) -> bool:
    """Whether a saved config.json holds `cfg` (options added since, at their neutral value, and the
    RECORDED_KEYS aside)."""
    return without_neutral_additions(_options(saved)) == without_neutral_additions(to_dict(cfg))


def load_run_config(run_dir: Path) -> ExperimentConfig:
    """The configuration a run directory was trained with (its config.json); ConfigError if there is none."""
    saved = Path(run_dir) / "config.json"
    if not saved.exists():
        raise ConfigError(f"{run_dir} has no config.json: is it a switchrepro run directory?")
    try:
        return config_from_dict(read_json(saved, "the run's configuration"))
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{saved} is not a switchrepro run configuration ({type(e).__name__}: {e}); "
                          "restore it from a copy") from None


def prepare_run_dir(cfg: ExperimentConfig, operative: str, run_dir: Path, command=None) -> None:
    """Refuses a run directory that holds another configuration (ConfigError); saves config.json, the
    operative gin config and the command line (`command`, a list of words; default: this process's)."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.json"
    as_dict = to_dict(cfg)
    previous = read_json(saved, "the run's configuration") if saved.exists() else None
    if previous is not None and not same_configuration(previous, cfg):
        raise ConfigError(f"{run_dir} holds a run with a different configuration (see {saved}); "
                          "use a new --run-dir or delete that one")
    # what the trainer recorded there (e.g. the expert path) stays: a resume is checked against it
    kept = {k: previous[k] for k in RECORDED_KEYS if previous is not None and k in previous}
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({**as_dict, **kept}, indent=2, sort_keys=True) + "\n")
    (run_dir / "config.gin").write_text(operative)
    words = list(command) if command is not None else ["switchrepro"] + sys.argv[1:]
    (run_dir / "command.txt").write_text(shlex.join(words) + "\n")  # copy-paste runnable
