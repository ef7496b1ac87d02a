"""ASE's elastic weight consolidation term: stay near the starting model where the Fisher says
the parameters matter.

    value = sum over every parameter of F * (theta - theta*)^2      (no 1/2, as released)

theta*: the starting parameters (the anchor); F: a diagonal Fisher of the starting model, both
computed once before training and kept as this term's state (in every checkpoint, so a resumed
run needs neither the data nor the starting model again). Differentiated with respect to theta.

Fisher (`fisher`): over N lines (the formatted WinoBias type-1 test sentences, so the Fisher
touches an evaluation set), g_i = the gradient of line i's mean cross-entropy over all its
tokens with labels = inputs, the model in eval mode (no dropout).
  'released' (default): F = (1/N) sum_k (g_1 + ... + g_k)^2, what the released code computes
              because it never zeroes the gradients between lines;
  'textbook': F = (1/N) sum_k g_k^2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ncjax import data, schemas, terms

FISHERS = ("released", "textbook")


def line_nll(graphdef, params, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy of one line predicting its own tokens: ids, mask [L] -> scalar
    (padding, mask 0, left out)."""
    model = nnx.merge(graphdef, params)
    logits = model(ids[None], mask[None]).logits[0]  # [L, V], eval mode
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
    w = mask.astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.sum(w)


def fisher(graphdef, params, ids: np.ndarray, mask: np.ndarray, kind: str = "released") -> Any:
    """Diagonal Fisher (module docstring) of `params` over lines ids, mask [N, L]; a tree like
    params, float32."""
    if kind not in FISHERS:
        raise ValueError(f"config ewc.fisher={kind!r} is not one of {', '.join(FISHERS)}.")
    n = ids.shape[0]
    grad = jax.grad(lambda p, i, m: line_nll(graphdef, p, i, m))

    @jax.jit
    def run(p, ids, mask):
        zeros = jax.tree.map(jnp.zeros_like, p)

        def body(carry, x):
            running, f = carry
            g = grad(p, *x)
            running = jax.tree.map(jnp.add, running, g) if kind == "released" else g
            f = jax.tree.map(lambda a, b: a + b * b / n, f, running)
            return (running, f), None

        (_, f), _ = jax.lax.scan(body, (zeros, zeros), (ids, mask))
        return f

    return jax.device_get(run(params, jnp.asarray(ids), jnp.asarray(mask)))


def penalty(params: Any, fisher_tree: Any, anchor: Any) -> jax.Array:
    """sum F * (theta - theta*)^2 over every leaf -> scalar float32."""
    parts = jax.tree.map(lambda p, f, a: jnp.sum(f * jnp.square(p.astype(jnp.float32) - a)),
                         params, fisher_tree, anchor)
    return sum(jax.tree.leaves(parts))


@dataclasses.dataclass(frozen=True, eq=False)
class EWC:
    """weight * sum F (theta - theta*)^2; state {'fisher', 'anchor'} (trees like the params)."""

    fisher: Any
    anchor: Any
    weight: float = 0.5
    name: str = "ewc"
    fields: tuple[str, ...] = ()

    def init_state(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def __call__(self, ctx: terms.Context, state: dict) -> tuple[jax.Array, dict, dict]:
        return penalty(ctx.params, state["fisher"], state["anchor"]), state, {}


def fisher_arrays(tokenizer, pro: list[str], anti: list[str], max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """The Fisher lines ([CLS] line [SEP], padded to the longest) as (ids, mask) [N, L] int32."""
    lines = schemas.fisher_lines(pro, anti)
    if not lines:
        raise ValueError("the EWC lines hold no WinoBias sentence with one bracketed pronoun; check ewc.lines.")
    enc = tokenizer(lines, padding="longest", truncation=True, max_length=max_positions, return_token_type_ids=False)
    return np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)


def build(config: Any, setup: terms.Setup) -> EWC | None:
    """weight config.ewc.weight (off at 0); F of kind config.ewc.fisher over config.ewc.lines
    ('bundled:winobias_type1_test' or 'PRO_FILE,ANTI_FILE'), anchored at the starting parameters."""
    e = config.ewc
    if float(e.weight) == 0:
        return None
    if e.fisher not in FISHERS:
        raise ValueError(f"config ewc.fisher={e.fisher!r} is not one of {', '.join(FISHERS)}.")
    if e.lines == "bundled:winobias_type1_test":
        files = [data.resource_path(*rel.split("/")) for rel in schemas.WINOBIAS_TYPE1_TEST]
    else:
        files = schemas.resolve_winobias(e.lines)
        if len(files) != 2:
            raise ValueError(f"config ewc.lines={e.lines!r} must name two files, 'PRO_FILE,ANTI_FILE'.")
    pro, anti = (schemas.read_lines([f]) for f in files)
    ids, mask = fisher_arrays(setup.tokenizer, pro, anti, setup.model_config.max_position_embeddings)
    f = fisher(setup.graphdef, setup.params, ids, mask, e.fisher)
    anchor = jax.tree.map(lambda x: np.asarray(x, np.float32), setup.params)
    return EWC(f, anchor, weight=float(e.weight))
