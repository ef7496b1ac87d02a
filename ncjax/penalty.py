"""The NC3 fairness regulariser of Xu et al. (ICLR 2025), as used inside the train step.

Notation (docs/penalty.md): h_t is the feature at position t, y_t the class id paired
with it, G the resolved word-set ids (K of them, in a fixed order), W[G] the decoder rows of
those classes (the tied word embedding). For each class present so far:

    mu_c = mean of h_t over positions with y_t = c
    mu_G = unweighted mean of mu_c over the present classes
    s_c  = cos(W[c], mu_c - mu_G),  normalize(x) = x / (||x|| + eps), eps = float32 epsilon
    R    = unbiased std of s_c over the present classes  (0, with nc3_valid False, if < 2)

Public API (the train step calls these inside `jax.jit`); the class-statistics primitives
(`make_slot_table`, `penalty_targets`, `class_sums`, `class_sums_segment`, `EPS`) live in
`ncjax.classes`, shared with the NC metrics, and are re-exported here:

- `make_slot_table(class_ids, vocab_size) -> [vocab] int32`: vocabulary id -> slot. Slot k
  for `class_ids[k]`, slot K for every other id (discarded).
- `penalty_targets(input_ids, attention_mask, *, label_shift) -> (labels, weights)`: the
  class id paired with each position and its 0/1 weight ([batch, length] each).
- `init_state(num_classes, hidden) -> PenaltyState`: the running statistics, a plain dict
  `{'sums': [K, hidden] float32, 'counts': [K] float32}` (a pytree of arrays, so an orbax
  checkpoint holds it as is).
- `class_sums(features, labels, weights, slot_table, num_classes) -> (sums, counts)`: the
  per-class sums with a one-hot einsum over K slots (never a tokens x vocab one-hot).
- `class_sums_segment(...)`: the same sums with `jax.ops.segment_sum`; the test oracle.
- `nc3_from_stats(sums, counts, class_weights) -> (R, valid, num_present)`: R from sums.
- `nc3_penalty(state, features, labels, weights, class_weights, slot_table, *, mode,
  ema=0.0, stop_gradient_mu=False) -> (R, new_state, metrics)`: one step of either mode;
  metrics = {'nc3': R, 'nc3_valid': bool, 'nc3_classes': number of present classes}.

Modes:
- 'reference' (the paper's released code): statistics accumulate over every step of the run
  and are never reset; features enter through `stop_gradient`, so R's gradient reaches only
  W[G]. Use `penalty_targets(..., label_shift=1)` with the last encoder layer.
- 'batch' (MLM-consistent): statistics of the current batch (with `ema > 0`, an exponential
  moving average of sums and counts across steps: stats = ema * state + (1 - ema) * batch);
  gradients reach the features through mu unless `stop_gradient_mu`.

Data parallelism: the class sums contract over every position of the (globally sharded)
batch, so under `jax.jit` with the batch sharded on a ('data',) mesh the compiler all-reduces
sums and counts over devices; means are formed only after that reduction. Nothing here
divides per device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ncjax.classes import (  # noqa: F401  (re-exported: the penalty's public API)
    EPS,
    acc_dtype,
    class_sums,
    class_sums_segment,
    make_slot_table,
    normalize,
    penalty_targets,
)

PenaltyState = dict  # {'sums': [K, H] float32, 'counts': [K] float32}

MODES = ("reference", "batch")

def init_state(num_classes: int, hidden: int) -> PenaltyState:
    """Empty running statistics: {'sums': [K, hidden] float32 zeros, 'counts': [K] float32 zeros}."""
    return {
        "sums": jnp.zeros((num_classes, hidden), jnp.float32),
        "counts": jnp.zeros((num_classes,), jnp.float32),
    }


def nc3_from_stats(
    sums: jnp.ndarray, counts: jnp.ndarray, class_weights: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """R = unbiased std over present classes of cos(W[c], mu_c - mu_G).

    sums: [K, hidden], counts: [K] (a class is present when its count is > 0), class_weights:
    W[G] [K, hidden]. Returns (R scalar float32, valid bool scalar, num_present float32).
    Differentiable in sums and class_weights; R is 0 with a zero gradient when fewer than
    2 classes are present or all s_c are equal.
    """
    dtype = acc_dtype(sums, class_weights)
    sums = sums.astype(dtype)
    counts = counts.astype(dtype)
    present = counts > 0
    pf = present.astype(dtype)
    n = jnp.sum(pf)
    mu = sums / jnp.where(present, counts, 1.0)[:, None]
    mu = mu * pf[:, None]
    mu_g = jnp.sum(mu, axis=0) / jnp.maximum(n, 1.0)
    m = (mu - mu_g) * pf[:, None]
    s = jnp.sum(normalize(class_weights.astype(dtype)) * normalize(m), axis=-1)  # [K]
    mean_s = jnp.sum(s * pf) / jnp.maximum(n, 1.0)
    var = jnp.sum(pf * (s - mean_s) ** 2) / jnp.maximum(n - 1.0, 1.0)
    valid = n >= 2
    ok = valid & (var > 0)
    r = jnp.where(ok, jnp.sqrt(jnp.where(ok, var, 1.0)), 0.0)
    return r, valid, n


def nc3_penalty(
    state: PenaltyState,
    features: jnp.ndarray,
    labels: jnp.ndarray,
    weights: jnp.ndarray,
    class_weights: jnp.ndarray,
    slot_table: jnp.ndarray,
    *,
    mode: str,
    ema: float = 0.0,
    stop_gradient_mu: bool = False,
) -> tuple[jnp.ndarray, PenaltyState, dict]:
    """One step of the NC3 penalty.

    state: {'sums': [K, hidden], 'counts': [K]} (from `init_state` or the previous step);
    features: [batch, length, hidden] (any float dtype, accumulated in float32);
    labels, weights: [batch, length] (from `penalty_targets`, weights may also zero out
    positions the config does not select); class_weights: W[G] [K, hidden] (gathered from the
    decoder weight, so the gradient reaches W's rows); slot_table: [vocab] from
    `make_slot_table`.

    mode='reference': state += sums of stop_gradient(features); R from the accumulated state;
    only class_weights are differentiated (`stop_gradient_mu` is ignored: always stopped).
    mode='batch': stats = ema * state + (1 - ema) * batch stats; R from stats; features are
    differentiated through the batch part unless stop_gradient_mu. The new state is always
    stop_gradient'ed.

    Returns (R scalar float32, new_state, metrics {'nc3', 'nc3_valid', 'nc3_classes'}).
    """
    if mode not in MODES:
        raise ValueError(f"nc3_penalty: mode must be one of {MODES}, got {mode!r}; set penalty.mode in the config.")
    if not 0.0 <= float(ema) < 1.0:
        raise ValueError(f"nc3_penalty: ema must be in [0, 1), got {ema!r}; set penalty.ema in the config.")
    num_classes = class_weights.shape[0]
    if state["sums"].shape != (num_classes, features.shape[-1]):
        raise ValueError(
            f"nc3_penalty: state sums have shape {state['sums'].shape} but class_weights/features imply "
            f"{(num_classes, features.shape[-1])}; re-initialise the penalty state for this word set and model."
        )
    if mode == "reference" or stop_gradient_mu:
        features = jax.lax.stop_gradient(features)
    sums, counts = class_sums(features, labels, weights, slot_table, num_classes)
    if mode == "reference":
        sums = state["sums"] + sums
        counts = state["counts"] + counts
    elif ema > 0.0:
        sums = ema * state["sums"] + (1.0 - ema) * sums
        counts = ema * state["counts"] + (1.0 - ema) * counts
    r, valid, n = nc3_from_stats(sums, counts, class_weights)
    new_state = {"sums": jax.lax.stop_gradient(sums), "counts": jax.lax.stop_gradient(counts)}
    metrics = {"nc3": jax.lax.stop_gradient(r), "nc3_valid": valid, "nc3_classes": n}
    return r, new_state, metrics
