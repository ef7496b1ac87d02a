"""Held-out masked-token accuracy of a masked LM: how well it fills in masks on text it did not
train on.

`masked_accuracy` masks each row of a tokenised held-out set exactly as training does
(`ncjax.masking.mask_tokens`: 15 % of the real, non-special tokens; 80 % [MASK], 10 % random,
10 % kept), with the masks of batch b keyed by fold_in(PRNGKey(seed), b), so the same rows, seed
and batch size always give the same masks, and reports over every selected position:

    accuracy = fraction of positions whose argmax prediction is the original token
    loss     = mean cross-entropy of the original token (nats)

Padding rows and padded positions never count. Training logs both as `heldout/accuracy` and
`heldout/loss` when the config's `heldout.path` names a corpus (`heldout_arrays`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ncjax import data, masking


def _batch_stats(graphdef, params, key, ids, mask, *, special_ids, mask_id, vocab_size, probability,
                 max_predictions):
    """(correct, summed nll, counted positions) of one [batch, length] batch; nothing differentiated."""
    model = nnx.merge(graphdef, params)
    m = masking.mask_tokens(key, ids, mask, special_ids=special_ids, mask_id=mask_id, vocab_size=vocab_size,
                            probability=probability, max_predictions=max_predictions)
    logits = model(m["input_ids"], mask, positions=m["positions"]).logits.astype(jnp.float32)  # [batch, P, vocab]
    w = m["weights"]
    correct = (jnp.argmax(logits, axis=-1) == m["labels"]).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, m["labels"])
    return jnp.sum(correct * w), jnp.sum(nll * w), jnp.sum(w)


_jitted = jax.jit(_batch_stats, static_argnames=("graphdef", "special_ids", "mask_id", "vocab_size", "probability",
                                                 "max_predictions"))


def masked_accuracy(graphdef: Any, params: Any, arrays: dict[str, np.ndarray], *, special_ids: tuple[int, ...],
                    mask_id: int, vocab_size: int, probability: float = 0.15, batch_size: int = 32,
                    seed: int = 0) -> dict[str, float]:
    """{'accuracy', 'loss', 'masked_tokens'} of the masked LM (graphdef, params) on `arrays`.

    arrays: {'input_ids', 'attention_mask'}: [N, L] int (as `ncjax.data.tokenize` gives). The last
    batch is padded with empty rows (which select nothing), so every batch has one shape. Raises
    ValueError when no position could be masked."""
    ids, mask = np.asarray(arrays["input_ids"], np.int32), np.asarray(arrays["attention_mask"], np.int32)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(f"held-out arrays must be [N, L] input_ids and attention_mask, got {ids.shape} and {mask.shape}.")
    if not 0.0 < probability < 1.0:
        raise ValueError(f"masking probability {probability} must be in (0, 1).")
    if batch_size < 1:
        raise ValueError(f"held-out batch size {batch_size} must be at least 1.")
    length = ids.shape[1]
    options = dict(special_ids=tuple(int(i) for i in special_ids), mask_id=int(mask_id), vocab_size=int(vocab_size),
                   probability=float(probability),
                   max_predictions=masking.default_max_predictions(length, probability))
    root = jax.random.PRNGKey(seed)
    totals = np.zeros(3, np.float64)
    for b, start in enumerate(range(0, ids.shape[0], batch_size)):
        bi = np.zeros((batch_size, length), np.int32)
        bm = np.zeros((batch_size, length), np.int32)
        rows = slice(start, min(start + batch_size, ids.shape[0]))
        n = rows.stop - rows.start
        bi[:n], bm[:n] = ids[rows], mask[rows]
        stats = _jitted(graphdef, params, jax.random.fold_in(root, b), bi, bm, **options)
        totals += np.asarray([float(s) for s in stats])
    correct, nll, count = totals
    if count == 0:
        raise ValueError("no token of the held-out text could be masked (every row is special tokens only).")
    return {"accuracy": correct / count, "loss": nll / count, "masked_tokens": int(count)}


def _spec(heldout: Any, data_config: Any, length: int) -> data.CorpusSpec:
    return dataclasses.replace(data.spec_from_config(data_config), path=heldout.path, format=heldout.format,
                               cda="none", padding="clean", max_length=length)


def _renamed(e: Exception) -> Exception:
    return type(e)(str(e).replace("data.path", "heldout.path").replace("data.format", "heldout.format"))


def check(heldout: Any, data_config: Any) -> None:
    """Validates a config's `heldout` block without reading the corpus; raises ValueError or
    FileNotFoundError with one sentence naming the heldout key."""
    if heldout.every_steps < 0 or heldout.max_examples < 0 or heldout.batch_size < 1:
        raise ValueError("config heldout.every_steps and heldout.max_examples must be >= 0 and heldout.batch_size >= 1.")
    if data_config.schema != "sequences":
        raise ValueError(f"config heldout.path applies to data.schema='sequences' only, not {data_config.schema!r}.")
    try:
        data.check_corpus(_spec(heldout, data_config, 0))
    except (ValueError, FileNotFoundError) as e:
        raise _renamed(e) from None


def heldout_arrays(heldout: Any, data_config: Any, tokenizer, *, cache_dir: str | Path, length: int,
                   position_limit: int) -> dict[str, np.ndarray]:
    """The first `heldout.max_examples` rows (0 = all) of the corpus `heldout.path`, read,
    sentence-split and tokenised to `length` by the rules of the training corpus (`data_config`)
    but without augmentation: {'input_ids', 'attention_mask'}: [N, length] int32."""
    try:
        arrays = data.load_corpus(_spec(heldout, data_config, length), tokenizer, cache_dir=cache_dir,
                                  position_limit=position_limit)
    except (ValueError, FileNotFoundError) as e:
        raise _renamed(e) from None
    if heldout.max_examples:
        arrays = {k: v[: heldout.max_examples] for k, v in arrays.items()}
    return arrays
