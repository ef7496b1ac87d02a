"""A Flax NNX masked language model with Hugging Face-identical numerics, for every family.

`BertForMaskedLM` computes what transformers' masked LM of the config's `model_type` computes
(`BertForMaskedLM`, `RobertaForMaskedLM`, `DistilBertForMaskedLM`, `AlbertForMaskedLM`; see
`ncjax.families` for what differs), with the decoder tied to the word embeddings plus its own
bias. The building blocks live in `ncjax.layers`. One call returns
the three things the rest of ncjax reads: MLM logits (at every position, or only at the
positions given, because the decoder dominates a small model's cost), the last encoder layer,
and the MLM-transform output that multiplies the decoder weight.

Mixed precision: parameters are float32 (the optimiser updates them and its state in float32);
`dtype` sets the compute dtype (float32 or bfloat16). In bfloat16 every matrix product takes
bfloat16 operands (weights are cast once per use), including the backward pass; the embedding
sum, LayerNorm statistics, attention scores and softmax, and the returned logits are float32.
Embedding rows are gathered from the float32 tables (the table is never cast whole, and its
gradient is accumulated in float32).

Attention: `attention="auto"` (default) runs `jax.nn.dot_product_attention` (XLA's fused
attention, or cuDNN's with `attention_impl="cudnn"`) whenever no attention dropout is applied
in the call (evaluation, or training with `attention_dropout=0`), and the exact Hugging Face
computation (softmax, dropout on the probabilities, product) otherwise; `attention="exact"`
always runs the latter. Both agree to float32 rounding.

Dropout takes an explicit PRNG key per call, which keeps the module a pure function of
(state, inputs, key) for jitted training steps. `scan_layers=True` runs the encoder layers as one
`jax.lax.scan` over their stacked parameters (one layer compiled instead of L), `remat=True`
recomputes each layer in the backward pass, saving what `remat_policy` names.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ncjax import families, mixed
from ncjax.layers import _ACTIVATIONS, Embeddings, Layer, MLMHead, _dropout, _split  # noqa: F401

Array = jax.Array

@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture fields of a Hugging Face `BertConfig` (same names, same defaults), shared
    by every family: `model_type` names the family; `embedding_size` (ALBERT's factorised
    embeddings; None: hidden_size), `num_hidden_groups` and `inner_group_num` (ALBERT's shared
    layers) are used by ALBERT only. DistilBERT's names are translated on reading and writing."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    model_type: str = "bert"
    embedding_size: int | None = None
    num_hidden_groups: int = 1
    inner_group_num: int = 1

    def __post_init__(self):
        families.get(self.model_type)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; fix config.json."
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}."
            )

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "BertConfig":
        """Builds the config from a Hugging Face config dict of any family; unrelated keys are ignored."""
        fam = families.get(d.get("model_type", "bert"))
        d = {**fam.config_in(d), "model_type": fam.model_type}
        if not fam.factorised:
            d = {k: v for k, v in d.items() if k not in ("embedding_size", "num_hidden_groups", "inner_group_num")}
        pet = d.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(
                f"config position_embedding_type is {pet!r}; ncjax supports 'absolute' only."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_hf_dict(json.load(f))

    @property
    def max_tokens(self) -> int:
        """The longest input the position table allows (RoBERTa's ids start at pad + 1)."""
        if families.get(self.model_type).padding_positions:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @property
    def head_size(self) -> int:
        """The width of the MLM-transform output and of the decoder rows (the word embeddings):
        ALBERT's embedding_size; hidden_size for every other family."""
        return self.embedding_size or self.hidden_size

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict that transformers reads as the family's masked LM."""
        fam = families.get(self.model_type)
        d = dataclasses.asdict(self)
        if not fam.factorised:
            for k in ("embedding_size", "num_hidden_groups", "inner_group_num"):
                del d[k]
        d.update(architectures=[fam.architecture], tie_word_embeddings=True)
        if fam.model_type != "distilbert":
            d.update(position_embedding_type="absolute", classifier_dropout=None)
        return dict(sorted(fam.config_out(d).items()))


class MaskedLMOutput(NamedTuple):
    """logits: [batch, length or positions, vocab] float32 (None if not asked for);
    last_hidden: [batch, length, hidden], the last encoder layer;
    mlm_hidden: [batch, length or positions, hidden], the MLM-transform output (decoder input)."""

    logits: Array | None
    last_hidden: Array
    mlm_hidden: Array


ATTENTION = ("auto", "exact")
ATTENTION_IMPL = ("xla", "cudnn")
# What `remat=True` keeps from the forward pass of a layer (jax.checkpoint_policies).
REMAT_POLICIES = {
    "nothing": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class BertForMaskedLM(nnx.Module):
    """BERT encoder + MLM head. See the module docstring."""

    def __init__(
        self,
        config: BertConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        remat: bool = False,
        remat_policy: str = "nothing",
        scan_layers: bool = False,
        attention: str = "auto",
        attention_impl: str | None = None,
        attention_dropout: float | None = None,
        untie_decoder: bool = False,
    ):
        """dtype: compute dtype; remat, remat_policy (a key of REMAT_POLICIES), scan_layers,
        attention (one of ATTENTION), attention_impl (None lets JAX choose, or one of
        ATTENTION_IMPL): see the module docstring; attention_dropout overrides the config's
        attention_probs_dropout_prob (0 lets training use the fused attention)."""
        if attention not in ATTENTION:
            raise ValueError(f"attention={attention!r} is not one of {ATTENTION}.")
        if attention_impl is not None and attention_impl not in ATTENTION_IMPL:
            raise ValueError(f"attention_impl={attention_impl!r} is not None or one of {ATTENTION_IMPL}.")
        if remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={remat_policy!r} is not one of {tuple(REMAT_POLICIES)}.")
        if attention_dropout is not None and not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"attention_dropout={attention_dropout} must be in [0, 1).")
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.remat_policy = remat_policy
        self.scan_layers = scan_layers
        self.embeddings = Embeddings(config, dtype, rngs)
        self.layers = nnx.List([Layer(config, dtype, rngs, attention, attention_impl, attention_dropout)
                                for _ in range(families.num_layer_modules(config))])
        self.schedule = tuple(families.layer_schedule(config))  # the layer applied at each depth
        self.head = MLMHead(config, dtype, rngs)
        if untie_decoder:
            self.untie()

    def untie(self) -> None:
        """Gives the MLM head its own decoder matrix, a copy of the current word embeddings,
        which then trains on its own (MABEL trains so)."""
        # nnx.data: the attribute was None (static) until now
        self.head.decoder = nnx.data(nnx.Param(jnp.array(self.embeddings.word.embedding[...])))

    @property
    def untied(self) -> bool:
        """Whether the MLM head has its own decoder matrix."""
        return self.head.decoder is not None

    def word_embeddings(self) -> Array:
        """W: [vocab, embedding] float32, the input word embeddings (the tied decoder weight)."""
        return self.embeddings.word.embedding[...]

    def decoder_weight(self) -> Array:
        """[vocab, embedding] float32: the matrix the MLM logits multiply (the untied decoder when
        the model has one, the word embeddings otherwise); NC3's W[c] are its rows."""
        return self.head.decoder[...] if self.untied else self.word_embeddings()

    def mlm_transform(self, h: Array) -> Array:
        """[..., hidden] last-layer features -> [..., embedding] decoder input (embedding = hidden
        except for ALBERT)."""
        return self.head.transform(h)

    def decode(self, h: Array) -> Array:
        """[..., embedding] decoder input -> [..., vocab] float32 logits (h W^T + bias)."""
        w = self.decoder_weight().astype(self.dtype)  # the one cast of the table per use
        return mixed.f32_einsum("...h,vh->...v", h.astype(self.dtype), w) + self.head.bias[...]

    def encode(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        *,
        dropout_key: Array | None = None,
    ) -> Array:
        """[batch, length] ids -> [batch, length, hidden] last encoder layer."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        b, length = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, length), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, length), jnp.int32)
        n = len(self.schedule)
        keys = None if dropout_key is None else jax.random.split(dropout_key, n + 1)
        h = self.embeddings(input_ids, jnp.asarray(token_type_ids, jnp.int32), None if keys is None else keys[0])
        mask = jnp.asarray(attention_mask)[:, None, None, :] > 0
        layer_keys = None if keys is None else keys[1:]
        if self.scan_layers:
            return self._scan(h, mask, layer_keys)
        policy = REMAT_POLICIES[self.remat_policy]
        for i, j in enumerate(self.schedule):
            layer = self.layers[j]
            key = None if layer_keys is None else layer_keys[i]
            if self.remat:
                h = nnx.remat(lambda m, x, mm, kk: m(x, mm, kk), policy=policy)(layer, h, mask, key)
            else:
                h = layer(h, mask, key)
        return h

    def _scan(self, h: Array, mask: Array, keys: Array | None) -> Array:
        """The layers as one `jax.lax.scan` over their parameters stacked on a leading axis
        (stacked per call, so the parameter tree and checkpoints keep one entry per layer)."""
        graphdef, _ = nnx.split(self.layers[0])
        states = [nnx.split(layer)[1] for layer in self.layers]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[states[j] for j in self.schedule])

        def body(x, xs):
            state, key = xs
            return nnx.merge(graphdef, state)(x, mask, key), None

        if self.remat:
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat_policy])
        h, _ = jax.lax.scan(body, h, (stacked, keys))
        return h

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        *,
        positions: Array | None = None,
        dropout_key: Array | None = None,
        with_logits: bool = True,
    ) -> MaskedLMOutput:
        """input_ids, attention_mask, token_type_ids: [batch, length];
        positions: optional [batch, P] int indices: the MLM head then runs only there.
        Returns MaskedLMOutput (logits [batch, length|P, vocab], last_hidden, mlm_hidden)."""
        last = self.encode(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)
        h = last
        if positions is not None:
            h = jnp.take_along_axis(last, jnp.asarray(positions, jnp.int32)[..., None], axis=1)
        mlm_hidden = self.mlm_transform(h)
        logits = self.decode(mlm_hidden) if with_logits else None
        return MaskedLMOutput(logits, last, mlm_hidden)


def apply(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    input_ids: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    **kwargs: Any,
) -> MaskedLMOutput:
    """Pure functional form of `BertForMaskedLM.__call__` for use under `jax.jit`/`jax.grad`."""
    return nnx.merge(graphdef, state)(input_ids, attention_mask, token_type_ids, **kwargs)
