"""switchrepro: reproduce the Switch Transformer paper (Fedus, Zoph, Shazeer 2022) with JAX/Flax."""

__version__ = "0.1.0"
