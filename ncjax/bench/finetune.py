"""One jitted, data-parallel fine-tune / predict loop for every fine-tuning benchmark.

A task is a `heads` head plus tokenised examples (`Encoded`: variable-length token ids and
token types, and per-example arrays such as labels or spans). `finetune` trains the encoder and
the head together and `predict` returns the head's logits; GLUE, coreference and Bias-in-Bios
all run through these two functions.

- Mesh and data parallelism as in training: a 1-D ('data',) mesh (`ncjax.parallel`), parameters
  and optimiser state replicated, each batch sharded on its first axis; the loss is the mean over
  the real rows of the global batch, so 1 and 8 devices compute the same numbers.
- No MLM masking: the step is encoder -> head -> loss (`heads`), with dropout keyed by
  fold_in(seed, step). The MLM head of the checkpoint (if any) is neither used nor updated.
- optax AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0 by default, as transformers' Trainer),
  gradient clipping at global norm 1.0, linear warm-up then linear decay to 0.
- Length-bucketed batches: each epoch's seeded permutation is cut into chunks of 50 batches,
  each chunk is sorted by length and cut into batches, and the batch order is shuffled; every
  batch is padded to a multiple of 32 tokens (at most max_length) and to the full batch size
  with weight-0 rows, so a run compiles once per padded length.
- Resumable: with a run directory, the state is checkpointed every `checkpoint_every` steps and
  at the end; a rerun with the same settings continues from the last checkpoint (the batch plan
  is a function of (seed, epoch), so the position is the step), and a finished run's predictions
  are read back instead of recomputed. The encoder checkpoint itself is only read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ncjax import parallel
from ncjax.logs import write_json_atomic

log = logging.getLogger(__name__)

LENGTH_MULTIPLE = 32
CHUNK_BATCHES = 50


@dataclasses.dataclass(frozen=True)
class Hparams:
    """Fine-tuning settings (transformers' run_glue defaults)."""

    learning_rate: float = 2e-5
    batch_size: int = 32
    epochs: float = 3.0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_batch_size: int = 64
    checkpoint_every: int = 500


@dataclasses.dataclass
class Encoded:
    """Tokenised examples: ids/types are lists of int arrays (one per example, unpadded);
    fields: {name: [n, ...]} per-example arrays (labels, spans, ...)."""

    ids: list[np.ndarray]
    types: list[np.ndarray]
    fields: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, n: int | None) -> "Encoded":
        if n is None:
            return self
        return Encoded(self.ids[:n], self.types[:n], {k: v[:n] for k, v in self.fields.items()})


def encode_texts(tokenizer: Any, a: Sequence[str], b: Sequence[str] | None, max_length: int) -> tuple[list, list]:
    """Token ids and token types of single texts or text pairs, truncated as transformers does
    (longest_first), with [CLS]/[SEP]."""
    enc = tokenizer(list(a), list(b) if b is not None else None, truncation=True, max_length=max_length)
    ids = [np.asarray(x, np.int32) for x in enc["input_ids"]]
    types = [np.asarray(x, np.int32) for x in enc.get("token_type_ids", [np.zeros(len(i), np.int32) for i in ids])]
    return ids, types


# ----------------------------------------------------------------------------- batching

def _padded_length(n: int, max_length: int) -> int:
    return min(max_length, -(-n // LENGTH_MULTIPLE) * LENGTH_MULTIPLE)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Length-bucketed batches of example indices for one epoch (a function of seed and epoch)."""
    rng = np.random.Generator(np.random.PCG64([seed, epoch]))
    order = rng.permutation(len(lengths))
    batches = []
    chunk = batch_size * CHUNK_BATCHES
    for s in range(0, len(order), chunk):
        part = order[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of indices sorted by length (prediction order does not matter; fewer pad tokens)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def make_batch(data: Encoded, idx: np.ndarray, batch_size: int, max_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Rows idx padded to [batch_size, padded length]; `weight` is 1 for real rows, 0 for padding."""
    length = _padded_length(max(len(data.ids[i]) for i in idx), max_length)
    ids = np.full((batch_size, length), pad_id, np.int32)
    types = np.zeros((batch_size, length), np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    for r, i in enumerate(idx):
        n = len(data.ids[i])
        ids[r, :n], types[r, :n], mask[r, :n] = data.ids[i], data.types[i], 1
    out = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
           "weight": (np.arange(batch_size) < len(idx)).astype(np.float32)}
    for k, v in data.fields.items():
        rows = np.zeros((batch_size,) + v.shape[1:], v.dtype)
        rows[:len(idx)] = v[idx]
        out[k] = rows
    return out


# ----------------------------------------------------------------------------- model

@dataclasses.dataclass
class Model:
    """An encoder split for fine-tuning: graphdef + frozen MLM-head state + trainable encoder state."""

    graphdef: Any
    mlm_head: Any
    encoder: Any
    hidden: int
    pad_id: int


def split_encoder(model: Any) -> Model:
    """BertForMaskedLM -> Model (the MLM head is kept apart: not trained, not used)."""
    graphdef, mlm_head, encoder = nnx.split(model, nnx.PathContains("head"), ...)
    return Model(graphdef, nnx.to_pure_dict(mlm_head), nnx.to_pure_dict(encoder), model.config.hidden_size,
                 model.config.pad_token_id)


def _hidden(m: Model, encoder: Any, batch: dict[str, jax.Array], key: jax.Array | None) -> jax.Array:
    model = nnx.merge(m.graphdef, m.mlm_head, encoder)
    return model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], dropout_key=key)


def _schedule(hp: Hparams, total: int) -> optax.Schedule:
    warm = int(np.ceil(hp.warmup_ratio * total))
    decay = optax.linear_schedule(hp.learning_rate, 0.0, max(total - warm, 1))
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, hp.learning_rate, warm), decay], [warm])


def optimizer(hp: Hparams, total_steps: int) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(hp.max_grad_norm),
        optax.adamw(_schedule(hp, total_steps), b1=0.9, b2=0.999, eps=1e-8, weight_decay=hp.weight_decay),
    )


def put_batch(batch: dict[str, np.ndarray], mesh: Any) -> dict[str, jax.Array]:
    n, pi = jax.process_count(), jax.process_index()
    local = {k: v[pi * len(v) // n:(pi + 1) * len(v) // n] for k, v in batch.items()}
    return parallel.global_batch(local, mesh)


def _train_step(m: Model, head: Any, tx: optax.GradientTransformation, seed: int):
    base = jax.random.key(seed)

    def step(params, opt_state, batch, step_no):
        k_enc, k_head = jax.random.split(jax.random.fold_in(base, step_no))

        def loss_fn(p):
            h = _hidden(m, p["encoder"], batch, k_enc)
            per = head.loss(head.logits(p["head"], h, batch, k_head), batch)
            w = batch["weight"]
            return (per * w).sum() / jnp.maximum(w.sum(), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step



_STEPS: dict[Any, Any] = {}


def _compiled_step(key_graph: Any, m: Model, head: Any, hp: Hparams, total: int, mesh: Any, tx: Any) -> Any:
    """The jitted step, reused across calls with the same model structure, head, settings and mesh
    (a resumed or repeated run does not compile again). The step closes over `m` only for its
    graphdef and the unused MLM-head state, which `encode` never reads."""
    key = (key_graph, head, hp, total, mesh)
    if key not in _STEPS:
        rep = parallel.replicated(mesh)
        _STEPS[key] = jax.jit(_train_step(m, head, tx, hp.seed), donate_argnums=(0, 1), out_shardings=(rep, rep, rep))
    return _STEPS[key]


def init_training(m: Model, head: Any, hp: Hparams, total: int, mesh: Any,
                  pooler: dict[str, np.ndarray] | None = None) -> tuple[Any, dict[str, Any], Any]:
    """(jitted step, replicated params {"encoder", "head"}, optimiser state) for `total` steps.

    step(params, opt_state, batch, step_no) -> (params, opt_state, loss); params and opt_state
    are donated."""
    tx = optimizer(hp, total)
    rep = parallel.replicated(mesh)
    params = {"encoder": m.encoder, "head": head.init(jax.random.key(hp.seed), m.hidden, pooler)}
    # Fresh replicated copies: the step donates its inputs, and `m` must stay usable.
    params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=rep)(params)
    opt_state = jax.device_put(tx.init(params), rep)
    step_fn = _compiled_step(m.graphdef, m, head, dataclasses.replace(hp, checkpoint_every=0), total, mesh, tx)
    return step_fn, params, opt_state


def check_run_dir(run_dir: Path, spec: dict[str, Any]) -> None:
    """A run directory belongs to one set of settings; reusing it for others is an error."""
    f = run_dir / "spec.json"
    if f.is_file():
        old = json.loads(f.read_text())
        if old != json.loads(json.dumps(spec, sort_keys=True, default=str)):
            diff = sorted(k for k in set(old) | set(spec) if old.get(k) != json.loads(json.dumps(spec, default=str)).get(k))
            raise ValueError(f"run directory {run_dir} was made with other settings ({', '.join(diff)}); "
                             "pass another --workdir or remove that directory.")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(f, json.loads(json.dumps(spec, sort_keys=True, default=str)))


def finetune(
    m: Model,
    head: Any,
    train: Encoded,
    hp: Hparams,
    *,
    max_length: int,
    mesh: Any = None,
    run_dir: Path | None = None,
    spec: dict[str, Any] | None = None,
    progress: bool = False,
    desc: str = "finetune",
    pooler: dict[str, np.ndarray] | None = None,
    on_epoch: Any = None,
) -> tuple[dict[str, Any], list[float]]:
    """Trains encoder + head on `train`; returns (params {"encoder", "head"}, per-step losses).

    With `run_dir`, resumes from its last checkpoint (settings must match `spec`) and saves
    every hp.checkpoint_every steps and at the end. Losses of steps run before a resume are
    read back from the checkpoint metadata. on_epoch(epoch, params) is called after each
    completed epoch (epoch counts from 1; the last, possibly fractional, one included)."""
    mesh = mesh if mesh is not None else parallel.make_mesh()
    parallel.check_batch_size(hp.batch_size, mesh)
    if len(train) == 0:
        raise ValueError(f"{desc}: no training examples; check the data files.")
    lengths = np.array([len(x) for x in train.ids])
    steps_per_epoch = -(-len(train) // hp.batch_size)
    total = max(1, int(round(hp.epochs * steps_per_epoch)))
    step_fn, params, opt_state = init_training(m, head, hp, total, mesh, pooler)
    start, losses = 0, []
    ckpt = None
    if run_dir is not None:
        from ncjax.checkpoint import Checkpointer, abstract_like

        check_run_dir(run_dir, {**(spec or {}), "hparams": dataclasses.asdict(hp), "max_length": max_length})
        ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=1, async_save=False)
        last = ckpt.latest_step()
        if last is not None:
            (params, opt_state), meta = ckpt.restore(last, abstract_like((params, opt_state)))
            start, losses = int(meta["step"]), list(meta["losses"])
            log.info("%s: resumed at step %d of %d from %s", desc, start, total, run_dir)
    from tqdm.auto import tqdm

    plan: dict[int, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    with tqdm(total=total, initial=start, desc=desc, unit="step", disable=not progress, leave=False) as bar:
        for s in range(start, total):
            epoch, b = divmod(s, steps_per_epoch)
            if epoch not in plan:
                plan = {epoch: epoch_batches(lengths, hp.batch_size, hp.seed, epoch)}
            batch = put_batch(make_batch(train, plan[epoch][b], hp.batch_size, max_length, m.pad_id), mesh)
            params, opt_state, loss = step_fn(params, opt_state, batch, jnp.int32(s))
            losses.append(float(loss))
            if not np.isfinite(losses[-1]):
                raise FloatingPointError(f"{desc}: loss is {losses[-1]} at step {s}; lower the learning rate.")
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if (s + 1) % 25 == 0 or s + 1 == total:
                log.info("%s: step %d/%d, loss %.4f, %.1f s since start", desc, s + 1, total, losses[-1],
                         time.perf_counter() - t0)
            if ckpt is not None and ((s + 1) % hp.checkpoint_every == 0 or s + 1 == total
                                     or (on_epoch is not None and (s + 1) % steps_per_epoch == 0)):
                ckpt.save(s + 1, (params, opt_state), {"step": s + 1, "losses": losses})
            if on_epoch is not None and ((s + 1) % steps_per_epoch == 0 or s + 1 == total):
                on_epoch(-(-(s + 1) // steps_per_epoch), params)
    if ckpt is not None:
        ckpt.close()
    return params, losses


def predict(
    m: Model,
    head: Any,
    params: dict[str, Any],
    data: Encoded,
    *,
    max_length: int,
    batch_size: int = 64,
    mesh: Any = None,
) -> np.ndarray:
    """Head logits of every example (no dropout), in the order of `data`: [n, ...] float32."""
    mesh = mesh if mesh is not None else parallel.make_mesh()
    n_dev = mesh.devices.size
    batch_size = -(-batch_size // n_dev) * n_dev
    rep = parallel.replicated(mesh)
    key = ("predict", m.graphdef, head, mesh)
    if key not in _STEPS:  # one jitted forward per model structure, head and mesh (reused across epochs)
        _STEPS[key] = jax.jit(lambda p, batch: head.logits(p["head"], _hidden(m, p["encoder"], batch, None), batch, None))
    forward = _STEPS[key]
    params = jax.device_put(params, rep)
    lengths = np.array([len(x) for x in data.ids])
    out: np.ndarray | None = None
    for idx in eval_batches(lengths, batch_size):
        logits = np.asarray(parallel.to_host(forward(params, put_batch(make_batch(data, idx, batch_size, max_length,
                                                                              m.pad_id), mesh))))
        if out is None:
            out = np.zeros((len(data),) + logits.shape[1:], np.float32)
        out[idx] = logits[:len(idx)]
    return out if out is not None else np.zeros((0,), np.float32)
