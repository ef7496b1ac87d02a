"""A thin wrapper over orbax's `CheckpointManager` for training runs.

A checkpoint at step k holds two items: `state`, the train-state pytree of arrays (parameters,
optimiser state, NC3 running statistics, the step), and `meta`, a JSON object (sampler position,
config, versions, device count). Saves are asynchronous; `wait()` blocks until the last one is
on disk. orbax writes each step into a temporary directory and renames it when complete, so
`latest_step()` only ever names a complete checkpoint, even after a SIGKILL mid-save.

Restores go through an abstract target (`abstract_like`) whose leaves carry the current mesh's
shardings, so a run saved on 8 devices resumes on 1 (or on a pod) unchanged.

`restore_latest` resumes from the newest checkpoint that is readable and finite. A step directory
that cannot be read (empty, a truncated or corrupt file, an item missing) is moved aside to
`<step>.damaged-<time>` and one line is logged; one whose parameters are not finite (see
`params_finite`) goes to `<step>.nonfinite-<time>`. Nothing is deleted, and orbax ignores both
names. A checkpoint of another train-state layout (another recipe's loss terms, another model) is
no damage: it is refused in one sentence naming the checkpoint and the difference.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


def abstract_like(tree: Any) -> Any:
    """Tree of `jax.ShapeDtypeStruct` with each array's shape, dtype and sharding."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class CheckpointLayoutError(ValueError):
    """A checkpoint holds a train state of another layout than the run restoring it."""


@jax.jit
def _sum_squares(leaves: list) -> jax.Array:
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)


def params_finite(tree: Any) -> bool:
    """Whether the float32 sum of squares of every floating leaf of `tree` is finite: False for a
    NaN or an infinity, and for values beyond ~1e19, whose next step overflows float32."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    if not leaves:
        return True
    total = _sum_squares(leaves)
    # replicated over every process's devices: any local shard holds the value
    return bool(np.isfinite(np.asarray(total if total.is_fully_addressable else total.addressable_data(0))))


def _key(path: tuple) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{dotted path: (shape, dtype name)} of a tree of arrays or array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_key(p): (tuple(x.shape), np.dtype(x.dtype).name) for p, x in leaves}


def _groups(paths: list[str], other: dict) -> str:
    """The shortest prefixes (two parts at least) of `paths` that `other` has nothing under."""
    out: list[str] = []
    for path in paths:
        parts = path.split(".")
        for i in range(min(2, len(parts)), len(parts) + 1):
            prefix = ".".join(parts[:i])
            if not any(k == prefix or k.startswith(prefix + ".") for k in other):
                break
        if prefix not in out:
            out.append(prefix)
    return ", ".join(out[:3]) + (f" and {len(out) - 3} more" if len(out) > 3 else "")


def layout_difference(stored: dict, current: dict) -> str | None:
    """What differs between two `layout`s, in words (None when they match)."""
    only_stored = sorted(set(stored) - set(current))
    only_current = sorted(set(current) - set(stored))
    changed = sorted(k for k in set(stored) & set(current) if stored[k] != current[k])
    parts = []
    if only_stored:
        parts.append(f"it holds {_groups(only_stored, current)}, which this run's train state lacks")
    if only_current:
        parts.append(f"it lacks {_groups(only_current, stored)}, which this run's train state has")
    if changed:
        k = changed[0]
        (s_shape, s_dtype), (c_shape, c_dtype) = stored[k], current[k]
        parts.append(f"{k} is {s_dtype}{list(s_shape)} there but {c_dtype}{list(c_shape)} here"
                     + (f" ({len(changed) - 1} more arrays differ)" if len(changed) > 1 else ""))
    return "; ".join(parts) or None


def _reason(e: BaseException) -> str:
    """The first line of an exception, short enough for one log line."""
    text = (str(e).strip().splitlines() or [""])[0].split(" See full ")[0]
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
        )  # abstract_state None: the stored layout, on the stored shardings
        return restored["state"], dict(restored["meta"])

    def steps_on_disk(self) -> list[int]:
        """Every step directory, complete or not (orbax's list plus numbered directories), ascending."""
        named = {int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir()} \
            if self.directory.is_dir() else set()
        return sorted(named | set(self.all_steps()))

    def stored_layout(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """The `layout` of checkpoint `step`'s train state, read from its metadata file."""
        handler = ocp.StandardCheckpointHandler()
        try:
            tree = handler.metadata(epath.Path(self.step_path(step) / "state"))
        finally:
            handler.close()
        return layout(getattr(tree, "tree", tree))

    def move_aside(self, step: int, kind: str, why: str) -> Path:
        """Renames checkpoint `step` to `<step>.<kind>-<time>` (never deletes it) and logs one line."""
        source = self.step_path(step)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.directory / f"{int(step)}.{kind}-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"{int(step)}.{kind}-{stamp}-{n}"
        if jax.process_index() == 0:
            os.rename(source, target)
        from ncjax import parallel

        parallel.sync(f"ncjax_move_aside_{int(step)}")
        self._manager.reload()
        log.warning("checkpoint %s %s: moved aside to %s", source, why, target.name)
        return target

    def restore_latest(self, abstract_state: Any | None, *, move_damaged: bool = True
                       ) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, meta) of the newest checkpoint that is readable and whose parameters (the
        'params' subtree, else the whole state) are finite, or None when there is none. Damaged
        step directories are moved aside (`move_damaged`; else only skipped), non-finite ones
        always. Raises CheckpointLayoutError when the newest readable checkpoint holds another
        layout than `abstract_state` (None: restore the stored layout, no check)."""
        for step in reversed(self.steps_on_disk()):
            path = self.step_path(step)
            try:
                stored = self.stored_layout(step)
                if abstract_state is not None:
                    diff = layout_difference(stored, layout(abstract_state))
                    if diff:
                        raise CheckpointLayoutError(
                            f"checkpoint {path} holds a train state of another layout: {diff}; resume it with the "
                            "config it was written with, or use a new --workdir.")
                state, meta = self.restore(step, abstract_state)
            except CheckpointLayoutError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means this step cannot be resumed
                if move_damaged:
                    self.move_aside(step, "damaged", f"cannot be read ({_reason(e)})")
                else:
                    log.warning("checkpoint %s cannot be read (%s); skipped", path, _reason(e))
                continue
            if not params_finite(state.get("params", state) if isinstance(state, dict) else state):
                self.move_aside(step, "nonfinite", "has parameters that are not finite")
                continue
            return step, state, meta
        return None

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
