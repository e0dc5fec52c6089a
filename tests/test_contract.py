"""What the restructuring of issue 44 must not change: the CLI's commands and flags, the gin file names, and
the config hash of every committed run (a fresh clone reuses the committed logs only while their hashes hold).

The literals below were read off the CLI and gin/ at d0d069e (before the restructuring). A command or flag
may be added (listed in ADDED); none may disappear or be renamed.
"""

from pathlib import Path

import click

from switchrepro import api, resources
from switchrepro.cli import main
from switchrepro.config.store import config_hash

COMMANDS_AT_D0D069E = {
    "bench attention": ["--batch-size", "--lengths", "--output", "--pairs", "--warmup"],
    "bench moe": ["--experts", "--mesh", "--output", "--pairs", "--repeats", "--tokens", "--whole-model-steps"],
    "bench peer": ["--batch-size", "--capacity-factor", "--d-ff", "--d-kv", "--d-model", "--experts",
                   "--group-size", "--hf-optimizer", "--inputs-length", "--num-heads", "--num-layers", "--output",
                   "--rounds", "--steps", "--targets-length", "--threads", "--vocab-size", "--warmup"],
    "bench table": ["--gin", "--output", "--results-dir", "--rounds", "--rows", "--save", "--scale", "--steps",
                    "TABLE"],
    "data build": ["--only", "--out-dir", "--raw-dir"],
    "data info": [],
    "distill": ["--gin", "--gin-file", "--init-from-teacher/--no-init-from-teacher", "--no-progress", "--run-dir",
                "--teacher-run", "--teacher-weight", "--temperature", "--tfds-data-dir"],
    "eval": ["--eval-examples", "--run-dir"],
    "finetune": ["--gin", "--gin-file", "--no-progress", "--pretrained-run", "--run-dir", "--tfds-data-dir"],
    "inspect": ["--examples", "--run-dir", "--steps"],
    "plot": ["--results-dir", "--scale", "WHAT"],
    "report": ["--results-dir", "--scale"],
    "run": ["--collect-only", "--coordinator", "--distributed", "--dry-run", "--gin", "--mesh", "--num-processes",
            "--process-id", "--results-dir", "--rows", "--runs-dir", "--scale", "--seeds", "--tfds-data-dir",
            "--workers", "TABLE"],
    "train": ["--coordinator", "--distributed", "--gin", "--gin-file", "--mesh", "--no-progress", "--num-processes",
              "--process-id", "--run-dir", "--tfds-data-dir"],
}
# Added since: a resume that would take another expert path (see switchrepro/backends) stops unless allowed.
ADDED = {command: ["--allow-expert-path-change"] for command in ("train", "distill", "finetune", "run")}

GIN_MODELS = ["mini_dense", "mini_dense_plus", "mini_switch", "mini_switch_plus", "mini_wide", "switch_base",
              "switch_base_plus", "switch_c", "switch_large", "switch_xxl", "t5_base", "t5_large", "tiny_dense",
              "tiny_large", "tiny_moe_top2", "tiny_noisy_topk", "tiny_switch", "tiny_switch_128", "tiny_switch_plus"]
GIN_TABLES = ["_finetune", "_scales", "multilingual", "scaling", "selective_attention", "table1", "table11", "table2",
              "table3", "table4", "table5", "table6", "table7", "table8"]


def _commands(cmd, prefix=()):
    out = {}
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            out.update(_commands(sub, prefix + (name,)))
    else:
        out[" ".join(prefix)] = sorted("/".join(sorted(p.opts + p.secondary_opts)) if isinstance(p, click.Option)
                                       else p.name.upper() for p in cmd.params)
    return out


def test_every_command_and_flag_of_d0d069e_is_still_there():
    now = _commands(main)
    for command, flags in COMMANDS_AT_D0D069E.items():
        assert command in now, f"command `switchrepro {command}` is gone"
        assert sorted(set(now[command]) - set(ADDED.get(command, []))) == flags, command
    assert set(now) == set(COMMANDS_AT_D0D069E)


def test_added_flags_are_there():
    now = _commands(main)
    for command, flags in ADDED.items():
        assert set(flags) <= set(now[command]), command


def test_gin_file_names():
    gin = resources.gin_dir()
    assert sorted(p.stem for p in (gin / "models").glob("*.gin")) == GIN_MODELS
    assert sorted(p.stem for p in (gin / "tables").glob("*.gin")) == GIN_TABLES


def test_every_committed_run_keeps_its_config_hash():
    # Each committed log's operative gin config rebuilds the configuration it trained; its hash is the suffix
    # of the run's directory name, which is how a fresh clone finds the log instead of retraining it.
    repo = Path(__file__).resolve().parents[1]
    saved = sorted((repo / "results").glob("*/logs/**/config.gin"))
    assert len(saved) >= 300
    hashes = [(p.parent, config_hash(api.parse_config([str(p)])[0])) for p in saved]
    wrong = [str(run_dir) for run_dir, h in hashes if not run_dir.name.endswith("-" + h)]
    assert wrong == []
