"""Training a recipe (a debiasing method's loss terms plus NC3): `train_and_evaluate(config, workdir)`.

The jitted step and the train state live in `ncjax.step`, the loss terms in `ncjax.terms`, the
batch schemas in `ncjax.schemas`. `train_and_evaluate` does the rest of a run: multi-host
start-up, input checks that fail in one sentence before any compute, the training arrays of
the config's schema and the sampler, the recipe's terms, restore-or-initialise from the
latest complete checkpoint (on any device count), the loop with metrics, periodic and final
checkpoints, SIGTERM and SIGINT handling (checkpoint, then return 'preempted' or 'interrupted'), a
stop on a non-finite loss or parameters naming the step and the last good checkpoint, and the
Hugging Face export. A work directory trains one config (`ncjax.resume`); a damaged newest
checkpoint is moved aside and the run resumes from the one before (`ncjax.checkpoint`).

Step numbering: the state's `step` counts applied updates. The update that reads global batch s
(masks keyed by s) produces step s + 1; metrics and checkpoints are labelled with that number.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ncjax import checkpoint as ckpt_lib
from ncjax import convert, data, flops, logs, masking, parallel, rng, schemas, weights
from ncjax import model as model_lib
from ncjax import resume
from ncjax import step as step_lib
from ncjax.lock import WorkdirLock
from ncjax import terms as terms_lib

log = logging.getLogger(__name__)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_CHOICES = {
    "penalty.mode": ("reference", "batch"),
    "penalty.policy": ("first_piece", "whole_word"),
    "penalty.labels": ("input", "original"),
    "penalty.features": ("last_hidden", "mlm_transform"),
    "penalty.positions": ("all", "masked"),
    "data.remainder": ("drop", "pad"),
    "data.cda": ("none", "two_sided"),
    "data.padding": ("clean", "attended_mask"),
    "model.dtype": tuple(_DTYPES),
    "model.attention": model_lib.ATTENTION,
    "model.attention_impl": ("",) + model_lib.ATTENTION_IMPL,
    "model.dropout_rng": rng.DROPOUT_RNG,
    "model.remat_policy": tuple(model_lib.REMAT_POLICIES),
    "parallel.distributed": ("auto", "on", "off"),
    "log.progress": ("auto", "on", "off"),
}


# ----------------------------------------------------------------------------- checks


def _get(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check_config(config: Any) -> None:
    """Validates values that need no files or devices; raises ValueError with one sentence."""
    for key, allowed in _CHOICES.items():
        value = _get(config, key)
        if value not in allowed:
            raise ValueError(f"config {key}={value!r} is not one of {', '.join(map(repr, allowed))}.")
    unknown = [t for t in config.loss.terms if t not in terms_lib.available()]
    if unknown:
        raise ValueError(f"config loss.terms names {unknown[0]!r}, which is no module of ncjax/terms; use one of "
                         f"{', '.join(terms_lib.available())}.")
    p = config.penalty
    if p.alpha < 0 or not math.isfinite(p.alpha):
        raise ValueError(f"config penalty.alpha={p.alpha} must be a finite number >= 0.")
    if p.label_shift not in (0, 1):
        raise ValueError(f"config penalty.label_shift={p.label_shift} must be 0 or 1.")
    if p.positions == "masked" and p.label_shift != 0:
        raise ValueError("config penalty.positions='masked' pairs a masked token with itself: set penalty.label_shift=0.")
    if not 0.0 <= p.ema < 1.0:
        raise ValueError(f"config penalty.ema={p.ema} must be in [0, 1).")
    if p.mode == "reference" and p.ema:
        raise ValueError("config penalty.ema applies to penalty.mode='batch' only; set it to 0 for 'reference'.")
    if config.train.batch_size <= 0:
        raise ValueError(f"config train.batch_size={config.train.batch_size} must be positive.")
    if config.train.num_steps < 0 or config.train.num_epochs <= 0 and config.train.num_steps == 0:
        raise ValueError("config train.num_steps must be >= 0, and train.num_epochs > 0 when num_steps is 0.")
    if not 0.0 < config.data.mlm_probability < 1.0:
        raise ValueError(f"config data.mlm_probability={config.data.mlm_probability} must be in (0, 1).")
    if config.optim.learning_rate <= 0:
        raise ValueError(f"config optim.learning_rate={config.optim.learning_rate} must be positive.")
    if config.log.peak_tflops < 0:
        raise ValueError(f"config log.peak_tflops={config.log.peak_tflops} must be >= 0 (0 = from the device table).")
    if config.checkpoint.every_steps <= 0 or config.train.log_every_steps <= 0:
        raise ValueError("config checkpoint.every_steps and train.log_every_steps must be positive.")


def model_options(m: Any) -> dict:
    """The `BertForMaskedLM` options of a config's `model` block."""
    return {
        "attention": m.attention,
        "attention_impl": m.attention_impl or None,
        "scan_layers": m.scan_layers,
        "remat_policy": m.remat_policy,
    }


def check_model_source(path: str, key: str = "model.path") -> Path:
    """Resolves a model source (directory, weight file, 'minilm' or hub id) and checks that it
    holds config.json and weights; raises FileNotFoundError naming the config key otherwise."""
    try:
        resolved = weights.resolve_source(path)
        directory, _ = weights.config_dir_and_weights(resolved)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{key}: {e}") from None
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{key}: {directory} has no config.json; point {key} at a BERT checkpoint directory.")
    return resolved


# ----------------------------------------------------------------------------- the run


class _Preemption:
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


def _model_overrides(m: Any) -> dict[str, float]:
    """Dropout probabilities that replace the checkpoint's (a negative value keeps it)."""
    out = {}
    for key, field in (("hidden_dropout", "hidden_dropout_prob"),
                       ("attention_dropout", "attention_probs_dropout_prob")):
        value = float(m.get(key, -1.0))
        if value >= 1.0:
            raise ValueError(f"config model.{key}={value} must be below 1 (negative: keep the checkpoint's).")
        if value >= 0:
            out[field] = value
    return out


def _replace_head(model, head_source: str, config) -> None:
    donor, donor_config = convert.load_model(check_model_source(head_source, "model.head_source"))
    if (donor_config.hidden_size, donor_config.vocab_size) != (config.hidden_size, config.vocab_size):
        raise ValueError(f"model.head_source {head_source} has hidden/vocab size "
                         f"{donor_config.hidden_size}/{donor_config.vocab_size}, but model.path has "
                         f"{config.hidden_size}/{config.vocab_size}; use a head trained for this encoder.")
    nnx.update(model.head, nnx.state(donor.head))
    log.info("MLM head taken from %s", head_source)


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


def train_and_evaluate(config: Any, workdir: str | Path, *, allow_config_change: str | tuple[str, ...] = ()
                       ) -> dict[str, Any]:
    """Runs (or resumes) the training described by `config` in `workdir`.

    Writes workdir/config.json, metrics.jsonl, tensorboard/, checkpoints/<step>/ and, at the
    end, export/hf/ (a transformers BertForMaskedLM directory). Returns {'status': 'completed',
    'preempted' (SIGTERM) or 'interrupted' (SIGINT; both saved a checkpoint first), 'step',
    'total_steps', 'checkpoint', 'export', 'metrics' (last logged)}.
    Raises ValueError / FileNotFoundError (bad input, before any compute; a config that differs
    from the one that created `workdir`, except for the fields `allow_config_change` names: see
    `ncjax.resume`) or FloatingPointError (non-finite loss or parameters, naming the step and the
    last good checkpoint)."""
    workdir = Path(workdir).absolute()
    pc = config.parallel
    parallel.initialize_distributed(pc.distributed, pc.coordinator_address, pc.num_processes, pc.process_id)
    check_config(config)
    schemas.check(config.data)
    model_src = check_model_source(config.model.path)
    if config.model.head_source:
        check_model_source(config.model.head_source, "model.head_source")
    mesh = parallel.make_mesh(pc.num_devices)
    parallel.check_batch_size(config.train.batch_size, mesh)
    is_main = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    # one run per work directory: a second one stops at once, naming the holder
    with WorkdirLock(workdir, what="training run") if is_main else contextlib.nullcontext():
        resume.check_identity(json.loads(config.to_json()), workdir, allow_config_change, write=is_main)
        return _run(config, workdir, model_src, mesh, is_main)


def _run(config: Any, workdir: Path, model_src: Path, mesh: jax.sharding.Mesh, is_main: bool) -> dict[str, Any]:
    """The body of `train_and_evaluate` once the inputs are checked and the directory is held."""
    tokenizer = convert.load_tokenizer(model_src)
    model_config = convert.load_config(model_src.parent if model_src.is_file() else model_src)
    if len(tokenizer) > model_config.vocab_size:
        raise ValueError(f"the tokenizer of {config.model.path} has {len(tokenizer)} tokens but the model only "
                         f"{model_config.vocab_size}; use the checkpoint's own tokenizer files.")
    # The tokenised corpus: process 0 builds the cache, the others read it.
    cache_dir = Path(config.data.cache_dir or workdir / "cache")
    arrays = None
    if is_main:
        arrays = schemas.load(config.data, tokenizer, cache_dir=cache_dir,
                              position_limit=model_config.max_position_embeddings)
    parallel.sync("ncjax_corpus")
    if arrays is None:
        arrays = schemas.load(config.data, tokenizer, cache_dir=cache_dir,
                              position_limit=model_config.max_position_embeddings)
    num_examples, length = arrays["input_ids"].shape[0], arrays["input_ids"].shape[-1]
    sampler = data.Sampler(num_examples, config.train.batch_size, config.seed, jax.process_index(),
                           jax.process_count(), drop_remainder=config.data.remainder == "drop",
                           shuffle=config.data.shuffle)
    total_steps = config.train.num_steps or config.train.num_epochs * sampler.steps_per_epoch
    log.info("%d examples of %d tokens, %d steps per epoch, %d steps, %d devices, %d processes",
             num_examples, length, sampler.steps_per_epoch, total_steps, mesh.devices.size, jax.process_count())

    model, model_config = convert.load_model(
        model_src, init_missing_head=config.model.init_missing_head, seed=config.seed,
        dtype=_DTYPES[config.model.dtype], remat=config.model.remat, overrides=_model_overrides(config.model),
        **model_options(config.model),
        untie_decoder=config.model.untie_decoder,
    )
    if config.model.head_source:
        _replace_head(model, config.model.head_source, model_config)
    graphdef, param_state = nnx.split(model)
    params = nnx.to_pure_dict(param_state)
    del model, param_state

    setup = terms_lib.Setup(config=config, tokenizer=tokenizer, model_config=model_config, length=length,
                            fields=tuple(arrays), workdir=workdir, is_main=is_main, graphdef=graphdef,
                            params=params)
    loss_terms = terms_lib.build(config, setup)
    del setup
    log.info("loss = %s", " + ".join(f"{t.weight:g} * {t.name}" for t in loss_terms))
    schedule = step_lib.make_schedule(config.optim, total_steps)
    tx = step_lib.make_optimizer(config.optim, schedule)
    step_fn = step_lib.make_train_step(graphdef, tx, schedule, mesh=mesh, seed=config.seed, terms=loss_terms,
                                       dropout=config.model.dropout, dropout_rng=config.model.dropout_rng)
    # model FLOPs of a step (ncjax.flops counts what is computed: the MLM head at P positions a row)
    rows = config.train.batch_size * int(np.prod(arrays["input_ids"].shape[1:-1], dtype=np.int64))
    predictions = int(config.data.max_predictions_per_seq
                      or masking.default_max_predictions(length, config.data.mlm_probability))
    step_flops = flops.train_step_flops(model_config, rows, length, predictions)
    peak = flops.peak_flops(mesh.devices.flat[0].device_kind, config.model.dtype, config.log.peak_tflops)
    state = step_lib.init_state(params, tx, mesh, loss_terms, seed=config.seed)
    del params
    log.info("train state initialised (%d parameters)", sum(x.size for x in jax.tree.leaves(state["params"])))

    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep,
                                         async_save=config.checkpoint.async_save)
    try:
        position = 0
        abstract = ckpt_lib.abstract_like(state)
        found = checkpointer.restore_latest(abstract)
        start = None
        if found is not None:
            start, state, meta = found
            position = int(meta["sampler_position"])
            if meta.get("num_examples") != num_examples:
                log.warning("the corpus now has %d examples, the checkpoint was written with %s; the data order "
                            "after resuming differs from the original run", num_examples, meta.get("num_examples"))
            log.info("resumed from %s (step %d)", checkpointer.step_path(start), start)
        step = int(start or 0)
        progress = {"auto": None, "on": True, "off": False}[config.log.progress]

        def meta_for(s: int, preempted: bool) -> dict:
            return {
                "step": s, "sampler_position": position, "epoch": position / sampler.steps_per_epoch,
                "num_examples": num_examples, "total_steps": total_steps, "preempted": preempted,
                "num_devices": int(mesh.devices.size), "num_processes": jax.process_count(),
                "jax_version": jax.__version__, "config": json.loads(config.to_json()),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }

        last_saved = start
        last_logged: dict = {}
        status = "completed"
        with logs.MetricWriter(workdir, total_steps=total_steps, initial_step=step, enabled=is_main,
                               tensorboard=config.log.tensorboard, progress=progress) as writer, \
                _Preemption() as preemption:
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
                    if peak and window["steps"] and elapsed > 0:
                        m["mfu"] = flops.mfu(step_flops, window["steps"] / elapsed, peak, mesh.devices.size)
                    window.update(tokens=0, steps=0, t0=now)
                    m["epoch"] = s / sampler.steps_per_epoch
                    writer.write(s, m)
                    last_logged = {"step": s, **m}
                    log.info("step %d: %s", s, " ".join(f"{k} {v:.4f}" for k, v in _losses(m).items()))
                writer.advance(s)
                return m

            while step < total_steps:
                local = data.gather_batch(arrays, sampler.indices(position), pad_id=tokenizer.pad_token_id or 0)
                state, device_metrics = step_fn(state, parallel.global_batch(local, mesh))
                step += 1
                position += 1
                if pending is not None:
                    settle(pending)
                pending = (step, device_metrics)
                stop = preemption.requested or checkpointer.reached_preemption(step)
                if step % config.checkpoint.every_steps == 0 or step == total_steps or stop:
                    # never save a state whose loss or parameters are not finite
                    check_finite(step, settle(pending), checkpointer, abstract, params=state["params"])
                    pending = None
                    checkpointer.save(step, state, meta_for(step, stop and step < total_steps))
                    last_saved = step
                if stop and step < total_steps:
                    status = preemption.status
                    break
            if pending is not None:
                settle(pending)
        if last_saved != step:
            checkpointer.save(step, state, meta_for(step, status != "completed"))
    finally:
        # waits for a pending asynchronous save, also when the run stops on an error
        checkpointer.close()

    export = None
    if status == "completed" and config.export.hf:
        export = workdir / "export" / "hf"
        host_params = parallel.to_host(state["params"])
        if is_main:
            model = nnx.merge(graphdef, host_params)
            convert.save_hf(model, model_config, export, tokenizer_src=model_src, overwrite=True)
            log.info("exported %s", export)
        parallel.sync("ncjax_export")
    return {
        "status": status,
        "step": step,
        "total_steps": total_steps,
        "checkpoint": str(checkpointer.step_path(step)),
        "export": str(export) if export else None,
        "metrics": last_logged,
    }
