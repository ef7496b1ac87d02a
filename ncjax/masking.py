"""Dynamic BERT masking on device, drawn inside the jitted step.

`mask_tokens` is keyed by a PRNG key the step derives as fold_in(seed, step), so a resumed run
needs only the step to reproduce every mask, and the masks do not depend on how the batch is
sharded: JAX's partitionable threefry draws the same bits for a global shape on any device
layout. The number of scored positions per sequence is static (`max_predictions`, as in the
original BERT), so the MLM head runs only where the loss reads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def default_max_predictions(length: int, probability: float) -> int:
    """A static per-sequence cap that Bernoulli(probability) masking exceeds with negligible
    probability: mean + 4 standard deviations of Binomial(length, probability), at least 1."""
    mean = length * probability
    return int(min(length, max(1, math.ceil(mean + 4.0 * math.sqrt(mean * (1.0 - probability))))))


def mask_tokens(
    key: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    special_ids: Sequence[int],
    mask_id: int,
    vocab_size: int,
    probability: float = 0.15,
    max_predictions: int = 20,
) -> dict[str, jax.Array]:
    """Dynamic BERT masking of a [batch, length] batch.

    Each real, non-special token is selected with `probability`; a selected token becomes [MASK]
    (80 %), a uniformly random id (10 %) or stays (10 %). At most `max_predictions` tokens per
    row are selected: past the cap, the tokens with the largest draws are left unselected (and
    unchanged), so the cap never biases which tokens are chosen. Nothing is differentiated.

    Returns {'input_ids': [batch, length] int32 masked ids, 'positions': [batch, P] int32,
    'labels': [batch, P] int32 original ids, 'weights': [batch, P] float32 (1 where a position
    was selected, 0 in the unused slots)}, with P = max_predictions.
    """
    input_ids = input_ids.astype(jnp.int32)
    k_select, k_kind, k_random = jax.random.split(key, 3)
    shape = input_ids.shape
    special = jnp.isin(input_ids, jnp.asarray(list(special_ids), jnp.int32))
    candidate = (attention_mask > 0) & ~special
    u = jax.random.uniform(k_select, shape)
    selected = candidate & (u < probability)
    # The P smallest draws among the selected tokens (unselected ones rank after all of them).
    score = jnp.where(selected, u, 2.0)
    neg, positions = jax.lax.top_k(-score, max_predictions)
    weights = (neg > -2.0).astype(jnp.float32)
    positions = positions.astype(jnp.int32)
    rows = jnp.arange(shape[0])[:, None]
    chosen = jnp.zeros(shape, jnp.bool_).at[rows, positions].max(weights > 0)
    kind = jax.random.uniform(k_kind, shape)
    random_ids = jax.random.randint(k_random, shape, 0, vocab_size, jnp.int32)
    masked = jnp.where(chosen & (kind < 0.8), jnp.int32(mask_id), input_ids)
    masked = jnp.where(chosen & (kind >= 0.8) & (kind < 0.9), random_ids, masked)
    labels = jnp.take_along_axis(input_ids, positions, axis=1)
    return {"input_ids": masked, "positions": positions, "labels": labels, "weights": weights}


def special_token_ids(tokenizer) -> list[int]:
    """Ids masking never selects: [CLS], [SEP], [PAD], [MASK] and any other special token except
    [UNK] (an unknown word is still a word to predict, as in transformers' data collator)."""
    ids = set(tokenizer.all_special_ids)
    if tokenizer.unk_token_id is not None:
        ids.discard(tokenizer.unk_token_id)
    for name in ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id"):
        if getattr(tokenizer, name, None) is not None:
            ids.add(getattr(tokenizer, name))
    return sorted(ids)
