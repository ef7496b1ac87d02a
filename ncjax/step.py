"""The train state and the one jitted MLM + NC3 step.

`make_train_step` returns a single `jax.jit` over a 1-D ('data',) mesh: the train state
(parameters, AdamW state, NC3 running statistics, step) is replicated and donated, the batch is
sharded on its first axis. Inside it: MLM masks drawn from fold_in(seed, step)
(`masking.mask_tokens`), the model run with logits only at the masked positions, loss = MLM
cross-entropy (mean over the masked tokens of the global batch) + alpha * NC3
(`penalty.nc3_penalty`, whose class sums the compiler all-reduces over the batch before any
division), the gradient of that loss with respect to the parameters, global-norm clipping and an
AdamW update with a linear schedule. Under `jax.jit` the same code runs on 1 CPU, 8 simulated
devices, a GPU or a TPU pod.

Step numbering: `state['step']` counts applied updates. The update that reads global batch s
(masks keyed by s) produces step s + 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ncjax import masking as masking_lib
from ncjax import parallel, penalty, rng


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
    def from_config(cls, p: Any) -> PenaltySpec:
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
    dropout_rng: str = "auto",
) -> Callable:
    """The jitted step: (state, batch) -> (state, metrics).

    state: {'step': int32 [], 'params': parameter dict, 'opt_state': AdamW state,
    'penalty': {'sums': [K, H], 'counts': [K]} (only when alpha > 0)}, replicated and donated.
    batch: {'input_ids', 'attention_mask'}: [global_batch, length] int32, sharded on axis 0.
    Differentiated: loss = MLM + alpha * NC3 with respect to state['params'].
    dropout_rng: the PRNG implementation of the dropout masks (`rng.dropout_key`).
    metrics: scalars loss, mlm, nc3, nc3_valid, nc3_classes, grad_norm, lr, masked_tokens, tokens."""
    rep = parallel.replicated(mesh)
    root = jax.random.PRNGKey(seed)
    mask_root = jax.random.fold_in(root, 1)
    dropout_root = jax.random.fold_in(rng.dropout_key(seed, dropout_rng), 2)  # threefry: as fold_in(root, 2)
    use_penalty = penalty_spec.alpha > 0
    if use_penalty:
        slot_table = penalty.make_slot_table(class_ids, masking.vocab_size)
        class_index = jnp.asarray(class_ids, jnp.int32)

    def step_fn(state, batch):
        step = state["step"]
        masks = masking_lib.mask_tokens(
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
