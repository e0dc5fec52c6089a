"""The installed environment is consistent: `pip check` is clean and no module has two owners."""

import collections
import importlib.metadata as md
import subprocess
import sys

import pytest

from switchrepro.backends.cpu import native


def test_pip_check_is_clean():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_top_level_module_is_provided_by_two_distributions():
    """A module file (`pkg/__init__.py` or `mod.py`) owned by two distributions means one silently
    overwrote the other (what a plain `pip install t5` does with seqio-nightly). Namespace packages such
    as `google` have no `__init__.py` and are legitimately shared."""
    owners = collections.defaultdict(set)
    for dist in md.distributions():
        for f in dist.files or []:
            parts = f.parts
            if (len(parts) == 2 and parts[1] == "__init__.py") or (len(parts) == 1 and parts[0].endswith(".py")):
                owners[parts[0]].add(dist.metadata["Name"])
    shared = {m: sorted(d) for m, d in owners.items() if len(d) > 1}
    assert shared == {}, shared
    assert owners["seqio"] == {"seqio"} and owners["tensorflow_datasets"] == {"tensorflow-datasets"}


def test_t5_is_the_repaired_wheel_and_nightlies_are_absent():
    assert md.version("t5") == "0.9.4+switchrepro"
    installed = {d.metadata["Name"].lower() for d in md.distributions()}
    assert not installed & {"seqio-nightly", "tfds-nightly", "mesh-tensorflow", "transformers"}


def test_native_helper_is_built_where_a_compiler_is():
    """`make install` builds backends/cpu/native's library when a C++ compiler is on PATH, and it loads."""
    if not native.find_compiler():
        pytest.skip("no C++ compiler here: switchrepro runs without the native helper")
    assert native.LIBRARY.exists(), \
        f"{native.LIBRARY} missing: `make install` runs `python -m switchrepro.backends.cpu.native`"
    assert native.status() == "loaded"
