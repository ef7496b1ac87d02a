"""Loss terms: a recipe's training loss is a weighted sum of them.

A term is a small object with
  name    the metric name (`loss/<name>`) and the key of its state in the train state;
  weight  the factor the step multiplies its value by;
  fields  the batch fields it reads (checked against the data before any compute);
  init_state() -> a pytree of arrays or None: state kept in the train state and in every
          checkpoint (NC3 running statistics; EWC Fisher and anchor);
  init_params(key) -> a pytree of arrays or None (optional method): trainable parameters the
          term owns (Mabel's sentence-embedding head), kept in the train state under
          'term_params', updated by the optimiser with the model and held by every checkpoint,
          but never exported (the export is the masked LM alone); read as
          `ctx.term_params[name]`;
  __call__(ctx, state) -> (value scalar float32, new_state, metrics dict of scalars).

The step (`ncjax.step`) builds one `Context` per trace, calls every term with it, sums
weight * value, differentiates that sum once with respect to the parameters, and logs each
value unweighted as `loss/<name>`. Terms that read the same forward pass (MLM and NC3 read one
masked forward) share it through `Context.cached`, so the model runs once per distinct input.

A recipe names its terms in `config.loss.terms` (a tuple); each name is a module
`ncjax.terms.<name>` with `build(config, setup) -> term or None` (None: the term is off, e.g.
alpha 0). Adding a debiasing method is one such module plus one config file.
"""

from __future__ import annotations

import dataclasses
import importlib
import zlib
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax

from ncjax import rng

# Independent random streams of one step, all keyed by fold_in(fold_in(seed, stream), step);
# PARAMS_STREAM seeds the terms' own parameters once, fold_in(fold_in(seed, 3), crc32(name)).
MASK_STREAM, DROPOUT_STREAM, PARAMS_STREAM = 1, 2, 3


class Term(Protocol):
    name: str
    weight: float
    fields: tuple[str, ...]

    def init_state(self) -> Any: ...

    def __call__(self, ctx: Context, state: Any) -> tuple[jax.Array, Any, dict]: ...


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a term's `build` may read: the config, the tokenizer, the model's config, the
    initial parameters (host numpy dict, e.g. EWC's anchor) with the model's graphdef, the
    tokens per sequence of the batch, the batch fields the data provides, and where a term may
    write a report (process 0 only)."""

    config: Any
    tokenizer: Any
    model_config: Any
    length: int
    fields: tuple[str, ...]
    workdir: Path
    is_main: bool = True
    graphdef: Any = None
    params: Any = None


class Context:
    """One step's view for the terms: the parameters being differentiated (the model's, the model
    merged from them, and the terms' own `term_params`), the batch, the step number, PRNG keys,
    and a cache of anything computed once per step (masks, forward passes). Lives only while the
    loss is traced."""

    def __init__(self, model: Any, batch: dict[str, jax.Array], step: jax.Array, *, seed: int, dropout: bool,
                 params: Any = None, term_params: dict[str, Any] | None = None, dropout_rng: str = "auto"):
        self.model = model
        self.params = params
        self.term_params = term_params or {}
        self.batch = batch
        self.step = step
        self.dropout = dropout
        self._root = jax.random.PRNGKey(seed)
        # dropout bits from the chosen PRNG implementation (ncjax.rng); with threefry they equal
        # fold_in(fold_in(PRNGKey(seed), DROPOUT_STREAM), step), like every other stream
        self._dropout_root = rng.dropout_key(seed, dropout_rng)
        self._cache: dict[Hashable, Any] = {}

    def key(self, stream: int) -> jax.Array:
        """The PRNG key of `stream` for this step: fold_in(fold_in(seed, stream), step)."""
        return jax.random.fold_in(jax.random.fold_in(self._root, stream), self.step)

    def dropout_key(self, index: int = 0) -> jax.Array | None:
        """Dropout key of the step's forward pass number `index` (None when dropout is off)."""
        if not self.dropout:
            return None
        key = jax.random.fold_in(jax.random.fold_in(self._dropout_root, DROPOUT_STREAM), self.step)
        return key if index == 0 else jax.random.fold_in(key, index)

    def cached(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """`compute()` the first time `key` is asked for in this step, the same value after."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


def flat(x: jax.Array) -> jax.Array:
    """[batch, ..., length] -> [batch * ..., length]: views of one example become rows."""
    return x.reshape(-1, x.shape[-1])


def build(config: Any, setup: Setup) -> list[Term]:
    """The terms of `config.loss.terms`, in order, leaving out the ones that are off.

    Raises ValueError (one sentence) for an unknown name, a duplicate, a term reading a batch
    field the data does not provide, or a recipe whose terms are all off."""
    names: Sequence[str] = tuple(config.loss.terms)
    if len(set(names)) != len(names):
        raise ValueError(f"config loss.terms={tuple(names)} names a term twice; list each once.")
    terms = []
    for name in names:
        try:
            module = importlib.import_module(f"ncjax.terms.{name}")
        except ModuleNotFoundError:
            raise ValueError(f"config loss.terms names {name!r}, which is no module of ncjax/terms; "
                             f"use one of {', '.join(available())}.") from None
        term = module.build(config, setup)
        if term is None:
            continue
        missing = [f for f in term.fields if f not in setup.fields]
        if missing:
            raise ValueError(f"loss term {name!r} reads batch field(s) {', '.join(missing)}, which data.schema="
                             f"{config.data.schema!r} does not provide; pick a schema that has them.")
        terms.append(term)
    if not terms:
        raise ValueError(f"config loss.terms={tuple(names)} leaves no active term (all weights are 0).")
    return terms


def available() -> list[str]:
    """Names of the term modules in this package."""
    here = Path(__file__).parent
    return sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_"))


def init_states(terms: Sequence[Term]) -> dict[str, Any]:
    """{term name: initial state} for the terms that keep state."""
    out = {}
    for t in terms:
        s = t.init_state()
        if s is not None:
            out[t.name] = s
    return out


def init_params(terms: Sequence[Term], seed: int) -> dict[str, Any]:
    """{term name: initial parameters} for the terms that own trainable parameters, each drawn
    from fold_in(fold_in(PRNGKey(seed), PARAMS_STREAM), crc32(name)) (independent of the term
    order and of the other terms)."""
    root = jax.random.fold_in(jax.random.PRNGKey(seed), PARAMS_STREAM)
    out = {}
    for t in terms:
        make = getattr(t, "init_params", None)
        p = make(jax.random.fold_in(root, zlib.crc32(t.name.encode()))) if make else None
        if p is not None:
            out[t.name] = p
    return out
