"""ASE's orthogonality term: the live features of neutral words kept orthogonal to a fixed
gender direction.

    value = sum over batch and positions of |<m_t * h_t, g>|

h_t: the last encoder layer of the step's MLM forward pass (shared with the MLM term, dropout
included, as the released code reads `hidden_states[-1]` of that same pass); m_t: the batch's
`neutral_mask` (1 on the first occurrence of each neutral word); g: the unit gender direction,
computed once before training from the starting model and held fixed (`gender_direction`).
A sum, not a mean, as released; it is differentiated with respect to the parameters through h.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ncjax import data, terms
from ncjax.terms import mlm

_GENDER_FILES = {"gender-gnglove": ("gnglove/female_word_file.txt", "gnglove/male_word_file.txt"),
                 "gender-adept": ("adept/female.txt", "adept/male.txt")}


def _word_lines(rel: str) -> list[str]:
    return [ln.strip() for ln in data.resource_path("words", *rel.split("/")).read_text(encoding="utf-8").splitlines()
            if ln.strip()]


def _summed_states(model, tokenizer, words: list[str], max_positions: int) -> np.ndarray:
    """Sum of last-layer states over every word piece of the words joined into one sentence
    ([CLS]/[SEP] left out); a sentence longer than the model's positions runs in chunks."""
    pieces = tokenizer.encode(" ".join(words), add_special_tokens=False)
    chunk = max_positions - 2
    total = 0.0
    for i in range(0, len(pieces), chunk):
        ids = [tokenizer.cls_token_id, *pieces[i:i + chunk], tokenizer.sep_token_id]
        h = model.encode(jnp.asarray([ids], jnp.int32))  # no dropout key: eval mode
        total = total + np.asarray(h[0, 1:-1], np.float64).sum(0)
    return total


def gender_direction(graphdef, params, tokenizer, word_set: str, max_positions: int) -> np.ndarray:
    """[hidden] float32: normalise((male_sum - female_sum) / n) with the sums of
    `_summed_states` over the word set's female and male lists (n words a side, repeats kept, as
    the released code joins the raw lines) under the starting model. Nothing is differentiated."""
    if word_set not in _GENDER_FILES:
        raise ValueError(f"config orthogonal.word_set={word_set!r} is not one of {', '.join(_GENDER_FILES)}.")
    female, male = (_word_lines(rel) for rel in _GENDER_FILES[word_set])
    model = nnx.merge(graphdef, params)
    v = (_summed_states(model, tokenizer, male, max_positions)
         - _summed_states(model, tokenizer, female, max_positions)) / len(male)
    return (v / np.linalg.norm(v)).astype(np.float32)


def orthogonality(last_hidden: jax.Array, neutral: jax.Array, direction: jax.Array) -> jax.Array:
    """sum |<m * h, g>|: last_hidden [B, L, H], neutral [B, L] 0/1, direction [H] -> scalar
    float32. Differentiable in last_hidden."""
    targets = neutral[..., None].astype(jnp.float32) * last_hidden.astype(jnp.float32)
    return jnp.sum(jnp.abs(jnp.einsum("blh,h->bl", targets, direction, precision=jax.lax.Precision.HIGHEST)))


@dataclasses.dataclass(frozen=True, eq=False)
class Orthogonal:
    """weight * sum |<m h, g>| (module docstring); no state."""

    masking: mlm.MaskSpec
    direction: np.ndarray  # [H] float32, unit norm
    weight: float = 1.0
    name: str = "orthogonal"
    fields: tuple[str, ...] = ("input_ids", "attention_mask", "neutral_mask")

    def init_state(self) -> None:
        return None

    def __call__(self, ctx: terms.Context, state: None) -> tuple[jax.Array, None, dict]:
        _, _, out = mlm.masked_forward(ctx, self.masking)
        value = orthogonality(out.last_hidden, terms.flat(ctx.batch["neutral_mask"]), jnp.asarray(self.direction))
        return value, None, {}


def build(config: Any, setup: terms.Setup) -> Orthogonal | None:
    """weight config.orthogonal.weight (off at 0); the direction from config.orthogonal.word_set."""
    o = config.orthogonal
    if float(o.weight) == 0:
        return None
    g = gender_direction(setup.graphdef, setup.params, setup.tokenizer, o.word_set,
                         setup.model_config.max_position_embeddings)
    return Orthogonal(mlm.MaskSpec.from_setup(setup), g, weight=float(o.weight))
