"""Mabel's entailment contrastive loss (InfoNCE), with the sentence-embedding head it trains.

MABEL (He et al., 2022; github:princeton-nlp/MABEL, training/model.py) embeds each of the four
views of an example (`ncjax.pairs`: original premise, original hypothesis, augmented premise,
augmented hypothesis) by its own two-layer head on the last layer's [CLS] state,
z = dense2(tanh(dense1(h_L[:, 0]))), and pulls every premise to its hypothesis:

  z0 = [orig premise; aug premise], z1 = [orig hyp; aug hyp]            (2B rows each)
  S  = cos(z0_i, z1_j) / temperature                                     [2B, 2B]
  loss = mean over i of cross-entropy(S_i, i)

so every other hypothesis in the global batch, including the gender-swapped hypothesis of the
same example, is a negative. The head is this term's trainable parameters (`init_params`,
normal(initializer_range) kernels and zero biases, as transformers initialises a Linear): the
optimiser updates it with the model and checkpoints hold it, and the export leaves it out as
MABEL's conversion dropped it. The views run through the encoder unmasked, in a forward pass of
their own (MABEL's MLM reads a separate masked pass, `terms.mlm.masked_forward`); the alignment
term (`terms.alignment`) reads the same embeddings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ncjax import terms

_HIGH = jax.lax.Precision.HIGHEST
_EPS = 1e-8  # torch.nn.CosineSimilarity's eps


def init_head(key: jax.Array, hidden: int, std: float) -> dict:
    """{'dense1', 'dense2'}: {'kernel' [hidden, hidden] normal(std), 'bias' [hidden] zeros}."""
    k1, k2 = jax.random.split(key)
    layer = lambda k: {"kernel": std * jax.random.normal(k, (hidden, hidden), jnp.float32),  # noqa: E731
                       "bias": jnp.zeros((hidden,), jnp.float32)}
    return {"dense1": layer(k1), "dense2": layer(k2)}


def pool(head: dict, cls: jax.Array) -> jax.Array:
    """[..., hidden] [CLS] states -> [..., hidden] z = dense2(tanh(dense1(cls))) in float32.
    Differentiable in `head` and `cls`."""
    x = cls.astype(jnp.float32)
    x = jnp.tanh(jnp.dot(x, head["dense1"]["kernel"], precision=_HIGH) + head["dense1"]["bias"])
    return jnp.dot(x, head["dense2"]["kernel"], precision=_HIGH) + head["dense2"]["bias"]


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """[n, H], [m, H] -> [n, m] cosine similarities (norms floored at 1e-8)."""
    na = jnp.maximum(jnp.sqrt(jnp.sum(a * a, -1, keepdims=True)), _EPS)
    nb = jnp.maximum(jnp.sqrt(jnp.sum(b * b, -1, keepdims=True)), _EPS)
    return jnp.dot(a / na, (b / nb).T, precision=_HIGH)


def info_nce(orig_premise: jax.Array, orig_hyp: jax.Array, aug_premise: jax.Array, aug_hyp: jax.Array,
             temperature: float) -> jax.Array:
    """The contrastive loss of the module docstring. Each input [B, H]; returns a float32
    scalar, differentiable in all four."""
    z0 = jnp.concatenate([orig_premise, aug_premise])
    z1 = jnp.concatenate([orig_hyp, aug_hyp])
    s = cosine(z0, z1) / temperature
    return jnp.mean(jax.nn.logsumexp(s, axis=1) - jnp.diagonal(s))


def embeddings(ctx: terms.Context, owner: str = "contrastive") -> tuple[jax.Array, ...]:
    """(orig premise, orig hyp, aug premise, aug hyp) z's, each [B, H] float32, of the step's
    unmasked forward of the four views (computed once per step; dropout stream index 1).
    Differentiable in the model's parameters and the head (ctx.term_params[owner])."""

    def compute():
        ids, mask = ctx.batch["input_ids"], ctx.batch["attention_mask"]
        b, views = ids.shape[:2]
        h = ctx.model.encode(terms.flat(ids), terms.flat(mask), dropout_key=ctx.dropout_key(1))
        z = pool(ctx.term_params[owner], h[:, 0]).reshape(b, views, -1)
        return tuple(z[:, i] for i in range(views))

    return ctx.cached(("mabel_embeddings",), compute)


@dataclasses.dataclass(frozen=True)
class Contrastive:
    """weight * InfoNCE (module docstring); owns the head, keeps no state."""

    hidden: int
    init_std: float
    temperature: float = 0.05
    weight: float = 1.0
    name: str = "contrastive"
    fields: tuple[str, ...] = ("input_ids", "attention_mask")

    def init_state(self) -> None:
        return None

    def init_params(self, key: jax.Array) -> dict:
        return init_head(key, self.hidden, self.init_std)

    def __call__(self, ctx: terms.Context, state: None) -> tuple[jax.Array, None, dict]:
        return info_nce(*embeddings(ctx, self.name), self.temperature), None, {}


def check_schema(config: Any, name: str) -> None:
    """Mabel's terms read the four views of data.schema='mabel'."""
    if config.data.schema != "mabel":
        raise ValueError(f"loss term {name!r} reads the four views of data.schema='mabel', not "
                         f"{config.data.schema!r}; set data.schema='mabel'.")


def build(config: Any, setup: terms.Setup) -> Contrastive | None:
    """weight config.contrastive.weight (0: off), temperature config.contrastive.temperature."""
    c = config.contrastive
    if float(c.weight) == 0:
        return None
    check_schema(config, "contrastive")
    if not float(c.temperature) > 0:
        raise ValueError(f"config contrastive.temperature={c.temperature} must be positive.")
    return Contrastive(setup.model_config.hidden_size, setup.model_config.initializer_range,
                       temperature=float(c.temperature), weight=float(c.weight))
