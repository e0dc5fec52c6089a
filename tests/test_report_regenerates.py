"""REPORT.md is generated from the committed logs alone (issue 44, item 7): regenerating it from the saved
tables, notes and calibration regimes of results/mini gives the committed file, byte for byte."""

import re
import shutil
from pathlib import Path

from switchrepro.config.gin import parse_table
from switchrepro.experiments import tables
from switchrepro.experiments.results import write_report

MINI = Path(__file__).resolve().parents[1] / "results" / "mini"


def test_report_regenerates_from_the_committed_results(tmp_path):
    # The saved tables, notes and calibration regimes; not the training logs, checkpoints or plots.
    shutil.copytree(MINI, tmp_path / "mini", ignore=shutil.ignore_patterns("logs", "params", "plots", "REPORT.md"))
    specs = {name: parse_table(name) for name in tables.NAMES}
    path, written = write_report("mini", tmp_path, specs, render=False)  # plots are linked, not drawn
    assert written == list(tables.REPORT_ORDER)
    assert not (tmp_path / "mini" / "plots").exists()
    committed = (MINI / "REPORT.md").read_text()
    assert path.read_text() == committed, ("results/mini/REPORT.md is not what the code generates from "
                                           "results/mini: regenerate it with `switchrepro report --scale mini`")


def test_report_links_only_committed_plots():
    links = re.findall(r"\]\((plots/[^)]+)\)", (MINI / "REPORT.md").read_text())
    assert links and all((MINI / link).is_file() for link in links)
