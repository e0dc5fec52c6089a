"""orbax checkpoints: save every N steps and at the end; restore the latest on start."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint directory exists but cannot be read as this run's state."""


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))
        self.manager.wait_until_finished()  # a killed run must never leave a half-written latest step

    def steps(self) -> list[int]:
        """The kept checkpoint steps, oldest first."""
        return sorted(self.manager.all_steps())

    def restore_latest(self, state):
        """Returns `state` restored from the latest checkpoint, or `state` unchanged if there is none."""
        step = self.manager.latest_step()
        return state if step is None else self.restore(state, step)

    def restore(self, state, step: int):
        """`state` (for its structure, shapes and shardings) restored from checkpoint `step`."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types; the user needs one clear message
            raise CheckpointError(
                f"cannot restore checkpoint step {step} from {self.directory}: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}. The run directory holds a checkpoint of a different "
                f"model or a damaged one: use a new --run-dir or delete {self.directory}.") from e

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
