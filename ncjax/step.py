"""The train state and the one jitted train step: a weighted sum of loss terms.

`make_train_step` returns a single `jax.jit` over a 1-D ('data',) mesh: the train state
(parameters, AdamW state, each loss term's state such as the NC3 running statistics, step) is
replicated and donated, the batch (a dict of [global_batch, ...] arrays) is sharded on its first
axis. Inside it: one `terms.Context` per trace (masks and dropout keyed by fold_in(seed, step),
forward passes cached so terms that read the same pass share it), loss = sum of weight * value
over the recipe's terms (`ncjax.terms`; e.g. MLM cross-entropy + alpha * NC3, whose class sums
the compiler all-reduces over the batch before any division), the gradient of that loss with
respect to the parameters, global-norm clipping and an AdamW update with a linear schedule.
Under `jax.jit` the same code runs on 1 CPU, 8 simulated devices, a GPU or a TPU pod.

Step numbering: `state['step']` counts applied updates. The update that reads global batch s
(masks keyed by s) produces step s + 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ncjax import parallel
from ncjax import terms as terms_lib
from ncjax.terms.mlm import MaskSpec  # noqa: F401  (re-exported: configured with the step)
from ncjax.terms.nc3 import PenaltySpec  # noqa: F401


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
    terms: Sequence[terms_lib.Term],
    dropout: bool = True,
    dropout_rng: str = "auto",
) -> Callable:
    """The jitted step: (state, batch) -> (state, metrics).

    state: {'step': int32 [], 'params': parameter dict, 'opt_state': AdamW state, 'terms':
    {term name: its state} (only present when a term keeps state), 'term_params': {term name:
    its parameters} (only present when a term owns parameters)}, replicated and donated.
    batch: a dict of [global_batch, ...] arrays (the fields the terms read), sharded on axis 0.
    Differentiated: loss = sum of weight * value over `terms`, with respect to state['params']
    and state['term_params'] (one optimiser, one clipping norm over both).
    dropout_rng: the PRNG implementation of the dropout masks (`ncjax.rng.dropout_key`).
    metrics: loss, loss/<name> per term (unweighted), each term's own metrics, grad_norm, lr,
    tokens."""
    rep = parallel.replicated(mesh)
    terms = tuple(terms)
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"make_train_step: loss terms {names} repeat a name; each needs its own.")

    def step_fn(state, batch, seed_value):
        step = state["step"]
        term_states = state.get("terms", {})

        def loss_fn(trainable):
            params, term_params = _split_trainable(trainable)
            ctx = terms_lib.Context(nnx.merge(graphdef, params), batch, step, seed=seed_value, dropout=dropout,
                                    params=params, term_params=term_params, dropout_rng=dropout_rng)
            total = jnp.zeros((), jnp.float32)
            new_states, metrics = {}, {}
            for term in terms:
                value, new, m = term(ctx, term_states.get(term.name))
                total = total + term.weight * value
                if new is not None:
                    new_states[term.name] = new
                metrics[f"loss/{term.name}"] = jax.lax.stop_gradient(value)
                metrics.update(m)
            return total, (new_states, metrics)

        trainable = _trainable(state)
        (loss, (new_states, term_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        new_params, new_term_params = _split_trainable(optax.apply_updates(trainable, updates))
        new_state = {"step": step + 1, "params": new_params, "opt_state": opt_state}
        if new_term_params:
            new_state["term_params"] = new_term_params
        if new_states:
            new_state["terms"] = new_states
        mask = batch["attention_mask"]
        metrics = {
            "loss": loss,
            **term_metrics,
            "grad_norm": _global_norm(grads),
            "lr": schedule(step),
            "tokens": jnp.sum(mask),
        }
        return new_state, metrics

    batch_sharding = parallel.batch_sharded(mesh)
    jitted = jax.jit(step_fn, in_shardings=(rep, batch_sharding, rep), out_shardings=(rep, rep), donate_argnums=(0,))
    # The seed is an argument, not a constant of the program: runs that differ only by seed (the
    # seeds of an experiment grid) compile one program, which a persistent cache then shares.
    seed_value = jax.make_array_from_callback((), rep, lambda idx: np.asarray(seed, np.int32))
    return _Step(jitted, seed_value)


class _Step:
    """The jitted step with its seed bound: `step(state, batch)` and `step.lower(state, batch)`."""

    def __init__(self, jitted: Callable, seed_value: jax.Array):
        self._jitted, self._seed = jitted, seed_value

    def __call__(self, state, batch):
        return self._jitted(state, batch, self._seed)

    def lower(self, state, batch):
        return self._jitted.lower(state, batch, self._seed)


def _trainable(state: dict) -> Any:
    # What the optimiser updates: the model's parameters alone (the layout of every recipe
    # without term parameters, so their checkpoints keep it) or (params, term_params).
    return (state["params"], state["term_params"]) if "term_params" in state else state["params"]


def _split_trainable(trainable: Any) -> tuple[Any, dict]:
    return trainable if isinstance(trainable, tuple) else (trainable, {})


def init_state(params: dict, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
               terms: Sequence[terms_lib.Term] = (), seed: int = 0) -> dict:
    """The step-0 train state, replicated over the mesh (works across processes: every process
    holds the same host values), with the initial state of every term that keeps one and the
    initial parameters (seeded by `seed`) of every term that owns some."""
    rep = parallel.replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, rep, lambda idx: x[idx])

    state = {"step": put(np.zeros((), np.int32)), "params": jax.tree.map(put, params)}
    term_params = terms_lib.init_params(terms, seed)
    if term_params:
        state["term_params"] = jax.tree.map(put, jax.device_get(term_params))
    state["opt_state"] = jax.jit(tx.init, out_shardings=rep)(_trainable(state))
    term_states = terms_lib.init_states(terms)
    if term_states:
        state["terms"] = jax.tree.map(put, jax.device_get(term_states))
    return state
