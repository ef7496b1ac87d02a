"""Process-0 metric writers: `metrics.jsonl` always, TensorBoard when tensorboardX is installed,
and a tqdm progress bar when stderr is a terminal. Other processes get a writer that does nothing.

`metrics.jsonl` holds one JSON object per logged step (`{"step": 10, "loss": ..., ...}`). When
a run resumes from step k, lines with step > k (written after the checkpoint the run resumed
from) are dropped first, so the file always describes one consistent trajectory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ncjax import files

log = logging.getLogger(__name__)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`ncjax.files.write_text` (atomic, the user's umask)."""
    files.write_text(path, text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """`ncjax.files.write_json` with sorted keys (strict JSON: a NaN or infinity becomes null)."""
    files.write_json(path, obj, sort_keys=True)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl` file, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    records = read_metrics(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) == len(records):
        return
    files.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _clean(value: Any) -> Any:
    # JSON has no NaN/Inf; write them as strings so the file stays valid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricWriter:
    """Writes scalar metrics for one run. Use as a context manager, or call `close()`.

    workdir: run directory; total_steps: for the progress bar; initial_step: the step the run
    starts (or resumes) from; enabled: False on every process but 0; tensorboard: write
    `workdir/tensorboard/` events if tensorboardX is importable; progress: None = a tqdm bar
    only when stderr is a terminal."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        total_steps: int,
        initial_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool | None = None,
    ):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, initial_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                log.info("tensorboardX is not installed: metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=initial_step or None)
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends one record (flushed at once, so a killed run keeps what it logged)."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float, bool)):
                    self._tb.add_scalar(f"train/{k}", float(v), int(step))
        if self._bar is not None:
            shown = {k: v for k, v in metrics.items() if k == "loss" or k.startswith("loss/")}
            self._bar.set_postfix({k: f"{float(v):.4g}" for k, v in shown.items()}, refresh=False)

    def advance(self, step: int) -> None:
        """Moves the progress bar to `step` (completed steps)."""
        if self._bar is not None:
            self._bar.update(int(step) - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
