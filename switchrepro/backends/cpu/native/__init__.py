"""Native helpers for the CPU backend, as XLA FFI handlers in one shared library:

* uninitialized.cc: an output buffer that is not zero-filled (`uninitialized`);
* expert_gemm.cc: grouped float32 matmuls over stacked experts (`expert_gemm.py`), AVX-512 only.

`make install` builds the library with the C++ compiler (`python -m switchrepro.backends.cpu.native`), against
the installed jaxlib's XLA FFI headers, into this folder; its name carries the jaxlib version, so after an upgrade
the old build is ignored until it is rebuilt. Without it (no compiler, another jaxlib, SWITCHREPRO_NATIVE=0, or
a GPU/TPU), `uninitialized` returns zeros and the MoE layer uses XLA's dot: the same numbers up to float32
rounding, slower on CPU.
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
SOURCES = (HERE / "uninitialized.cc", HERE / "expert_gemm.cc")
LIBRARY = HERE / f"_native.jaxlib-{jaxlib.__version__}.so"
TARGET = "switchrepro_uninitialized"
GEMM_TARGETS = {kind: f"switchrepro_expert_gemm_{kind}" for kind in ("nn", "tn", "nt")}
ENABLE_ENV = "SWITCHREPRO_NATIVE"

_state: Optional[str] = None  # None until first use, then a one-line status
_gemm_state: Optional[str] = None


def status() -> str:
    """'loaded' when uninitialized() uses the native buffer on CPU, else why not (one line)."""
    global _state
    if _state is None:
        if os.environ.get(ENABLE_ENV, "1") == "0":
            _state = f"off ({ENABLE_ENV}=0): buffers are zero-filled"
        elif not LIBRARY.exists():
            _state = f"not built for jaxlib {jaxlib.__version__} (run `python -m switchrepro.backends.cpu.native`): " \
                     "buffers are zero-filled"
        else:
            try:
                lib = ctypes.cdll.LoadLibrary(str(LIBRARY))
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.SwitchreproUninitialized), platform="cpu")
                _state = "loaded"
                _register_gemm(lib)
            except (OSError, AttributeError, RuntimeError, ValueError) as e:
                _state = f"failed to load {LIBRARY.name} ({e}): buffers are zero-filled"
    return _state


def _register_gemm(lib) -> None:
    global _gemm_state
    if not lib.SwitchreproExpertGemmSupported():
        _gemm_state = "this CPU has no AVX-512F: experts use XLA's dot"
        return
    for kind, target in GEMM_TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, f"SwitchreproExpertGemm{kind.upper()}")),
                                    platform="cpu")
    _gemm_state = "loaded"


def gemm_status() -> str:
    """'loaded' when the grouped expert matmuls of expert_gemm.cc can run on this CPU, else why not (one line)."""
    if status() != "loaded":
        return f"library not loaded: experts use XLA's dot ({status().split(':')[0]})"
    return _gemm_state or "not registered: experts use XLA's dot"


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


def build(compiler: Optional[str] = None, library: Path = LIBRARY, flags: Sequence[str] = ()) -> str:
    """Compile SOURCES into `library` (extra compiler `flags` for tests); returns what happened (one line).
    Raises only on a failed compilation with an available compiler."""
    compiler = compiler or find_compiler()
    if not compiler:
        return "no C++ compiler found (set CXX or install g++): switchrepro runs without it, zero-filling buffers"
    if library == LIBRARY:
        for old in [*HERE.glob("_native.*.so"), *HERE.glob("_uninitialized.*.so")]:  # the latter: before 2026-12-06
            if old != LIBRARY:
                old.unlink()
    # -O3: the matmul micro-kernel's accumulators must stay in registers (fully unrolled loops).
    cmd = [compiler, "-O3", "-shared", "-fPIC", "-std=c++17", "-w", f"-I{jax.ffi.include_dir()}", *flags,
           *map(str, SOURCES), "-o", str(library)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    root = HERE.parents[3]  # the checkout (or site-packages) that holds switchrepro/
    where = library.relative_to(root) if library.is_relative_to(root) else library
    return f"built {where} with {compiler}"


def main() -> int:
    try:
        print(f"switchrepro.backends.cpu.native: {build()}")
    except RuntimeError as e:  # the package works without the library; say so, do not fail the install
        print(f"switchrepro.backends.cpu.native: warning: {e}\nswitchrepro runs without it, zero-filling buffers",
              file=sys.stderr)
    return 0
