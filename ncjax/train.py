"""MLM fine-tuning with the NC3 regulariser: the train state, the one jitted step, and
`train_and_evaluate(config, workdir)`.

The step (`make_train_step`) is a single `jax.jit` over a 1-D ('data',) mesh: the train state
(parameters, AdamW state, NC3 running statistics, step) is replicated and donated, the batch is
sharded on its first axis. Inside it: MLM masks drawn from fold_in(seed, step) (`data.mask_tokens`),
the model run with logits only at the masked positions, loss = MLM cross-entropy (mean over the
masked tokens of the global batch) + alpha * NC3 (`penalty.nc3_penalty`, whose class sums the
compiler all-reduces over the batch before any division), gradients of that loss with respect to
the parameters, global-norm clipping and an AdamW update with a linear schedule.

`train_and_evaluate` does the rest of a run: multi-host start-up, input checks that fail in one
sentence before any compute, the tokenised corpus and sampler, restore-or-initialise from the
latest complete checkpoint (on any device count), the loop with metrics, periodic and final
checkpoints, SIGTERM handling (checkpoint, then return 'preempted'), a stop on a non-finite loss
naming the step and the last good checkpoint, and the Hugging Face export.

Step numbering: the state's `step` counts applied updates. The update that reads global batch s
(masks keyed by s) produces step s + 1; metrics and checkpoints are labelled with that number.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ncjax import checkpoint as ckpt_lib
from ncjax import convert, data, logs, parallel, penalty, weights, words

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
    "model.dtype": tuple(_DTYPES),
    "parallel.distributed": ("auto", "on", "off"),
    "log.progress": ("auto", "on", "off"),
}


@dataclasses.dataclass(frozen=True)
class PenaltySpec:
    """The static penalty settings the step is compiled with (from the config's `penalty` block)."""

    mode: str = "reference"
    alpha: float = 100.0
    label_shift: int = 1
    labels: str = "input"
    features: str = "last_hidden"
    positions: str = "all"
    ema: float = 0.0
    stop_gradient_mu: bool = False

    @classmethod
    def from_config(cls, p: Any) -> "PenaltySpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: p[k] for k in names if k in p})


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Static MLM-masking settings: special ids never masked, [MASK] id, vocabulary size,
    selection probability and the per-sequence cap P on predictions."""

    special_ids: tuple[int, ...]
    mask_id: int
    vocab_size: int
    probability: float
    max_predictions: int


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
    if config.checkpoint.every_steps <= 0 or config.train.log_every_steps <= 0:
        raise ValueError("config checkpoint.every_steps and train.log_every_steps must be positive.")


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


# ----------------------------------------------------------------------------- optimiser


def make_schedule(o: Any, total_steps: int) -> optax.Schedule:
    """Linear warm-up (optional) then linear decay from learning_rate to end_learning_rate."""
    decay = optax.linear_schedule(o.learning_rate, o.end_learning_rate, max(total_steps - o.warmup_steps, 1))
    if o.warmup_steps <= 0:
        return decay
    warm = optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps)
    return optax.join_schedules([warm, decay], [o.warmup_steps])


def make_optimizer(o: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with the schedule."""
    adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    if o.clip_norm and o.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw)
    return adamw


# ----------------------------------------------------------------------------- the step


def _penalty_inputs(model, out, batch, masks, spec: PenaltySpec):
    """(features [B, N, H], labels [B, N], weights [B, N]) that the NC3 statistics read."""
    if spec.positions == "masked":
        if spec.features == "mlm_transform":
            feats = out.mlm_hidden
        else:
            feats = jnp.take_along_axis(out.last_hidden, masks["positions"][..., None], axis=1)
        if spec.labels == "original":
            labels = masks["labels"]
        else:
            labels = jnp.take_along_axis(masks["input_ids"], masks["positions"], axis=1)
        return feats, labels, masks["weights"]
    feats = out.last_hidden if spec.features == "last_hidden" else model.mlm_transform(out.last_hidden)
    ids = masks["input_ids"] if spec.labels == "input" else batch["input_ids"]
    labels, weights = penalty.penalty_targets(ids, batch["attention_mask"], label_shift=spec.label_shift)
    return feats, labels, weights


def _global_norm(tree) -> jax.Array:
    # What clip_by_global_norm measures (before clipping); written out because optax renamed it.
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    mesh: jax.sharding.Mesh,
    seed: int,
    masking: MaskSpec,
    penalty_spec: PenaltySpec,
    class_ids: np.ndarray | None,
    dropout: bool = True,
) -> Callable:
    """The jitted step: (state, batch) -> (state, metrics).

    state: {'step': int32 [], 'params': parameter dict, 'opt_state': AdamW state,
    'penalty': {'sums': [K, H], 'counts': [K]} (only when alpha > 0)}, replicated and donated.
    batch: {'input_ids', 'attention_mask'}: [global_batch, length] int32, sharded on axis 0.
    Differentiated: loss = MLM + alpha * NC3 with respect to state['params'].
    metrics: scalars loss, mlm, nc3, nc3_valid, nc3_classes, grad_norm, lr, masked_tokens, tokens."""
    rep = parallel.replicated(mesh)
    root = jax.random.PRNGKey(seed)
    mask_root, dropout_root = jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)
    use_penalty = penalty_spec.alpha > 0
    if use_penalty:
        slot_table = penalty.make_slot_table(class_ids, masking.vocab_size)
        class_index = jnp.asarray(class_ids, jnp.int32)

    def step_fn(state, batch):
        step = state["step"]
        masks = data.mask_tokens(
            jax.random.fold_in(mask_root, step), batch["input_ids"], batch["attention_mask"],
            special_ids=masking.special_ids, mask_id=masking.mask_id, vocab_size=masking.vocab_size,
            probability=masking.probability, max_predictions=masking.max_predictions,
        )
        dropout_key = jax.random.fold_in(dropout_root, step) if dropout else None

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            out = model(masks["input_ids"], batch["attention_mask"], positions=masks["positions"],
                        dropout_key=dropout_key)
            nll = optax.softmax_cross_entropy_with_integer_labels(out.logits, masks["labels"])  # [B, P]
            num_masked = jnp.sum(masks["weights"])
            mlm = jnp.sum(nll * masks["weights"]) / jnp.maximum(num_masked, 1.0)
            if not use_penalty:
                zero = jnp.zeros((), jnp.float32)
                return mlm, (mlm, None, {"nc3": zero, "nc3_valid": jnp.array(False), "nc3_classes": zero}, num_masked)
            feats, labels, weights = _penalty_inputs(model, out, batch, masks, penalty_spec)
            class_weights = model.word_embeddings()[class_index]  # [K, H]: the gradient reaches W[G]
            r, new_pen, pm = penalty.nc3_penalty(
                state["penalty"], feats, labels, weights, class_weights, slot_table,
                mode=penalty_spec.mode, ema=penalty_spec.ema, stop_gradient_mu=penalty_spec.stop_gradient_mu,
            )
            return mlm + penalty_spec.alpha * r, (mlm, new_pen, pm, num_masked)

        (loss, (mlm, new_pen, pm, num_masked)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {
            "step": step + 1,
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
        }
        if use_penalty:
            new_state["penalty"] = new_pen
        metrics = {
            "loss": loss,
            "mlm": mlm,
            "nc3": pm["nc3"],
            "nc3_valid": pm["nc3_valid"],
            "nc3_classes": pm["nc3_classes"],
            "grad_norm": _global_norm(grads),
            "lr": schedule(step),
            "masked_tokens": num_masked,
            "tokens": jnp.sum(batch["attention_mask"]),
        }
        return new_state, metrics

    batch_sharding = parallel.batch_sharded(mesh)
    return jax.jit(step_fn, in_shardings=(rep, batch_sharding), out_shardings=(rep, rep), donate_argnums=(0,))


def init_state(params: dict, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
               penalty_shape: tuple[int, int] | None) -> dict:
    """The step-0 train state, replicated over the mesh (works across processes: every process
    holds the same host values)."""
    rep = parallel.replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, rep, lambda idx: x[idx])

    state = {"step": put(np.zeros((), np.int32)), "params": jax.tree.map(put, params)}
    state["opt_state"] = jax.jit(tx.init, out_shardings=rep)(state["params"])
    if penalty_shape is not None:
        state["penalty"] = jax.tree.map(put, jax.device_get(penalty.init_state(*penalty_shape)))
    return state


# ----------------------------------------------------------------------------- the run


class _Preemption:
    """SIGTERM -> a flag the loop polls (single-process runs; multi-process runs use JAX's
    preemption sync point so every process stops at the same step)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        log.warning("received signal %d: saving a checkpoint and stopping", signum)
        self.requested = True

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _replace_head(model, head_source: str, config) -> None:
    donor, donor_config = convert.load_model(check_model_source(head_source, "model.head_source"))
    if (donor_config.hidden_size, donor_config.vocab_size) != (config.hidden_size, config.vocab_size):
        raise ValueError(f"model.head_source {head_source} has hidden/vocab size "
                         f"{donor_config.hidden_size}/{donor_config.vocab_size}, but model.path has "
                         f"{config.hidden_size}/{config.vocab_size}; use a head trained for this encoder.")
    nnx.update(model.head, nnx.state(donor.head))
    log.info("MLM head taken from %s", head_source)


def _host_metrics(m: dict) -> dict:
    out = {}
    for k, v in parallel.to_host(m).items():
        v = np.asarray(v)
        out[k] = bool(v) if v.dtype == np.bool_ else (int(v) if k in ("masked_tokens", "tokens", "nc3_classes") else float(v))
    return out


def check_finite(step: int, metrics: dict, checkpointer: ckpt_lib.Checkpointer) -> None:
    """Raises FloatingPointError naming the step and the last complete checkpoint when the
    loss of `step` is NaN or infinite (after letting pending saves finish)."""
    if math.isfinite(metrics["loss"]) and math.isfinite(metrics["mlm"]):
        return
    checkpointer.wait()
    good = checkpointer.latest_step()
    where = (f"the last good checkpoint is {checkpointer.step_path(good)} (step {good})"
             if good is not None else "no checkpoint was written yet")
    raise FloatingPointError(f"the loss became {metrics['loss']} at step {step}; training stopped and {where}.")


def train_and_evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Runs (or resumes) the training described by `config` in `workdir`.

    Writes workdir/config.json, metrics.jsonl, tensorboard/, checkpoints/<step>/ and, at the
    end, export/hf/ (a transformers BertForMaskedLM directory). Returns {'status': 'completed'
    or 'preempted', 'step', 'total_steps', 'checkpoint', 'export', 'metrics' (last logged)}.
    Raises ValueError / FileNotFoundError (bad input, before any compute) or FloatingPointError
    (non-finite loss, naming the step and the last good checkpoint)."""
    workdir = Path(workdir).absolute()
    pc = config.parallel
    parallel.initialize_distributed(pc.distributed, pc.coordinator_address, pc.num_processes, pc.process_id)
    check_config(config)
    spec = data.spec_from_config(config.data)
    data.check_corpus(spec)
    model_src = check_model_source(config.model.path)
    if config.model.head_source:
        check_model_source(config.model.head_source, "model.head_source")
    mesh = parallel.make_mesh(pc.num_devices)
    parallel.check_batch_size(config.train.batch_size, mesh)
    is_main = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)

    tokenizer = convert.load_tokenizer(model_src)
    model_config = convert.load_config(model_src.parent if model_src.is_file() else model_src)
    if len(tokenizer) > model_config.vocab_size:
        raise ValueError(f"the tokenizer of {config.model.path} has {len(tokenizer)} tokens but the model only "
                         f"{model_config.vocab_size}; use the checkpoint's own tokenizer files.")
    penalty_spec = PenaltySpec.from_config(config.penalty)
    class_ids = None
    if penalty_spec.alpha > 0:
        resolution = words.resolve(words.load_word_set(config.penalty.word_set), tokenizer, config.penalty.policy)
        class_ids = np.asarray(resolution.ids, np.int32)
        log.info("%s", resolution.summary())
        if is_main:
            logs.write_json_atomic(workdir / "word_set.json", resolution.to_dict())

    # The tokenised corpus: process 0 builds the cache, the others read it.
    cache_dir = Path(config.data.cache_dir or workdir / "cache")
    arrays = None
    if is_main:
        arrays = data.load_corpus(spec, tokenizer, cache_dir=cache_dir,
                                  position_limit=model_config.max_position_embeddings)
    parallel.sync("ncjax_corpus")
    if arrays is None:
        arrays = data.load_corpus(spec, tokenizer, cache_dir=cache_dir,
                                  position_limit=model_config.max_position_embeddings)
    num_examples, length = arrays["input_ids"].shape
    sampler = data.Sampler(num_examples, config.train.batch_size, config.seed, jax.process_index(),
                           jax.process_count(), drop_remainder=config.data.remainder == "drop",
                           shuffle=config.data.shuffle)
    total_steps = config.train.num_steps or config.train.num_epochs * sampler.steps_per_epoch
    masking = MaskSpec(
        special_ids=tuple(data.special_token_ids(tokenizer)),
        mask_id=int(tokenizer.mask_token_id),
        vocab_size=model_config.vocab_size,
        probability=float(config.data.mlm_probability),
        max_predictions=int(config.data.max_predictions_per_seq
                            or data.default_max_predictions(length, config.data.mlm_probability)),
    )
    log.info("%d examples of %d tokens, %d steps per epoch, %d steps, %d devices, %d processes",
             num_examples, length, sampler.steps_per_epoch, total_steps, mesh.devices.size, jax.process_count())

    model, model_config = convert.load_model(
        model_src, init_missing_head=config.model.init_missing_head, seed=config.seed,
        dtype=_DTYPES[config.model.dtype], remat=config.model.remat,
    )
    if config.model.head_source:
        _replace_head(model, config.model.head_source, model_config)
    graphdef, param_state = nnx.split(model)
    params = nnx.to_pure_dict(param_state)
    del model, param_state

    schedule = make_schedule(config.optim, total_steps)
    tx = make_optimizer(config.optim, schedule)
    step_fn = make_train_step(graphdef, tx, schedule, mesh=mesh, seed=config.seed, masking=masking,
                              penalty_spec=penalty_spec, class_ids=class_ids, dropout=config.model.dropout)
    penalty_shape = (len(class_ids), model_config.hidden_size) if class_ids is not None else None
    state = init_state(params, tx, mesh, penalty_shape)
    del params
    log.info("train state initialised (%d parameters)", sum(x.size for x in jax.tree.leaves(state["params"])))

    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep,
                                         async_save=config.checkpoint.async_save)
    position = 0
    start = checkpointer.latest_step()
    if start is not None:
        state, meta = checkpointer.restore(start, ckpt_lib.abstract_like(state))
        position = int(meta["sampler_position"])
        if meta.get("num_examples") != num_examples:
            log.warning("the corpus now has %d examples, the checkpoint was written with %s; the data order "
                        "after resuming differs from the original run", num_examples, meta.get("num_examples"))
        log.info("resumed from %s (step %d)", checkpointer.step_path(start), start)
    step = int(start or 0)

    if is_main:
        logs.write_json_atomic(workdir / "config.json", json.loads(config.to_json()))
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
        window = {"tokens": 0, "t0": None}

        def settle(item: tuple[int, dict]) -> None:
            """Fetches one step's metrics, stops on a non-finite loss, logs on the interval."""
            nonlocal last_logged
            s, device_metrics = item
            m = _host_metrics(device_metrics)
            check_finite(s, m, checkpointer)
            now = time.perf_counter()
            if window["t0"] is None:  # the first step includes compilation: time from its end
                window["t0"] = now
            else:
                window["tokens"] += m["tokens"]
            if s % config.train.log_every_steps == 0 or s == total_steps:
                elapsed = now - window["t0"]
                m["tokens_per_s"] = window["tokens"] / elapsed if elapsed > 0 and window["tokens"] else 0.0
                window.update(tokens=0, t0=now)
                m["epoch"] = s / sampler.steps_per_epoch
                writer.write(s, m)
                last_logged = {"step": s, **m}
                log.info("step %d: loss %.4f mlm %.4f nc3 %.4f", s, m["loss"], m["mlm"], m["nc3"])
            writer.advance(s)

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
                settle(pending)  # never save a state whose loss is not finite
                pending = None
                checkpointer.save(step, state, meta_for(step, stop and step < total_steps))
                last_saved = step
            if stop and step < total_steps:
                status = "preempted"
                break
        if pending is not None:
            settle(pending)
    if last_saved != step:
        checkpointer.save(step, state, meta_for(step, status == "preempted"))
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
