"""The training loop: steps, metrics, checkpoints, and the stops.

`train_steps` runs the jitted step from a start step to the end (or to a stop): it feeds the
sampler's global batches, settles each step's metrics one step late (so the host never waits
for the device), logs on the interval, saves a checkpoint every `checkpoint.every_steps`, at the
end and on a signal, and stops:

- on SIGTERM (preemption) or SIGINT (Ctrl-C): saves a checkpoint and returns 'preempted' or
  'interrupted' (single-process runs; multi-process runs use JAX's preemption sync point so every
  process stops at the same step);
- on a non-finite loss, or parameters that stop being finite before a save (`check_finite`):
  raises FloatingPointError naming the step and the newest checkpoint whose parameters are finite.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ncjax import checkpoint as ckpt_lib
from ncjax import data, flops, logs, parallel

log = logging.getLogger(__name__)


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) -> a flag the loop polls, so the run saves a checkpoint and
    stops (single-process runs; multi-process runs use JAX's preemption sync point so every
    process stops at the same step). `status` is 'preempted' (SIGTERM) or 'interrupted' (SIGINT)."""

    _SIGNALS = {signal.SIGTERM: "preempted", signal.SIGINT: "interrupted"}

    def __init__(self):
        self.requested = False
        self.status = "preempted"
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if not self.requested:
            log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.requested = True
        self.status = self._SIGNALS.get(signum, "preempted")

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self._SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


_COUNTS = ("masked_tokens", "tokens", "nc3_classes")


def _losses(m: dict) -> dict:
    """The total and the per-term losses of a metrics dict."""
    return {k: v for k, v in m.items() if k == "loss" or k.startswith("loss/")}


def _host_metrics(m: dict) -> dict:
    out = {}
    for k, v in parallel.to_host(m).items():
        v = np.asarray(v)
        out[k] = bool(v) if v.dtype == np.bool_ else (int(v) if k in _COUNTS else float(v))
    return out


def check_finite(step: int, metrics: dict, checkpointer: ckpt_lib.Checkpointer, abstract_state: Any = None,
                 params: Any = None) -> None:
    """Raises FloatingPointError naming the step and the newest checkpoint whose parameters are
    finite when the loss of `step` is NaN or infinite, or when `params` (the state about to be
    saved) are not finite (`checkpoint.params_finite`). Pending saves finish first; a checkpoint
    with non-finite parameters is moved aside, so neither the message nor a rerun names it."""
    if all(math.isfinite(v) for v in _losses(metrics).values()):
        if params is None or ckpt_lib.params_finite(params):
            return
        what = f"the parameters stopped being finite (loss {metrics['loss']:.6g})"
    else:
        what = f"the loss became {metrics['loss']}"
    checkpointer.wait()
    found = checkpointer.restore_latest(abstract_state, move_damaged=False)
    good = found[0] if found else None
    where = (f"the last good checkpoint is {checkpointer.step_path(good)} (step {good})"
             if good is not None else "no checkpoint was written yet")
    raise FloatingPointError(f"{what} at step {step}; training stopped and {where}.")


@dataclasses.dataclass(frozen=True)
class Run:
    """What the loop reads besides the train state: the run's config, directory, mesh, training
    arrays ({field: [examples, ...]}) and sampler, the jitted step, and the model FLOPs of a step
    with the devices' peak (for the `mfu` metric; peak 0 = unknown)."""

    config: Any
    workdir: Path
    mesh: jax.sharding.Mesh
    arrays: dict
    sampler: data.Sampler
    pad_id: int
    total_steps: int
    step_fn: Callable
    step_flops: float
    peak: float
    is_main: bool
    hooks: tuple["Hook", ...] = ()


@dataclasses.dataclass(frozen=True)
class Hook:
    """Work on the parameters during training (held-out evaluation, periodic exports): `fn(step,
    params)` runs after every `every` steps (0: never on the way) and, with `at_end`, after the last
    step; what it returns (metrics, or None) is logged at that step."""

    every: int
    at_end: bool
    fn: Callable[[int, Any], dict | None]

    def due(self, step: int, total_steps: int) -> bool:
        return (self.at_end and step == total_steps) or (
            bool(self.every) and step % self.every == 0 and step < total_steps)


def _meta(run: Run, step: int, position: int, preempted: bool) -> dict:
    """The JSON saved next to the state of checkpoint `step`."""
    return {
        "step": step, "sampler_position": position, "epoch": position / run.sampler.steps_per_epoch,
        "num_examples": int(run.arrays["input_ids"].shape[0]), "total_steps": run.total_steps,
        "preempted": preempted, "num_devices": int(run.mesh.devices.size), "num_processes": jax.process_count(),
        "jax_version": jax.__version__, "config": json.loads(run.config.to_json()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def train_steps(run: Run, state: Any, checkpointer: ckpt_lib.Checkpointer, start: int | None,
                position: int) -> tuple[str, int, Any, dict]:
    """Trains from step `start` (None: from scratch) and sampler `position` up to
    `run.total_steps` or a stop; returns (status: 'completed', 'preempted' or 'interrupted', the
    last step, the state, the last logged metrics). Raises FloatingPointError (see `check_finite`)."""
    config, total_steps = run.config, run.total_steps
    abstract = ckpt_lib.abstract_like(state)
    step = int(start or 0)
    progress = {"auto": None, "on": True, "off": False}[config.log.progress]
    last_saved = start
    last_logged: dict = {}
    status = "completed"
    with logs.MetricWriter(run.workdir, total_steps=total_steps, initial_step=step, enabled=run.is_main,
                           tensorboard=config.log.tensorboard, progress=progress) as writer, \
            StopSignals() as signals:
        pending: tuple[int, dict] | None = None
        window = {"tokens": 0, "steps": 0, "t0": None}

        def settle(item: tuple[int, dict]) -> dict:
            """Fetches one step's metrics, stops on a non-finite loss, logs on the interval."""
            nonlocal last_logged
            s, device_metrics = item
            m = _host_metrics(device_metrics)
            check_finite(s, m, checkpointer, abstract)
            now = time.perf_counter()
            if window["t0"] is None:  # the first step includes compilation: time from its end
                window["t0"] = now
            else:
                window["tokens"] += m["tokens"]
                window["steps"] += 1
            if s % config.train.log_every_steps == 0 or s in (1, total_steps):
                elapsed = now - window["t0"]
                m["tokens_per_s"] = window["tokens"] / elapsed if elapsed > 0 and window["tokens"] else 0.0
                if run.peak and window["steps"] and elapsed > 0:
                    m["mfu"] = flops.mfu(run.step_flops, window["steps"] / elapsed, run.peak, run.mesh.devices.size)
                window.update(tokens=0, steps=0, t0=now)
                m["epoch"] = s / run.sampler.steps_per_epoch
                writer.write(s, m)
                last_logged = {"step": s, **m}
                log.info("step %d: %s", s, " ".join(f"{k} {v:.4f}" for k, v in _losses(m).items()))
            writer.advance(s)
            return m

        while step < total_steps:
            local = data.gather_batch(run.arrays, run.sampler.indices(position), pad_id=run.pad_id)
            state, device_metrics = run.step_fn(state, parallel.global_batch(local, run.mesh))
            step += 1
            position += 1
            if pending is not None:
                settle(pending)
            pending = (step, device_metrics)
            stop = signals.requested or checkpointer.reached_preemption(step)
            if step % config.checkpoint.every_steps == 0 or step == total_steps or stop:
                # never save a state whose loss or parameters are not finite
                check_finite(step, settle(pending), checkpointer, abstract, params=state["params"])
                pending = None
                checkpointer.save(step, state, _meta(run, step, position, stop and step < total_steps))
                last_saved = step
            for hook in run.hooks:
                if hook.due(step, total_steps):
                    if pending is not None:  # keeps metrics.jsonl in step order
                        settle(pending)
                        pending = None
                    metrics = hook.fn(step, state["params"])
                    if metrics:
                        writer.write(step, metrics)
            if stop and step < total_steps:
                status = signals.status
                break
        if pending is not None:
            settle(pending)
    if last_saved != step:
        checkpointer.save(step, state, _meta(run, step, position, status != "completed"))
    return status, step, state, last_logged
