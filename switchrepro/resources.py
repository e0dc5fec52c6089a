"""Where the files that ship with switchrepro live: the gin configs and the paper's published numbers.

In the repository they are the top-level `gin/` and `experiments/paper/` folders; a built wheel carries the
same folders as the packages `switchrepro.gin` and `switchrepro.paper` (pyproject.toml maps them), so an
installed copy runs every table. Both are found through the import system (`importlib.util.find_spec`:
they hold no Python, so they are namespace packages, whose `importlib.resources.files` is a multiplexed
path rather than one folder). An editable install
(`make install`) cannot import a mapped folder without an `__init__.py` (setuptools' editable finder looks
for one, and `gin/__init__.py` would shadow gin-config for anyone in the repository root), so there the
folders are read where they stand in the checkout.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PAPER_DIR_ENV = "SWITCHREPRO_PAPER_DIR"


SOURCE_TREE = {"switchrepro.gin": ("gin",), "switchrepro.paper": ("experiments", "paper")}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:  # an editable install: the folder in the checkout
        checkout = Path(__file__).resolve().parents[1].joinpath(*SOURCE_TREE[package])
        if not checkout.is_dir():
            raise RuntimeError(f"switchrepro is installed without {package} (no {checkout} either); "
                               "reinstall it from a wheel or a checkout") from None
        return checkout
    path = Path(next(iter(spec.submodule_search_locations)))
    if not path.is_dir():  # a zipped install: every reader here wants real files
        raise RuntimeError(f"{package} is not a folder on disk ({path}); install switchrepro unzipped")
    return path


def gin_dir() -> Path:
    """The gin configs: `models/*.gin` and `tables/*.gin`."""
    return _package_dir("switchrepro.gin")


def paper_dir() -> Path:
    """`$SWITCHREPRO_PAPER_DIR`, or the shipped paper CSVs (`experiments/paper/` of the source tree)."""
    env = os.environ.get(PAPER_DIR_ENV)
    return Path(env) if env else _package_dir("switchrepro.paper")
