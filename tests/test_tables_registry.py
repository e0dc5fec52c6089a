"""The table registry (switchrepro.experiments.tables): one module per table, the names, titles and rows
everything else takes from it, and the one-line errors for an unknown table or a misspelt row."""

import ast
import dataclasses
import re
from pathlib import Path

import pandas as pd
import pytest

from switchrepro.config.gin import parse_table, table_files
from switchrepro.experiments import results as RS
from switchrepro.experiments import tables

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE_ORDER = ("table1", "table2", "table3", "table11", "scaling", "table6", "table7", "table4", "table5",
                  "table8", "multilingual", "selective_attention")


def test_names_in_the_makefile_order_and_one_gin_file_each():
    assert tables.NAMES == MAKEFILE_ORDER
    assert sorted(tables.NAMES) == table_files()
    assert sorted(tables.REPORT_ORDER) == sorted(tables.NAMES)
    assert list(tables.TITLES) == list(tables.NAMES)
    for name in tables.NAMES:
        table = tables.get(name)
        assert table.name == name and table.title == tables.TITLES[name]


def test_unknown_table_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"^unknown table 'table99'; known: table1, table2, .*selective_attention$"):
        tables.get("table99")


@pytest.mark.parametrize("name", MAKEFILE_ORDER)
def test_every_row_a_claim_names_is_in_the_gin_spec(name):
    spec = parse_table(name)
    tables.get(name).check_rows([r.name for r in spec.rows])  # raises on a misspelt row


def test_a_misspelt_row_is_a_one_line_error_naming_it_and_the_table():
    spec = parse_table("table1")
    misspelt = dataclasses.replace(spec.rows[0], name="T5-Bsae") if spec.rows[0].name == "T5-Base" else None
    assert misspelt is not None
    with pytest.raises(ValueError, match=r"^table table1: .*: T5-Base; fix") as e:
        tables.get("table1").check_rows([misspelt.name, *(r.name for r in spec.rows[1:])])
    assert "\n" not in str(e.value)
    res = pd.DataFrame({"table": ["table1"], "row": ["T5-Base"], "seed": [0], "final_nlp": [-2.0]})
    with pytest.raises(RS.ResultsError, match="T5-Base"):
        RS.evaluate(dataclasses.replace(spec, rows=spec.rows[1:]), "smoke", res, None)


def test_control_rows_and_plot_aliases():
    assert tables.get("table1").control_rows() == ["T5-Large", "T5-Base"]
    assert tables.get("selective_attention").control_rows() == ["Standard H2", "Standard H1"]
    assert tables.get("table2").control_rows() == []
    assert tables.plot_target("speed-quality") == "table1" and tables.plot_target("scaling") == "scaling"
    assert [t.name for t in tables.calibrated()] == ["scaling", "table1"]


def test_no_results_is_a_one_line_error(tmp_path):
    with pytest.raises(RS.ResultsError, match=r"^no results for table2 at scale smoke in .*: run `switchrepro run "
                                              r"table2 --scale smoke` first$"):
        RS.load_table(parse_table("table2"), "smoke", tmp_path)


def test_no_module_outside_the_tables_names_a_table():
    """Only the per-table modules and the registry name a specific table (issue 44's done-when): no `table ==`
    and no string literal that is a table's name. The corpus readers and builders are left out: the UDHR
    corpus is called "multilingual" too."""
    corpus = [ROOT / "switchrepro" / "data", ROOT / "switchrepro" / "cli" / "data.py"]
    offenders = []
    for path in sorted((ROOT / "switchrepro").rglob("*.py")):
        if (ROOT / "switchrepro" / "experiments" / "tables") in path.parents or \
                any(path == c or c in path.parents for c in corpus):
            continue
        text = path.read_text()
        where = path.relative_to(ROOT)
        offenders += [f"{where}: table ==" for _ in re.findall(r"\btable ==", text)]
        offenders += [f"{where}:{node.lineno}: {node.value!r}" for node in ast.walk(ast.parse(text))
                      if isinstance(node, ast.Constant) and node.value in tables.NAMES]
    assert offenders == []
