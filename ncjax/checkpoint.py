"""A thin wrapper over orbax's `CheckpointManager` for training runs.

A checkpoint at step k holds two items: `state`, the train-state pytree of arrays (parameters,
optimiser state, NC3 running statistics, the step), and `meta`, a JSON object (sampler position,
config, versions, device count). Saves are asynchronous; `wait()` blocks until the last one is
on disk. orbax writes each step into a temporary directory and renames it when complete, so
`latest_step()` only ever names a complete checkpoint, even after a SIGKILL mid-save.

Restores go through an abstract target (`abstract_like`) whose leaves carry the current mesh's
shardings, so a run saved on 8 devices resumes on 1 (or on a pod) unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def abstract_like(tree: Any) -> Any:
    """Tree of `jax.ShapeDtypeStruct` with each array's shape, dtype and sharding."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
    """Saves and restores (state, meta) pairs under `directory`, keeping the last `max_to_keep`."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2, async_save: bool = True):
        if max_to_keep < 1:
            raise ValueError(f"checkpoint.max_to_keep {max_to_keep} must be at least 1.")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            # A killed run can leave a half-written temporary step; remove it on the next start.
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts saving `state` (pytree of jax arrays) and `meta` (JSON-serialisable) at `step`."""
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """(state laid out as `abstract_state` says, meta) of checkpoint `step`."""
        restored = self._manager.restore(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def read_meta(self, step: int) -> dict[str, Any]:
        """Only the JSON metadata of checkpoint `step`."""
        restored = self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def step_path(self, step: int) -> Path:
        return self.directory / str(int(step))

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any process of a multi-process run got a preemption notice
        (JAX's preemption sync point); always False in a single-process run."""
        if jax.process_count() == 1:
            return False
        return bool(self._manager.reached_preemption(int(step)))

    def wait(self) -> None:
        """Blocks until every started save is complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
