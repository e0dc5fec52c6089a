"""tools/check_imports.py (`make lint`) on tiny packages: a cycle, an import inside a function and a private
name taken across modules are each found, on one line each, and a clean package passes."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKER = REPO / "tools" / "check_imports.py"


def _package(root: Path, files: dict) -> Path:
    pkg = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


def _check(pkg: Path):
    proc = subprocess.run([sys.executable, str(CHECKER), str(pkg)], capture_output=True, text=True, cwd=pkg.parent)
    return proc.returncode, proc.stdout.strip().splitlines()


def test_a_clean_package_passes(tmp_path):
    pkg = _package(tmp_path, {
        "low.py": "import json\n\ndef public():\n    return json.dumps(1)\n",
        "high.py": "from pkg.low import public\n\n\ndef f():\n    import tensorflow  # allowed: lazy on purpose\n"
                   "    return public(), tensorflow\n",
        "sub/__init__.py": "from pkg.sub.leaf import x\n",  # a package re-exporting its child: not a cycle
        "sub/leaf.py": "from pkg.sub import helper\nx = 1\n",
        "sub/helper.py": "y = 2\n",
    })
    code, lines = _check(pkg)
    assert code == 0, lines
    assert lines == ["check_imports: 0 cycle(s), 0 import(s) inside functions, 0 private name(s) across modules"]


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from pkg.a import thing\n    return thing\n",
        "c.py": "x = 1\n",
    })
    code, lines = _check(pkg)
    assert code == 1
    assert "cycle: pkg.a pkg.b" in lines
    assert any(line.startswith("pkg/b.py:2: import inside a function: pkg.a.thing") for line in lines)


def test_an_import_inside_a_function_is_found_unless_allowed(tmp_path):
    pkg = _package(tmp_path, {
        "m.py": ("def f():\n    import json\n    return json\n\n\n"
                 "def g():\n    import seqio\n    from t5.data import glue_utils\n    return seqio, glue_utils\n\n\n"
                 "class C:\n    def method(self):\n        import numpy as np\n        return np\n"),
    })
    code, lines = _check(pkg)
    assert code == 1
    found = [line for line in lines if "import inside a function" in line]
    assert [line.split(": import")[0] for line in found] == ["pkg/m.py:2", "pkg/m.py:14"]  # not seqio, not t5
    assert "json" in found[0] and "numpy" in found[1]


def test_a_private_name_across_modules_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "helpers.py": "def _hidden():\n    return 1\n\n\ndef __dunder__():\n    return 2\n",
        "user.py": "from pkg.helpers import _hidden\n",
        "other.py": "from pkg import helpers\n\nvalue = helpers._hidden()\nfine = helpers.__dunder__()\n",
        "own.py": "def _mine():\n    return 1\n\n\nvalue = _mine()\n",  # private within its own module: fine
    })
    code, lines = _check(pkg)
    assert code == 1
    private = [line for line in lines[:-1] if "private name" in line]
    assert private == ["pkg/other.py:3: private name _hidden used from pkg.helpers (make it public or move it)",
                       "pkg/user.py:1: private name _hidden imported from pkg.helpers (make it public or move it)"]
    assert lines[-1] == "check_imports: 0 cycle(s), 0 import(s) inside functions, 2 private name(s) across modules"


def test_a_folder_that_is_not_a_package_is_refused_in_one_line(tmp_path):
    code, lines = _check(tmp_path)
    assert code == 2 and len(lines) == 1 and "not a package directory" in lines[0]
