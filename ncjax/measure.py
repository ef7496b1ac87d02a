"""Streaming a corpus through a masked LM for the neural-collapse statistics.

`measure(model, tokenizer, lines, ...)` tokenises each line as one sequence (special tokens
added, truncated to the model's maximum length), runs the model twice over length-bucketed
batches (pass 1: counts and sums; pass 2: within-class deviations and NC4 decisions, see
`ncjax.collapse`) and returns the NC metrics with the settings used. `read_corpus` reads
the text, TSV-column and JSON-Lines-field corpora the CLI accepts.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from ncjax import corpus
from ncjax.classes import feature_size, make_slot_table, shift_targets
from ncjax.collapse import accumulate_means, accumulate_second, class_means, class_subset, init_stats, metrics

log = logging.getLogger(__name__)


def read_corpus(path: str, *, column: str | int | None = None, field: str | None = None) -> list[str]:
    """Non-blank texts of a corpus file, read by `ncjax.corpus` (the rules training uses): JSON
    Lines (`.jsonl`, or `field` given: that field of each object, default 'text'), TSV or CSV
    (`.tsv`/`.csv`, or `column` given: that column by header name, or by 0-based index for a file
    without a header; default the 'Text'/'text' column), else plain text (one sequence a line)."""
    fmt = "jsonl" if field is not None else corpus.format_of(path)
    if column is not None and fmt not in ("tsv", "csv"):
        fmt = "tsv"
    if fmt in ("tsv", "csv"):
        key: Any = ("Text", "text") if column is None else int(column) if str(column).isdigit() else column
    else:
        key, fmt = field or "text", fmt if fmt == "jsonl" else "text"
    return [t for t in corpus.read_rows(path, fmt, key) if t.strip()]


def _tokenize(tokenizer, lines, max_length, label_shift, max_tokens, chunk=1024):
    """[(ids, labels, weights)] per line, each [length] int32; tokenises in chunks and stops once
    max_tokens counted positions are collected."""
    seqs, budget = [], max_tokens if max_tokens else None
    for start in range(0, len(lines), chunk):
        enc = tokenizer(
            list(lines[start:start + chunk]), truncation=True, max_length=max_length,
            add_special_tokens=True, return_special_tokens_mask=True,
        )
        for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
            ids = np.asarray(ids, np.int32)
            counted = 1 - np.asarray(special, np.int32)
            labels, weights = shift_targets(ids, counted, label_shift=label_shift, xp=np)
            if budget is not None:
                weights = weights * (np.cumsum(weights) <= budget)
                budget -= int(weights.sum())
            seqs.append((ids, labels, weights))
            if budget is not None and budget <= 0:
                return seqs
    return seqs


def _features(graphdef, state, ids, mask, features):
    out = nnx.merge(graphdef, state)(ids, mask, None, with_logits=False)
    return out.mlm_hidden if features == "mlm_transform" else out.last_hidden


# Module-level jits, keyed on the (hashable) graph definition: measuring several checkpoints of
# one architecture compiles once.
@functools.partial(jax.jit, static_argnames=("graphdef", "features"))
def _pass1(stats, state, ids, mask, labels, weights, table, *, graphdef, features):
    return accumulate_means(stats, _features(graphdef, state, ids, mask, features), labels, weights, table)


@functools.partial(jax.jit, static_argnames=("graphdef", "features", "block"))
def _pass2(stats, state, ids, mask, labels, weights, table, means, class_w, included, *, graphdef, features, block):
    x = _features(graphdef, state, ids, mask, features)
    return accumulate_second(stats, x, labels, weights, table, means, class_w, included, block=block)


def measure(
    model: Any,
    tokenizer: Any,
    lines: list[str],
    *,
    classes: str = "gender-adept",
    policy: str = "first_piece",
    features: str = "mlm_transform",
    label_shift: int = 0,
    min_count: int = 1,
    max_tokens: int | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    seed: int = 0,
    block: int = 1024,
    mesh: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Streams `lines` (one sequence each, special tokens added, truncated to the model's
    maximum length) through an ncjax BertForMaskedLM twice and returns the NC metrics plus the
    settings used. features: 'mlm_transform' (decoder input) or 'last_hidden'; positions that
    count: non-special tokens (on the label side for label_shift 1), at most max_tokens of them.
    With a ('data',) `mesh`, batches are sharded over it (batch_size must divide evenly)."""
    if features not in ("mlm_transform", "last_hidden"):
        raise ValueError(f"features must be mlm_transform or last_hidden, got {features!r}.")
    if label_shift not in (0, 1):
        raise ValueError(f"label_shift must be 0 or 1, got {label_shift!r}.")
    lines = [t for t in lines if t.strip()]
    if not lines:
        raise ValueError("the corpus is empty: it has no non-blank line to measure.")
    config = model.config
    width = feature_size(config, features, "features")
    limit = min(config.max_position_embeddings, getattr(tokenizer, "model_max_length", 10**9))
    max_length = min(max_length or limit, limit)
    seqs = _tokenize(tokenizer, lines, max_length, label_shift, max_tokens)
    seen = np.unique(np.concatenate([lab[w > 0] for _, lab, w in seqs]))
    subset = class_subset(classes, tokenizer, policy=policy, seen_ids=seen, seed=seed)
    if subset.resolution is not None:
        summary = subset.resolution.summary()
        log.info(summary.splitlines()[0])
        log.debug(summary)
    if subset.ids.max() >= config.vocab_size:
        raise ValueError(f"class id {int(subset.ids.max())} is outside the model vocabulary ({config.vocab_size}); "
                         "use the model's own tokenizer.")
    if not np.isin(seen, subset.ids).any():
        raise ValueError(f"no token of the class set {classes!r} occurs in the corpus; use a corpus that contains them.")
    k = subset.ids.size
    table = make_slot_table(subset.ids, config.vocab_size)
    class_w = model.decoder_weight()[jnp.asarray(subset.ids)]
    graphdef, state = nnx.split(model)
    static = {"graphdef": graphdef, "features": features}
    if mesh is not None:
        from ncjax import parallel

        parallel.check_batch_size(batch_size, mesh, key="batch size")
        put_batch = lambda a: jax.device_put(a, parallel.batch_sharded(mesh))  # noqa: E731
        put_rep = lambda a: jax.device_put(a, parallel.replicated(mesh))  # noqa: E731
    else:
        put_batch = put_rep = jnp.asarray
    state = jax.tree.map(put_rep, state)
    table, class_w = put_rep(table), put_rep(class_w)

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = [seqs[i] for i in order[start:start + batch_size]]
        # power-of-two lengths: few compilations, at most twice the padding
        length = min(max(16, 1 << (max(len(r[0]) for r in rows) - 1).bit_length()), max_length)
        arr = np.zeros((4, batch_size, length), np.int32)
        for b, (ids, lab, w) in enumerate(rows):
            arr[0, b, :len(ids)], arr[1, b, :len(ids)] = ids, 1
            arr[2, b, :len(ids)], arr[3, b, :len(ids)] = lab, w
        batches.append(arr)

    stats = jax.tree.map(put_rep, init_stats(k, width))
    for arr in tqdm(batches, desc="collapse pass 1", disable=not progress):
        stats = _pass1(stats, state, *(put_batch(a) for a in arr), table, **static)
    counts = np.asarray(stats["counts"])
    included = counts >= max(min_count, 1)
    if included.sum() < 2:
        raise ValueError(
            f"only {int(included.sum())} class(es) of {classes!r} occur at least {max(min_count, 1)} time(s) in the "
            "corpus; NC metrics need 2: use a larger corpus, another class set or a lower --min-count."
        )
    means = put_rep(class_means(stats))
    inc = put_rep(jnp.asarray(included))
    for arr in tqdm(batches, desc="collapse pass 2", disable=not progress):
        stats = _pass2(stats, state, *(put_batch(a) for a in arr), table, means, class_w, inc, block=block, **static)
    result = metrics(jax.tree.map(np.asarray, stats), np.asarray(class_w), min_count=min_count)
    result.update(
        num_tokens=int(sum(int(w.sum()) for _, _, w in seqs)),
        num_sequences=len(seqs),
        num_classes_requested=k,
        classes=classes,
        policy=policy if subset.resolution is not None else None,
        features=features,
        label_shift=label_shift,
        min_count=min_count,
        max_tokens=max_tokens,
        max_length=max_length,
        seed=seed,
    )
    if subset.resolution is not None:
        r = subset.resolution
        result["word_set"] = {
            "num_ids": len(r.ids), "num_dropped": len(r.dropped),
            "num_shared_ids": len(r.collisions), "generic_pieces": list(r.generic_pieces),
        }
    return result
