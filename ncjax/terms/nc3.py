"""The NC3 fairness regulariser as a loss term (formulas: `ncjax.penalty`, docs/penalty).

It reads the step's shared masked forward pass (`terms.mlm.masked_forward`), so MLM + NC3 runs
the encoder once: the features are the last encoder layer or the MLM-transform output, at every
real position or only at the masked ones, paired with the input or original token (shifted by
`label_shift`). Its state is the running class statistics {'sums': [K, hidden], 'counts': [K]}
(accumulated over the run in 'reference' mode, an EMA or unused in 'batch' mode), kept in the
train state and in every checkpoint. The decoder rows W[G] enter through the tied word
embeddings (or the untied decoder when the model has one), so R's gradient reaches them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ncjax import classes, logs, penalty, terms, words
from ncjax.terms import mlm

log = logging.getLogger(__name__)


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


def penalty_inputs(model, out, inputs, masks, spec: PenaltySpec):
    """(features [B, N, H], labels [B, N], weights [B, N]) that the NC3 statistics read.

    out: the model output of the masked forward; inputs: {'input_ids', 'attention_mask'}
    [B, length] before masking; masks: `masking.mask_tokens`' dict. N is the sequence length
    (positions 'all') or P (positions 'masked')."""
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
    ids = masks["input_ids"] if spec.labels == "input" else inputs["input_ids"]
    labels, weights = penalty.penalty_targets(ids, inputs["attention_mask"], label_shift=spec.label_shift)
    return feats, labels, weights


@dataclasses.dataclass(frozen=True, eq=False)
class NC3:
    """alpha * R over the word-set classes; metrics nc3_valid, nc3_classes."""

    spec: PenaltySpec
    masking: mlm.MaskSpec
    class_ids: np.ndarray  # [K] int32, the resolved word-set ids
    hidden: int  # width of the features the statistics read (classes.feature_size)
    name: str = "nc3"
    fields: tuple[str, ...] = ("input_ids", "attention_mask")

    @property
    def weight(self) -> float:
        return self.spec.alpha

    def init_state(self) -> dict:
        return penalty.init_state(len(self.class_ids), self.hidden)

    def __call__(self, ctx: terms.Context, state: dict) -> tuple[jax.Array, dict, dict]:
        inputs, masks, out = mlm.masked_forward(ctx, self.masking)
        feats, labels, weights = penalty_inputs(ctx.model, out, inputs, masks, self.spec)
        slot_table = penalty.make_slot_table(self.class_ids, self.masking.vocab_size)
        class_weights = ctx.model.decoder_weight()[jnp.asarray(self.class_ids, jnp.int32)]  # [K, H]
        r, new_state, m = penalty.nc3_penalty(
            state, feats, labels, weights, class_weights, slot_table,
            mode=self.spec.mode, ema=self.spec.ema, stop_gradient_mu=self.spec.stop_gradient_mu,
        )
        return r, new_state, {"nc3_valid": m["nc3_valid"], "nc3_classes": m["nc3_classes"]}


def resolve_class_ids(config: Any, setup: terms.Setup) -> np.ndarray:
    """The word set of config.penalty resolved under the tokenizer ([K] int32); process 0
    writes the full report to <workdir>/word_set.json."""
    resolution = words.resolve(words.load_word_set(config.penalty.word_set), setup.tokenizer, config.penalty.policy)
    log.info("%s (full report: %s)", resolution.summary().splitlines()[0], setup.workdir / "word_set.json")
    if setup.is_main:
        logs.write_json_atomic(setup.workdir / "word_set.json", resolution.to_dict())
    return np.asarray(resolution.ids, np.int32)


def build(config: Any, setup: terms.Setup) -> NC3 | None:
    """The NC3 term with weight config.penalty.alpha (off, never computed, at 0)."""
    spec = PenaltySpec.from_config(config.penalty)
    if spec.alpha <= 0:
        return None
    width = classes.feature_size(setup.model_config, spec.features, "config penalty.features")
    return NC3(spec, mlm.MaskSpec.from_setup(setup), resolve_class_ids(config, setup), width)
