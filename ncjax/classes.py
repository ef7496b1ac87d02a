"""Class statistics shared by the NC3 penalty (`ncjax.penalty`) and the NC metrics
(`ncjax.collapse`): which positions belong to which class, and the per-class sums both build on.

A class is a token id; K classes are given as a list of ids (a resolved word set, or ids seen in
a corpus). A sample is a feature h [hidden] at a counted position, paired with the class at the
same position (label_shift 0) or the next one (label_shift 1, the paper's released code).

- `make_slot_table(class_ids, vocab_size) -> [vocab] int32`: vocabulary id -> slot. Slot k
  for `class_ids[k]`, slot K for every other id (discarded).
- `shift_targets(ids, weights, label_shift=)` / `penalty_targets(input_ids, attention_mask,
  label_shift=)`: the class id paired with each position and its weight.
- `class_sums(features, labels, weights, slot_table, num_classes) -> (sums, counts)`: the
  per-class sums with a one-hot einsum over K slots (never a tokens x vocab one-hot);
  `class_sums_segment(...)`: the same with `jax.ops.segment_sum` (cheaper for many classes).
- `feature_size(config, features, option)`: the width of the features the statistics read,
  checked against the decoder rows that NC3 compares their class means with.
- `EPS` (float32 machine epsilon) and `normalize(x) = x / (||x|| + EPS)`, as the reference code
  normalises; `acc_dtype(*arrays)`: the accumulation dtype (at least float32).

All sums contract over every position of the (globally sharded) batch, so under `jax.jit` on a
('data',) mesh the compiler all-reduces them; means are formed only after that reduction.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# float32 machine epsilon, as in the reference normalize(x) = x / (||x|| + eps).
EPS = float(np.finfo(np.float32).eps)

# Sums must not silently drop to TF32/bf16 passes on accelerators.
_HIGHEST = jax.lax.Precision.HIGHEST


def feature_size(config: Any, features: str, option: str) -> int:
    """The width of the features ('last_hidden': the last encoder layer, hidden_size;
    'mlm_transform': the MLM-transform output, `config.head_size`) of a BertConfig.

    NC3 takes cosines between class means and decoder rows, which have `head_size` columns. For
    ALBERT with embedding_size != hidden_size the last layer has another width than the decoder
    rows: a ValueError naming `option` (the setting that chose the features)."""
    if features == "mlm_transform":
        return config.head_size
    if config.hidden_size != config.head_size:
        raise ValueError(
            f"{option} is {features!r}, but this {config.model_type}'s last layer has hidden_size "
            f"{config.hidden_size} and its decoder rows have embedding_size {config.head_size}, so NC3 cannot "
            f"compare them; set {option} to 'mlm_transform' (the decoder's input).")
    return config.hidden_size


def make_slot_table(class_ids: Sequence[int], vocab_size: int) -> jnp.ndarray:
    """Vocabulary -> slot lookup: [vocab_size] int32, slot k for class_ids[k], K otherwise.

    Raises ValueError on duplicate or out-of-range ids, since either would silently merge or
    drop a class.
    """
    ids = np.asarray(list(class_ids), dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("make_slot_table: class_ids must be a non-empty 1-D list of token ids.")
    if len(np.unique(ids)) != ids.size:
        raise ValueError("make_slot_table: class_ids contains duplicate token ids; deduplicate the word set first.")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(
            f"make_slot_table: class id {int(ids.max() if ids.max() >= vocab_size else ids.min())} is outside "
            f"the vocabulary [0, {vocab_size}); resolve the word set with the model's own tokenizer."
        )
    table = np.full((vocab_size,), ids.size, dtype=np.int32)
    table[ids] = np.arange(ids.size, dtype=np.int32)
    return jnp.asarray(table)


def shift_targets(ids: Any, weights: Any, *, label_shift: int, xp: Any = jnp) -> tuple[Any, Any]:
    """The class paired with each position and its weight, along the last axis.

    ids, weights: [..., length] (jax or numpy arrays; `xp` is the matching module).
    label_shift=0: labels = ids, weights as given. label_shift=1 (the released code's
    next-token pairing): labels[..., t] = ids[..., t + 1], weights[..., t] = weights[..., t + 1],
    and the last position gets label 0 with weight 0. Nothing here is differentiated."""
    if label_shift == 0:
        return ids, weights
    if label_shift == 1:
        return (xp.concatenate([ids[..., 1:], xp.zeros_like(ids[..., :1])], axis=-1),
                xp.concatenate([weights[..., 1:], xp.zeros_like(weights[..., :1])], axis=-1))
    raise ValueError(f"label_shift must be 0 or 1, got {label_shift!r}.")


def penalty_targets(
    input_ids: jnp.ndarray, attention_mask: jnp.ndarray, *, label_shift: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Class label and weight for every position of a batch: `shift_targets` of input_ids and
    attention_mask [batch, length]. Returns (labels [batch, length] int32, weights [batch, length]
    float32). Nothing here is differentiated.
    """
    if label_shift not in (0, 1):
        raise ValueError(f"penalty_targets: label_shift must be 0 or 1, got {label_shift!r}.")
    labels, weights = shift_targets(jnp.asarray(input_ids), jnp.asarray(attention_mask), label_shift=label_shift)
    return labels.astype(jnp.int32), weights.astype(jnp.float32)


def acc_dtype(*arrays) -> jnp.dtype:
    # At least float32 (bf16 inputs accumulate in float32); float64 stays float64 so that
    # gradient checks can run under jax.enable_x64.
    return jnp.result_type(jnp.float32, *[a.dtype for a in arrays])


def _flatten(features, labels, weights):
    hidden = features.shape[-1]
    dtype = acc_dtype(features)
    return (
        features.reshape(-1, hidden).astype(dtype),
        labels.reshape(-1),
        weights.reshape(-1).astype(dtype),
    )


def class_sums(
    features: jnp.ndarray,
    labels: jnp.ndarray,
    weights: jnp.ndarray,
    slot_table: jnp.ndarray,
    num_classes: int,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-class weighted sums and counts via a one-hot einsum over the K class slots.

    features: [..., hidden] (any float dtype; accumulated in at least float32); labels, weights: [...]
    (token ids and 0/1 or real weights). Returns (sums [K, hidden] float32, counts [K] float32).
    Differentiable in `features`. The one-hot is tokens x K, never tokens x vocab; the
    discard slot K falls outside `jax.nn.one_hot`'s range and so becomes a zero row.
    """
    x, y, w = _flatten(features, labels, weights)
    slots = slot_table[y]
    onehot = jax.nn.one_hot(slots, num_classes, dtype=x.dtype) * w[:, None]  # [N, K]
    sums = jnp.einsum("nk,nh->kh", onehot, x, precision=_HIGHEST)
    counts = jnp.sum(onehot, axis=0)
    return sums, counts


def class_sums_segment(
    features: jnp.ndarray,
    labels: jnp.ndarray,
    weights: jnp.ndarray,
    slot_table: jnp.ndarray,
    num_classes: int,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Same contract as `class_sums`, computed with `jax.ops.segment_sum` (the test oracle)."""
    x, y, w = _flatten(features, labels, weights)
    slots = slot_table[y]
    sums = jax.ops.segment_sum(x * w[:, None], slots, num_segments=num_classes + 1)[:num_classes]
    counts = jax.ops.segment_sum(w, slots, num_segments=num_classes + 1)[:num_classes]
    return sums, counts


def _safe_norm(x: jnp.ndarray) -> jnp.ndarray:
    # A plain sqrt has an infinite derivative at 0; absent classes can give exact zeros.
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def normalize(x: jnp.ndarray) -> jnp.ndarray:
    """x / (||x|| + EPS) along the last axis (the reference's normalize), with a finite gradient at 0."""
    return x / (_safe_norm(x) + EPS)
