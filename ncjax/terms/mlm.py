"""The masked-LM term: cross-entropy at dynamically masked positions.

Masks are drawn on device from the step's MASK_STREAM key (`ncjax.masking.mask_tokens`), the
model runs once on the masked ids with the MLM head only at the masked positions, and the value
is the mean cross-entropy over the masked tokens of the global batch. A batch whose
`input_ids` hold several views per example ([batch, views, length], Mabel) is masked and scored
as batch * views rows, one mean over all of them.

`masked_forward(ctx, spec)` is the shared, cached forward pass: the NC3 term reads the same
one, so MLM + NC3 runs the encoder once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ncjax import masking as masking_lib
from ncjax import terms


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Static MLM-masking settings: special ids never masked, [MASK] id, vocabulary size,
    selection probability and the per-sequence cap P on predictions."""

    special_ids: tuple[int, ...]
    mask_id: int
    vocab_size: int
    probability: float
    max_predictions: int
    given: bool = False  # the batch's mlm_labels mark the positions (already [MASK]ed): no dynamic masking

    @classmethod
    def from_setup(cls, setup: terms.Setup) -> MaskSpec:
        """From the config's data.mlm_probability / data.max_predictions_per_seq (0 = mean + 4
        sd of the masked count at the batch's sequence length) and the tokenizer; when the data
        carries `mlm_labels` (the ASE schema), those positions with P = max_predictions_per_seq
        (0: 1, one pronoun per sentence)."""
        d = setup.config.data
        if "mlm_labels" in setup.fields:
            return cls((), int(setup.tokenizer.mask_token_id), setup.model_config.vocab_size, 0.0,
                       int(d.max_predictions_per_seq or 1), given=True)
        return cls(
            special_ids=tuple(masking_lib.special_token_ids(setup.tokenizer)),
            mask_id=int(setup.tokenizer.mask_token_id),
            vocab_size=setup.model_config.vocab_size,
            probability=float(d.mlm_probability),
            max_predictions=int(d.max_predictions_per_seq
                                or masking_lib.default_max_predictions(setup.length, d.mlm_probability)),
        )


def masked_forward(ctx: terms.Context, spec: MaskSpec) -> tuple[dict, dict, Any]:
    """(inputs, masks, output) of the step's masked forward pass, computed once per step.

    inputs: {'input_ids', 'attention_mask'} [rows, length] (views flattened into rows);
    masks: `masking.mask_tokens`' dict ([rows, length] ids, [rows, P] positions/labels/weights);
    output: the model's MaskedLMOutput with logits and mlm_hidden at the P positions and
    last_hidden [rows, length, hidden]. Differentiable in the parameters through the output."""

    def compute():
        inputs = {k: terms.flat(ctx.batch[k]) for k in ("input_ids", "attention_mask")}
        if spec.given:
            masks = given_masks(inputs["input_ids"], terms.flat(ctx.batch["mlm_labels"]), spec.max_predictions)
        else:
            masks = masking_lib.mask_tokens(
                ctx.key(terms.MASK_STREAM), inputs["input_ids"], inputs["attention_mask"],
                special_ids=spec.special_ids, mask_id=spec.mask_id, vocab_size=spec.vocab_size,
                probability=spec.probability, max_predictions=spec.max_predictions,
            )
        out = ctx.model(masks["input_ids"], inputs["attention_mask"], positions=masks["positions"],
                        dropout_key=ctx.dropout_key(0))
        return inputs, masks, out

    return ctx.cached(("masked_forward", spec), compute)


def given_masks(input_ids: jax.Array, labels: jax.Array, max_predictions: int) -> dict:
    """The masks dict of `masking.mask_tokens` for labels fixed in the data.

    input_ids: [B, L] (already holding [MASK] where scored); labels: [B, L] int, the target id
    where scored and -100 elsewhere. The first `max_predictions` scored positions of each row
    are kept (P static). Returns {'input_ids' (unchanged), 'positions', 'labels', 'weights'}."""
    scored = labels >= 0
    length = labels.shape[-1]
    # Scored positions first, in order; top_k of a decreasing key keeps that order.
    key = jnp.where(scored, length - jnp.arange(length), -1)
    top, positions = jax.lax.top_k(key, max_predictions)
    positions = positions.astype(jnp.int32)
    return {"input_ids": input_ids, "positions": positions,
            "labels": jnp.maximum(jnp.take_along_axis(labels, positions, axis=1), 0),
            "weights": (top >= 0).astype(jnp.float32)}


def masked_nll(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over the weighted positions and their count.

    logits: [..., vocab] float32; labels: [...] int; weights: [...] 0/1. Returns (mean over the
    positions with weight 1 (0 when there are none), number of such positions)."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    count = jnp.sum(weights)
    return jnp.sum(nll * weights) / jnp.maximum(count, 1.0), count


@dataclasses.dataclass(frozen=True)
class MLM:
    """Dynamic-masking MLM (see the module docstring); no state. metrics: masked_tokens."""

    masking: MaskSpec
    weight: float = 1.0
    name: str = "mlm"
    fields: tuple[str, ...] = ("input_ids", "attention_mask")

    def __post_init__(self):
        if self.masking.given:
            object.__setattr__(self, "fields", self.fields + ("mlm_labels",))

    def init_state(self) -> None:
        return None

    def __call__(self, ctx: terms.Context, state: None) -> tuple[jax.Array, None, dict]:
        _, masks, out = masked_forward(ctx, self.masking)
        value, count = masked_nll(out.logits, masks["labels"], masks["weights"])
        return value, None, {"masked_tokens": count}


def build(config: Any, setup: terms.Setup) -> MLM | None:
    """The MLM term with weight config.mlm.weight (off at 0)."""
    weight = float(config.mlm.weight)
    if weight == 0:
        return None
    return MLM(MaskSpec.from_setup(setup), weight=weight)
