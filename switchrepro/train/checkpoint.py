"""orbax checkpoints: save every N steps and at the end; restore the newest one that restores.

A crash, a full disk or a copy cut short can leave the newest checkpoint damaged while an older one is
intact. Training then falls back to the newest intact step and replays from there (the batches and keys
are pure functions of the step, so the result equals an uninterrupted run); the damaged step is moved
aside, never deleted. Only when no checkpoint restores is it an error.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Callable

import jax
import orbax.checkpoint as ocp

from switchrepro.quiet import silenced

DAMAGED_DIR = "damaged_checkpoints"  # beside checkpoints/, in the run directory


class CheckpointError(RuntimeError):
    """No checkpoint in a directory can be read as this run's state.

    str(e) is one short line for the user; `detail` holds the full library error for the run's log.
    """

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


def short_reason(e: BaseException, limit: int = 90) -> str:
    """`TypeName: first line`, cut to `limit` characters (tensorstore errors run to kilobytes)."""
    first = str(e).splitlines()[0] if str(e) else ""
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ignore_closed_loop_callbacks() -> None:
    """After a failed restore, tensorstore still completes the other reads it had started: each calls back
    into orbax's already closed asyncio loop ('Event loop is closed', an unraisable exception) and leaves
    futures and tasks whose error nobody reads (logged by asyncio when they are collected). That is hundreds of
    tracebacks on stderr for one damaged checkpoint, all harmless: drop exactly those, keep the rest."""
    previous = sys.unraisablehook
    if not getattr(previous, "switchrepro_filter", False):

        def hook(unraisable):
            e = unraisable.exc_value
            if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
                return
            previous(unraisable)

        hook.switchrepro_filter = True
        sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnreadTensorstoreErrors) for f in asyncio_log.filters):
        asyncio_log.addFilter(_UnreadTensorstoreErrors())


class _UnreadTensorstoreErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (str(record.msg).startswith(("Future exception was never retrieved",
                                                "Task exception was never retrieved"))
                    and error is not None and "tensorstore" in str(error))


def _damage_reported_by_us():
    """orbax logs its own multi-line ERROR for a damaged checkpoint's metadata while listing or restoring
    steps; `restore_latest` reports each damaged step in one line instead, so those records are held back."""
    return silenced(logging.getLogger("absl"))


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        with _damage_reported_by_us():
            self.manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))
        self.manager.wait_until_finished()  # a killed run must never leave a half-written latest step

    def steps(self) -> list[int]:
        """The kept checkpoint steps, oldest first."""
        return sorted(self.manager.all_steps())

    def restore(self, state, step: int):
        """`state` (for its structure, shapes and shardings) restored from checkpoint `step`."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        try:
            with _damage_reported_by_us():
                return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types; the user needs one clear message
            ignore_closed_loop_callbacks()
            raise CheckpointError(f"checkpoint step {step} in {self.directory} does not restore ({short_reason(e)})",
                                  detail=f"{type(e).__name__}: {e}") from e

    def restore_latest(self, state, echo: Callable[[str], None] = print, set_aside: bool = False):
        """`state` restored from the newest checkpoint that restores, or `state` unchanged if there is none.

        Each newer step that fails is reported through `echo` in one line and, with `set_aside`, moved to
        `<run dir>/damaged_checkpoints/` so that training can save that step again. Raises CheckpointError
        when checkpoints exist but none restores (then nothing is moved).
        """
        failures = []
        for step in reversed(self.steps()):
            try:
                restored = self.restore(state, step)
            except CheckpointError as e:
                failures.append((step, e))
                continue
            for bad, e in failures:
                where = f"; moved to {self._set_aside(bad)}" if set_aside else ""
                echo(f"{e}{where}; using step {step}")
            if failures and set_aside:
                with _damage_reported_by_us():
                    self.manager.reload()
            return restored
        if not failures:
            return state
        newest, e = failures[0]
        raise CheckpointError(
            f"no checkpoint in {self.directory} restores (step {newest}: {short_reason(e.__cause__, 60)}); "
            "damaged or of another model: delete it to start over", detail=e.detail)

    def _set_aside(self, step: int) -> Path:
        dest_root = self.directory.parent / DAMAGED_DIR
        dest_root.mkdir(parents=True, exist_ok=True)
        dest, n = dest_root / str(step), 1
        while dest.exists():
            n += 1
            dest = dest_root / f"{step}.{n}"
        shutil.move(str(self.directory / str(step)), dest)
        return dest

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ------------------------------------------------------------------------- exported final parameters


def export_params(path: Path, params, step: int) -> None:
    """Writes `params` (a finished run's final parameters, no optimizer state) to the orbax directory `path`,
    written beside and renamed into place so a reader never sees half of it. Tables commit these under
    results/<scale>/params/ so that a fresh clone fine-tunes or distils without re-training the source."""
    path = Path(path).absolute()
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / "params", params)
        ckptr.wait_until_finished()
    (tmp / "step.txt").write_text(f"{int(step)}\n")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def load_exported_params(path: Path, like):
    """(params, step) from an `export_params` directory; `like` gives the tree, shapes and dtypes."""
    path = Path(path).absolute()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    try:
        with ocp.StandardCheckpointer() as ckptr, _damage_reported_by_us():
            params = ckptr.restore(path / "params", abstract)
        step = int((path / "step.txt").read_text())
    except Exception as e:  # orbax raises many types; the user needs one clear message
        ignore_closed_loop_callbacks()
        raise CheckpointError(f"exported parameters {path} do not restore ({short_reason(e)}); delete that "
                              "directory to re-train its run", detail=f"{type(e).__name__}: {e}") from e
    return params, step
