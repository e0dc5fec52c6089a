"""gin at the edge: gin files and bindings -> the plain dataclasses of `switchrepro.config` (T5X pattern).

The only module that imports gin. gin binds the dataclasses by their class names:

    ModelConfig.d_model = 128
    ModelConfig.moe = @MoeConfig()
    MoeConfig.num_experts = 8
    TrainConfig.steps = 200
    DataConfig.batch_size = 32

and a table's gin file (gin/tables/<name>.gin) binds `TableSpec` (switchrepro.config.tables). The files
are found under `switchrepro.resources.gin_dir()`, so an installed wheel reads its own copy. Bad input (an
unknown file or binding, an impossible value) is a ConfigError whose one line says what to change.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence, Tuple

import gin

from switchrepro import config as C
from switchrepro.config import tables as T
from switchrepro.quiet import silenced
from switchrepro.resources import gin_dir

CONFIG_CLASSES = (C.MoeConfig, C.ModelConfig, C.DataConfig, C.TrainConfig, C.FinetuneConfig, C.DistillConfig)
_registered: dict = {}  # class name -> gin's configurable, registered once per process


def _configurable(name: str):
    """gin's configurable for a config class or "TableSpec", registered on first use (registering at import
    would make importing this module change gin's global registry)."""
    if not _registered:
        for cls in CONFIG_CLASSES:
            _registered[cls.__name__] = gin.external_configurable(cls, name=cls.__name__)
        _registered["TableSpec"] = gin.external_configurable(T.from_gin_values, name="TableSpec")
    return _registered[name]


def _quiet_includes():
    """gin tries each include against the working directory first and logs an ERROR for the miss
    before finding it under gin/; that message is noise, so the root logger is silenced meanwhile."""
    return silenced(logging.getLogger())


def gin_files() -> list[str]:
    """Every gin file shipped, relative to the gin folder (e.g. `models/tiny_switch.gin`)."""
    root = gin_dir()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.gin"))


def resolve_gin_file(name: str) -> Path:
    """A path, or a name under gin/ (e.g. `models/tiny_switch` or `tiny_switch`)."""
    root = gin_dir()
    candidates = [Path(name)]
    for base in (root, root / "models", root / "tables"):
        candidates += [base / name, base / f"{name}.gin"]
    for c in candidates:
        if c.is_file():
            return c
    raise C.ConfigError(f"gin file {name!r} not found; pass a path or one of: {', '.join(gin_files())}")


def _plain(obj):
    """gin's configurable subclasses -> the plain frozen dataclasses (so configs compare and pickle)."""
    if dataclasses.is_dataclass(obj):
        base = next(c for c in type(obj).__mro__ if c.__module__ == C.__name__)
        return base(**{f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    if isinstance(obj, list):
        return tuple(obj)
    return obj


def _bound(name: str) -> bool:
    try:
        return bool(gin.query_parameter(name))
    except ValueError:  # not bound
        return False


def parse_config(gin_files: Sequence[str], bindings: Sequence[str]) -> Tuple[C.ExperimentConfig, str]:
    """Builds the ExperimentConfig from gin files and bindings; returns it with the operative gin text.

    A binding of `FinetuneConfig.pretrained` or `DistillConfig.teacher` (a source run's configuration
    hash, as a table row that starts from or learns from another row binds it) adds that section, so a
    run's saved operative config rebuilds its whole configuration. ConfigError for bad input."""
    _configurable("ModelConfig")
    gin.clear_config()
    gin.add_config_file_search_path(str(gin_dir()))
    files = [str(resolve_gin_file(f)) for f in gin_files]
    try:
        with _quiet_includes():
            gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
        cfg = C.ExperimentConfig(model=_configurable("ModelConfig")(), data=_configurable("DataConfig")(),
                                 train=_configurable("TrainConfig")())
        cfg = _plain(cfg)
        if _bound("FinetuneConfig.pretrained"):
            cfg = dataclasses.replace(cfg, finetune=_plain(_configurable("FinetuneConfig")()))
        if _bound("DistillConfig.teacher"):
            cfg = dataclasses.replace(cfg, distill=_plain(_configurable("DistillConfig")()))
        operative = gin.operative_config_str()
    except (ValueError, TypeError, KeyError, SyntaxError, IOError) as e:
        raise C.ConfigError(f"gin: {str(e).splitlines()[0]}") from e
    cfg.validate()
    return cfg, operative


def table_files() -> list[str]:
    """The table names that have a gin file (gin/tables/<name>.gin; `_`-files are includes)."""
    return sorted(p.stem for p in (gin_dir() / "tables").glob("*.gin") if not p.stem.startswith("_"))


def parse_table(name: str) -> T.TableSpec:
    """Parses gin/tables/<name>.gin into a TableSpec (the gin file alone: `switchrepro.api.table_spec` also
    checks the name against the table registry and the rows against the table's claims)."""
    spec_file = gin_dir() / "tables" / f"{name}.gin"
    if name.startswith("_") or not spec_file.is_file():
        raise C.ConfigError(f"unknown table {name!r}; choose one of: {', '.join(table_files())}")
    table_spec = _configurable("TableSpec")
    gin.clear_config()
    gin.add_config_file_search_path(str(gin_dir()))
    try:
        with _quiet_includes():
            gin.parse_config_file(str(spec_file))
        return table_spec()
    except (ValueError, TypeError, KeyError, SyntaxError, IOError) as e:
        raise C.ConfigError(f"gin/tables/{name}.gin: {str(e).splitlines()[0]}") from e
