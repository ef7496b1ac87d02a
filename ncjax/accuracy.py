"""Held-out masked-token accuracy of a masked LM: how well it fills in masks on text it did not
train on.

`masked_accuracy` tokenises each line (special tokens added, truncated to `max_length`), masks it
exactly as training does (`ncjax.masking.mask_tokens`: 15 % of the real, non-special tokens;
80 % [MASK], 10 % random, 10 % kept), with masks keyed by (seed, batch index) so the same lines
and seed always give the same masks, and reports over every selected position:

    accuracy = fraction of positions whose argmax prediction is the original token
    loss     = mean cross-entropy of the original token (nats)

Lines are sorted by length and padded to a power of two (few compilations); padding never
counts; the same lines, seed and batch size give the same masks.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ncjax import masking


def _batch_stats(graphdef, state, key, ids, mask, *, special_ids, mask_id, vocab_size, probability, max_predictions):
    model = nnx.merge(graphdef, state)
    m = masking.mask_tokens(key, ids, mask, special_ids=special_ids, mask_id=mask_id, vocab_size=vocab_size,
                            probability=probability, max_predictions=max_predictions)
    out = model(m["input_ids"], mask, positions=m["positions"])
    logits = out.logits.astype(jnp.float32)  # [batch, P, vocab]
    w = m["weights"]
    correct = (jnp.argmax(logits, axis=-1) == m["labels"]).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, m["labels"])
    return jnp.sum(correct * w), jnp.sum(nll * w), jnp.sum(w)


_STATIC = ("graphdef", "special_ids", "mask_id", "vocab_size", "probability", "max_predictions")
_jitted = jax.jit(_batch_stats, static_argnames=_STATIC)


def masked_accuracy(
    model: Any,
    tokenizer: Any,
    lines: Sequence[str],
    *,
    seed: int = 0,
    probability: float = 0.15,
    max_length: int = 128,
    batch_size: int = 32,
) -> dict[str, float]:
    """{'accuracy', 'loss', 'masked_tokens', 'lines'} of an ncjax masked LM on `lines`.

    model: an ncjax BertForMaskedLM with its MLM head; tokenizer: its tokenizer. Raises
    ValueError when no line has a token to mask."""
    lines = [t for t in lines if t.strip()]
    if not lines:
        raise ValueError("held-out text is empty: give at least one non-blank line.")
    if not 0.0 < probability < 1.0:
        raise ValueError(f"masking probability {probability} must be in (0, 1).")
    enc = tokenizer(list(lines), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    graphdef, state = nnx.split(model)
    special = tuple(masking.special_token_ids(tokenizer))
    root = jax.random.PRNGKey(seed)
    correct = nll = count = 0.0
    for b, start in enumerate(range(0, len(order), batch_size)):
        rows = [enc[i] for i in order[start:start + batch_size]]
        length = min(max(16, 1 << (max(len(r) for r in rows) - 1).bit_length()), max_length)
        ids = np.full((batch_size, length), tokenizer.pad_token_id or 0, np.int32)
        mask = np.zeros((batch_size, length), np.int32)
        for r, row in enumerate(rows):
            ids[r, :len(row)], mask[r, :len(row)] = row, 1
        c, n, k = _jitted(graphdef, state, jax.random.fold_in(root, b), ids, mask, special_ids=special,
                          mask_id=int(tokenizer.mask_token_id), vocab_size=int(model.config.vocab_size),
                          probability=float(probability),
                          max_predictions=masking.default_max_predictions(length, probability))
        correct, nll, count = correct + float(c), nll + float(n), count + float(k)
    if count == 0:
        raise ValueError("no token of the held-out text could be masked (every line is special tokens only).")
    return {"accuracy": correct / count, "loss": nll / count, "masked_tokens": int(count), "lines": len(lines)}
