"""Task heads on the ncjax encoder, as pure functions of a parameter dict.

A head reads the last encoder layer `h: [batch, length, hidden]` (float32) and the batch, and
returns logits; its loss returns one value per example `[batch]` (the loop weights and averages
them). Everything here is differentiated with respect to the head parameters and, through `h`,
the encoder.

- `SequenceHead`: `transformers.BertForSequenceClassification` exactly: pooled = tanh([CLS] @ W_p
  + b_p) (the checkpoint's pretrained pooler when it has one, else initialised as transformers
  does: normal(0.02), zero bias), dropout, then a linear classifier. num_labels 1 is regression
  (mean squared error on the single logit), otherwise softmax cross-entropy.
- `SpanPairHead`: pronoun resolution over token representations. Each span (pronoun, candidate
  A, candidate B) is the mean of its tokens' vectors; a candidate's score is an MLP of
  [p; m; p * m]; logits are [score(A), score(B), 0], the last being "neither" (GAP's third case).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ncjax.model import _dropout  # the encoder's dropout, so heads drop out the same way

Array = jax.Array
INIT_STD = 0.02  # transformers' BertConfig.initializer_range default


def _dense(key: Array, n_in: int, n_out: int, std: float = INIT_STD) -> dict[str, Array]:
    return {"kernel": std * jax.random.normal(key, (n_in, n_out), jnp.float32), "bias": jnp.zeros((n_out,), jnp.float32)}


def _apply(p: dict[str, Array], x: Array) -> Array:
    return x @ p["kernel"] + p["bias"]


@dataclasses.dataclass(frozen=True)
class SequenceHead:
    """num_labels: classes (1 = regression); dropout: before the classifier (BERT's hidden dropout)."""

    num_labels: int
    dropout: float = 0.1

    def init(self, key: Array, hidden: int, pooler: dict[str, np.ndarray] | None) -> dict[str, Any]:
        k_pool, k_cls = jax.random.split(key)
        pool = _dense(k_pool, hidden, hidden) if pooler is None else {
            "kernel": jnp.asarray(pooler["kernel"]), "bias": jnp.asarray(pooler["bias"])}
        return {"pooler": pool, "classifier": _dense(k_cls, hidden, self.num_labels)}

    def logits(self, params: dict[str, Any], h: Array, batch: dict[str, Array], key: Array | None) -> Array:
        """h: [batch, length, hidden] -> [batch, num_labels] float32."""
        pooled = jnp.tanh(_apply(params["pooler"], h[:, 0].astype(jnp.float32)))
        return _apply(params["classifier"], _dropout(pooled, self.dropout, key))

    def loss(self, logits: Array, batch: dict[str, Array]) -> Array:
        """[batch] per-example loss: squared error (regression) or cross-entropy against `labels`."""
        if self.num_labels == 1:
            return jnp.square(logits[:, 0] - batch["labels"].astype(jnp.float32))
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, batch["labels"].astype(jnp.int32)[:, None], axis=-1)[:, 0]


def span_means(h: Array, spans: Array) -> Array:
    """h: [batch, length, hidden]; spans: [batch, S, 2] int token [start, end) -> [batch, S, hidden]."""
    pos = jnp.arange(h.shape[1])
    inside = (pos[None, None, :] >= spans[..., :1]) & (pos[None, None, :] < spans[..., 1:])  # [b, S, L]
    w = inside.astype(jnp.float32)
    return jnp.einsum("bsl,bld->bsd", w, h.astype(jnp.float32)) / jnp.maximum(w.sum(-1, keepdims=True), 1.0)


@dataclasses.dataclass(frozen=True)
class SpanPairHead:
    """Scores candidates 1..S-1 against span 0 (the pronoun); `neither` adds a fixed 0 logit."""

    width: int = 256
    dropout: float = 0.1
    neither: bool = True

    def init(self, key: Array, hidden: int, pooler: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        k1, k2 = jax.random.split(key)
        return {"hidden": _dense(k1, 3 * hidden, self.width), "score": _dense(k2, self.width, 1)}

    def logits(self, params: dict[str, Any], h: Array, batch: dict[str, Array], key: Array | None) -> Array:
        """-> [batch, S - 1 (+1 with neither)] float32: one logit per candidate (then 'neither')."""
        spans = span_means(h, batch["spans"])
        p, m = jnp.broadcast_to(spans[:, :1], spans[:, 1:].shape), spans[:, 1:]
        x = _dropout(jnp.concatenate([p, m, p * m], axis=-1), self.dropout, key)
        s = _apply(params["score"], jax.nn.gelu(_apply(params["hidden"], x), approximate=False))[..., 0]
        if self.neither:
            s = jnp.concatenate([s, jnp.zeros_like(s[:, :1])], axis=-1)
        return s

    def loss(self, logits: Array, batch: dict[str, Array]) -> Array:
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, batch["labels"].astype(jnp.int32)[:, None], axis=-1)[:, 0]
