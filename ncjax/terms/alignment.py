"""Mabel's alignment loss: the premise-hypothesis similarities of the original and of the
gender-swapped views should agree.

  A  = cos(orig premise_i, orig hyp_j) / temperature        [B, B]
  A' = cos(aug premise_i,  aug hyp_j)  / temperature        [B, B]
  loss = mean over i of sum_j (A_ij - A'_ij)^2

as MABEL's `align_loss_fct(orig_cos_sim, aug_cos_sim)` (squared row norm, mean over rows) with
the contrastive similarity (temperature 0.05, so the value is 400x the raw-cosine one and grows
with B); MABEL's `align_temp` 0.05 is this term's weight. The square is written d * d: the
gradient of norm(d) ** 2 is NaN at d = 0. It reads the embeddings and head of the contrastive
term (`terms.contrastive`), which must be in the recipe.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ncjax import terms
from ncjax.terms import contrastive


def alignment(orig_premise: jax.Array, orig_hyp: jax.Array, aug_premise: jax.Array, aug_hyp: jax.Array,
              temperature: float) -> jax.Array:
    """The loss of the module docstring. Each input [B, H]; returns a float32 scalar,
    differentiable in all four."""
    d = (contrastive.cosine(orig_premise, orig_hyp) - contrastive.cosine(aug_premise, aug_hyp)) / temperature
    return jnp.mean(jnp.sum(d * d, axis=1))


@dataclasses.dataclass(frozen=True)
class Alignment:
    """weight * alignment (module docstring); no state, no parameters of its own."""

    temperature: float = 0.05
    weight: float = 0.05
    name: str = "alignment"
    fields: tuple[str, ...] = ("input_ids", "attention_mask")

    def init_state(self) -> None:
        return None

    def __call__(self, ctx: terms.Context, state: None) -> tuple[jax.Array, None, dict]:
        return alignment(*contrastive.embeddings(ctx), self.temperature), None, {}


def build(config: Any, setup: terms.Setup) -> Alignment | None:
    """weight config.alignment.weight (0: off), with the contrastive term's temperature."""
    weight = float(config.alignment.weight)
    if weight == 0:
        return None
    contrastive.check_schema(config, "alignment")
    if "contrastive" not in config.loss.terms or float(config.contrastive.weight) == 0:
        raise ValueError("loss term 'alignment' reads the sentence-embedding head of the 'contrastive' term; list "
                         "'contrastive' in loss.terms with a non-zero contrastive.weight.")
    return Alignment(temperature=float(config.contrastive.temperature), weight=weight)
