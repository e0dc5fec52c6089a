"""Only the package list lives here (everything else is in pyproject.toml): the code under switchrepro/, plus
the top-level gin/ and experiments/paper/ folders shipped as switchrepro.gin and switchrepro.paper."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["switchrepro", "switchrepro.*"]) + ["switchrepro.gin", "switchrepro.paper"])
