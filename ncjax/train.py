"""Training a recipe (a debiasing method's loss terms plus NC3): `train_and_evaluate(config, workdir)`.

The jitted step and the train state live in `ncjax.step`, the loss terms in `ncjax.terms`, the
batch schemas in `ncjax.schemas`. `train_and_evaluate` does the rest of a run: multi-host
start-up, input checks that fail in one sentence before any compute, the run's identity (a work
directory trains one config: `ncjax.resume`), the training arrays of the config's schema and the
sampler, the recipe's terms, restore-or-initialise from the newest readable checkpoint (on any
device count; damaged ones are moved aside: `ncjax.checkpoint`), the loop (`ncjax.loop`: metrics,
periodic and final checkpoints, SIGTERM and SIGINT, the stop on non-finite values), and the
Hugging Face export.

Step numbering: the state's `step` counts applied updates. The update that reads global batch s
(masks keyed by s) produces step s + 1; metrics and checkpoints are labelled with that number.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ncjax import accuracy
from ncjax import checkpoint as ckpt_lib
from ncjax import convert, data, flops, loop, masking, parallel, rng, schemas, weights
from ncjax import model as model_lib
from ncjax import resume, snapshot
from ncjax import step as step_lib
from ncjax.lock import WorkdirLock
from ncjax.loop import check_finite  # noqa: F401  (part of this module's interface)
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
    if config.export.get("every_steps", 0) < 0:
        raise ValueError(f"config export.every_steps={config.export.every_steps} must be >= 0 (0: export at the end only).")
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
    sizes = lambda c: (c.hidden_size, c.head_size, c.vocab_size)  # noqa: E731
    if sizes(donor_config) != sizes(config):
        raise ValueError(f"model.head_source {head_source} has hidden/head/vocab size "
                         f"{'/'.join(map(str, sizes(donor_config)))}, but model.path has "
                         f"{'/'.join(map(str, sizes(config)))}; use a head trained for this encoder.")
    nnx.update(model.head, nnx.state(donor.head))
    log.info("MLM head taken from %s", head_source)


def _export_hf(graphdef, params, model_config, model_src: Path, is_main: bool, *destinations: Path) -> None:
    """Writes the masked LM (graphdef, params) as a transformers directory to each destination
    (atomically, replacing it); every process takes part, process 0 writes."""
    host_params = parallel.to_host(params)
    if is_main:
        model = nnx.merge(graphdef, host_params)
        for dst in destinations:
            convert.save_hf(model, model_config, dst, tokenizer_src=model_src, overwrite=True)
            log.info("exported %s", dst)
    parallel.sync("ncjax_export")


def _hooks(config: Any, workdir: Path, tokenizer, model_config, graphdef, length: int, model_src: Path,
           is_main: bool) -> tuple[loop.Hook, ...]:
    """The held-out evaluation (`heldout` block) and the periodic exports (`export.every_steps`:
    workdir/export/step_<N>/hf) of a run."""
    hooks = []
    evaluate = _heldout_evaluator(config, workdir, tokenizer, model_config, graphdef, length)
    if evaluate is not None:
        hooks.append(loop.Hook(config.heldout.every_steps, True, lambda step, params: evaluate(params)))
    every = int(config.export.get("every_steps", 0))
    if every and config.export.hf:
        def export(step: int, params) -> None:
            _export_hf(graphdef, params, model_config, model_src, is_main, workdir / "export" / f"step_{step}" / "hf")

        hooks.append(loop.Hook(every, False, export))
    return tuple(hooks)


def _heldout_evaluator(config: Any, workdir: Path, tokenizer, model_config, graphdef, length: int):
    """params -> {'heldout/accuracy', 'heldout/loss'} on `config.heldout` (`ncjax.accuracy`), or
    None when heldout.path is empty."""
    h = config.get("heldout")
    if h is None or not h.path:
        return None
    arrays = accuracy.heldout_arrays(h, config.data, tokenizer, cache_dir=Path(config.data.cache_dir or workdir / "cache"),
                                     length=length, position_limit=model_config.max_position_embeddings)
    log.info("held-out masked accuracy on %d sequences of %s", arrays["input_ids"].shape[0], h.path)
    special = tuple(masking.special_token_ids(tokenizer))

    def evaluate(params) -> dict:
        r = accuracy.masked_accuracy(graphdef, params, arrays, special_ids=special, mask_id=tokenizer.mask_token_id,
                                     vocab_size=model_config.vocab_size, probability=config.data.mlm_probability,
                                     batch_size=h.batch_size, seed=h.seed)
        log.info("held-out masked accuracy %.4f, loss %.4f (%d tokens)", r["accuracy"], r["loss"], r["masked_tokens"])
        return {"heldout/accuracy": r["accuracy"], "heldout/loss": r["loss"]}

    return evaluate


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
    if config.get("heldout") is not None and config.heldout.path:
        accuracy.check(config.heldout, config.data)
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
    tokenizer, model_config, arrays = _load_corpus(config, workdir, model_src, is_main)
    num_examples, length = arrays["input_ids"].shape[0], arrays["input_ids"].shape[-1]
    sampler = data.Sampler(num_examples, config.train.batch_size, config.seed, jax.process_index(),
                           jax.process_count(), drop_remainder=config.data.remainder == "drop",
                           shuffle=config.data.shuffle)
    total_steps = config.train.num_steps or config.train.num_epochs * sampler.steps_per_epoch
    log.info("%d examples of %d tokens, %d steps per epoch, %d steps, %d devices, %d processes",
             num_examples, length, sampler.steps_per_epoch, total_steps, mesh.devices.size, jax.process_count())
    graphdef, model_config, step_fn, state = _build_step_and_state(config, workdir, model_src, tokenizer, arrays,
                                                                   mesh, total_steps, is_main)
    if is_main:  # what makes each checkpoint a model source of its own (ncjax.snapshot)
        snapshot.write_model_files(model_config, model_src, workdir)
    # model FLOPs of a step (ncjax.flops counts what is computed: the MLM head at P positions a row)
    rows = config.train.batch_size * int(np.prod(arrays["input_ids"].shape[1:-1], dtype=np.int64))
    predictions = int(config.data.max_predictions_per_seq
                      or masking.default_max_predictions(length, config.data.mlm_probability))
    run = loop.Run(config=config, workdir=workdir, mesh=mesh, arrays=arrays, sampler=sampler,
                   pad_id=tokenizer.pad_token_id or 0, total_steps=total_steps, step_fn=step_fn,
                   step_flops=flops.train_step_flops(model_config, rows, length, predictions),
                   peak=flops.peak_flops(mesh.devices.flat[0].device_kind, config.model.dtype,
                                         config.log.peak_tflops),
                   is_main=is_main, hooks=_hooks(config, workdir, tokenizer, model_config, graphdef, length,
                                                 model_src, is_main))

    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep,
                                         async_save=config.checkpoint.async_save)
    try:
        start, state, position = _restore(checkpointer, state, num_examples)
        status, step, state, last_logged = loop.train_steps(run, state, checkpointer, start, position)
    finally:
        # waits for a pending asynchronous save, also when the run stops on an error
        checkpointer.close()

    export = None
    if status == "completed" and config.export.hf:
        export = workdir / "export" / "hf"
        publish = config.export.get("publish", "")
        # a second, atomically replaced copy where other configs look for it
        _export_hf(graphdef, state["params"], model_config, model_src, is_main, export,
                   *([Path(publish).expanduser()] if publish else []))
    return {
        "status": status,
        "step": step,
        "total_steps": total_steps,
        "checkpoint": str(checkpointer.step_path(step)),
        "export": str(export) if export else None,
        "metrics": last_logged,
    }


def _load_corpus(config: Any, workdir: Path, model_src: Path, is_main: bool) -> tuple[Any, Any, dict]:
    """(tokenizer, model config, the tokenised training arrays); process 0 builds the corpus
    cache, the others read it."""
    tokenizer = convert.load_tokenizer(model_src)
    model_config = convert.load_config(model_src.parent if model_src.is_file() else model_src)
    if len(tokenizer) > model_config.vocab_size:
        raise ValueError(f"the tokenizer of {config.model.path} has {len(tokenizer)} tokens but the model only "
                         f"{model_config.vocab_size}; use the checkpoint's own tokenizer files.")
    cache_dir = Path(config.data.cache_dir or workdir / "cache")
    arrays = None
    if is_main:
        arrays = schemas.load(config.data, tokenizer, cache_dir=cache_dir,
                              position_limit=model_config.max_position_embeddings)
    parallel.sync("ncjax_corpus")
    if arrays is None:
        arrays = schemas.load(config.data, tokenizer, cache_dir=cache_dir,
                              position_limit=model_config.max_position_embeddings)
    return tokenizer, model_config, arrays


def _build_step_and_state(config: Any, workdir: Path, model_src: Path, tokenizer: Any, arrays: dict,
                          mesh: jax.sharding.Mesh, total_steps: int, is_main: bool) -> tuple[Any, Any, Any, Any]:
    """(graphdef, model config, the jitted step, the initial train state): the model with its
    head, the recipe's loss terms, the optimiser and schedule."""
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

    setup = terms_lib.Setup(config=config, tokenizer=tokenizer, model_config=model_config,
                            length=arrays["input_ids"].shape[-1], fields=tuple(arrays), workdir=workdir,
                            is_main=is_main, graphdef=graphdef, params=params)
    loss_terms = terms_lib.build(config, setup)
    del setup
    log.info("loss = %s", " + ".join(f"{t.weight:g} * {t.name}" for t in loss_terms))
    schedule = step_lib.make_schedule(config.optim, total_steps)
    tx = step_lib.make_optimizer(config.optim, schedule)
    step_fn = step_lib.make_train_step(graphdef, tx, schedule, mesh=mesh, seed=config.seed, terms=loss_terms,
                                       dropout=config.model.dropout, dropout_rng=config.model.dropout_rng)
    state = step_lib.init_state(params, tx, mesh, loss_terms, seed=config.seed)
    log.info("train state initialised (%d parameters)", sum(x.size for x in jax.tree.leaves(state["params"])))
    return graphdef, model_config, step_fn, state


def _restore(checkpointer: ckpt_lib.Checkpointer, state: Any, num_examples: int) -> tuple[int | None, Any, int]:
    """(start step or None, state, sampler position) from the newest readable, finite checkpoint
    (damaged ones are moved aside), or the initial state when there is none."""
    found = checkpointer.restore_latest(ckpt_lib.abstract_like(state))
    if found is None:
        return None, state, 0
    start, state, meta = found
    if meta.get("num_examples") != num_examples:
        log.warning("the corpus now has %d examples, the checkpoint was written with %s; the data order "
                    "after resuming differs from the original run", num_examples, meta.get("num_examples"))
    log.info("resumed from %s (step %d)", checkpointer.step_path(start), start)
    return start, state, int(meta["sampler_position"])
