"""Native helpers for the CPU backend: an uninitialised output buffer (uninitialized.cc).

`make install` builds the shared library with the C++ compiler (`python -m switchrepro.native`), against the
installed jaxlib's XLA FFI headers, into this folder; its name carries the jaxlib version, so after an upgrade
the old build is ignored until it is rebuilt. Without it (no compiler, another jaxlib, SWITCHREPRO_NATIVE=0, or
a GPU/TPU), `uninitialized` returns zeros instead: the same numbers, a little slower on CPU.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import jaxlib

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "uninitialized.cc"
LIBRARY = HERE / f"_uninitialized.jaxlib-{jaxlib.__version__}.so"
TARGET = "switchrepro_uninitialized"
ENABLE_ENV = "SWITCHREPRO_NATIVE"

_state: Optional[str] = None  # None until first use, then a one-line status


def status() -> str:
    """'loaded' when uninitialized() uses the native buffer on CPU, else why not (one line)."""
    global _state
    if _state is None:
        if os.environ.get(ENABLE_ENV, "1") == "0":
            _state = f"off ({ENABLE_ENV}=0): buffers are zero-filled"
        elif not LIBRARY.exists():
            _state = f"not built for jaxlib {jaxlib.__version__} (run `python -m switchrepro.native`): " \
                     "buffers are zero-filled"
        else:
            try:
                lib = ctypes.cdll.LoadLibrary(str(LIBRARY))
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.SwitchreproUninitialized), platform="cpu")
                _state = "loaded"
            except (OSError, AttributeError, RuntimeError, ValueError) as e:
                _state = f"failed to load {LIBRARY.name} ({e}): buffers are zero-filled"
    return _state


def uninitialized(shape: Sequence[int], dtype) -> jax.Array:
    """An array of `shape` and `dtype` whose contents are undefined on CPU (zeros elsewhere, or without the
    library). Only for buffers that the caller overwrites completely before reading."""
    shape = tuple(int(n) for n in shape)
    if status() != "loaded":
        return jnp.zeros(shape, dtype)
    # has_side_effect keeps XLA from merging two such buffers of the same shape into one (CSE), which would
    # then need a copy wherever both are written.
    native = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(shape, dtype), has_side_effect=True)
    return jax.lax.platform_dependent(cpu=native, default=lambda: jnp.zeros(shape, dtype))


def find_compiler() -> Optional[str]:
    """The C++ compiler `build` uses: $CXX, else the first of c++, g++, clang++ on PATH; None if there is none."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def build(compiler: Optional[str] = None) -> str:
    """Compile uninitialized.cc into LIBRARY; returns what happened (one line). Raises only on a failed
    compilation with an available compiler."""
    compiler = compiler or find_compiler()
    if not compiler:
        return "no C++ compiler found (set CXX or install g++): switchrepro runs without it, zero-filling buffers"
    for old in HERE.glob("_uninitialized.*.so"):
        if old != LIBRARY:
            old.unlink()
    cmd = [compiler, "-O2", "-shared", "-fPIC", "-std=c++17", "-w", f"-I{jax.ffi.include_dir()}", str(SOURCE),
           "-o", str(LIBRARY)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    return f"built {LIBRARY.relative_to(HERE.parent.parent)} with {compiler}"


def main() -> int:
    try:
        print(f"switchrepro.native: {build()}")
    except RuntimeError as e:  # the package works without the library; say so, do not fail the install
        print(f"switchrepro.native: warning: {e}\nswitchrepro runs without it, zero-filling buffers", file=sys.stderr)
    return 0
