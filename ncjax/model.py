"""A Flax NNX BERT masked language model with Hugging Face-identical numerics.

`BertForMaskedLM` computes what `transformers.BertForMaskedLM` computes for any `BertConfig`
(absolute position embeddings, token types, exact GELU, LayerNorm epsilon from the config), with
the decoder tied to the word embeddings through `Embed.attend` plus its own bias. One call returns
the three things the rest of ncjax reads: MLM logits (at every position, or only at the
positions given, because the decoder dominates a small model's cost), the last encoder layer,
and the MLM-transform output that multiplies the decoder weight.

Parameters are float32; `dtype` sets the compute dtype (float32 or bfloat16). Softmax and
LayerNorm statistics stay in float32 so bfloat16 compute tracks float32 closely. Dropout takes an
explicit PRNG key per call, which keeps the module a pure function of (state, inputs, key) for
jitted training steps.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_python": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture fields of a Hugging Face `BertConfig` (same names, same defaults)."""

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

    def __post_init__(self):
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
        """Builds the config from a Hugging Face config dict; unrelated keys are ignored."""
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"config model_type is {model_type!r}; ncjax loads BERT checkpoints only.")
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

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict that transformers reads as a `BertForMaskedLM`."""
        d = dataclasses.asdict(self)
        d.update(
            architectures=["BertForMaskedLM"],
            model_type="bert",
            position_embedding_type="absolute",
            classifier_dropout=None,
            use_cache=True,
            tie_word_embeddings=True,
        )
        return dict(sorted(d.items()))


class MaskedLMOutput(NamedTuple):
    """logits: [batch, length or positions, vocab] float32 (None if not asked for);
    last_hidden: [batch, length, hidden], the last encoder layer;
    mlm_hidden: [batch, length or positions, hidden], the MLM-transform output (decoder input)."""

    logits: Array | None
    last_hidden: Array
    mlm_hidden: Array


def _dropout(x: Array, rate: float, key: Array | None) -> Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _split(key: Array | None, n: int) -> list[Array | None]:
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


class _LayerNorm(nnx.Module):
    """LayerNorm whose statistics are computed in float32 whatever the compute dtype."""

    def __init__(self, features: int, eps: float, dtype: Any):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


def _dense(cfg: BertConfig, n_in: int, n_out: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in,
        n_out,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(cfg.initializer_range),
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


class Embeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, dtype: Any, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.initializer_range)
        emb = lambda n: nnx.Embed(  # noqa: E731
            n, cfg.hidden_size, dtype=dtype, param_dtype=jnp.float32, embedding_init=init, rngs=rngs
        )
        self.word = emb(cfg.vocab_size)
        # transformers zeroes the padding row at initialisation; do the same.
        self.word.embedding[...] = self.word.embedding[...].at[cfg.pad_token_id].set(0.0)
        self.position = emb(cfg.max_position_embeddings)
        self.token_type = emb(cfg.type_vocab_size)
        self.norm = _LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids, token_type_ids, position_ids, key) -> Array:
        h = self.word(input_ids) + self.token_type(token_type_ids) + self.position(position_ids)
        return _dropout(self.norm(h), self.rate, key)


class Layer(nnx.Module):
    """One post-LayerNorm transformer block, as `transformers.models.bert.BertLayer`."""

    def __init__(self, cfg: BertConfig, dtype: Any, rngs: nnx.Rngs):
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.query = _dense(cfg, h, h, dtype, rngs)
        self.key = _dense(cfg, h, h, dtype, rngs)
        self.value = _dense(cfg, h, h, dtype, rngs)
        self.attention_out = _dense(cfg, h, h, dtype, rngs)
        self.attention_norm = _LayerNorm(h, cfg.layer_norm_eps, dtype)
        self.intermediate = _dense(cfg, h, i, dtype, rngs)
        self.output = _dense(cfg, i, h, dtype, rngs)
        self.output_norm = _LayerNorm(h, cfg.layer_norm_eps, dtype)
        self.heads = cfg.num_attention_heads
        self.act = cfg.hidden_act
        self.hidden_rate = cfg.hidden_dropout_prob
        self.attention_rate = cfg.attention_probs_dropout_prob

    def __call__(self, x: Array, bias: Array, key: Array | None) -> Array:
        """x: [batch, length, hidden]; bias: [batch, 1, 1, length] additive mask (0 or -inf-ish)."""
        k_probs, k_attn, k_out = _split(key, 3)
        b, length, hidden = x.shape
        d = hidden // self.heads
        split = lambda t: t.reshape(b, length, self.heads, d)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(d))
        probs = jax.nn.softmax(scores + bias, axis=-1)
        probs = _dropout(probs, self.attention_rate, k_probs).astype(x.dtype)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, hidden)
        a = self.attention_norm(_dropout(self.attention_out(ctx), self.hidden_rate, k_attn) + x)
        f = self.output(_ACTIVATIONS[self.act](self.intermediate(a)))
        return self.output_norm(_dropout(f, self.hidden_rate, k_out) + a)


class MLMHead(nnx.Module):
    """The prediction-head transform (dense, activation, LayerNorm) and the decoder bias.
    The decoder weight is the word-embedding matrix (tied), applied through `Embed.attend`,
    unless `decoder` ([vocab, hidden], set by `BertForMaskedLM.untie`) holds a separate one."""

    def __init__(self, cfg: BertConfig, dtype: Any, rngs: nnx.Rngs):
        self.dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, dtype, rngs)
        self.norm = _LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))
        self.decoder: nnx.Param | None = None
        self.act = cfg.hidden_act

    def transform(self, h: Array) -> Array:
        return self.norm(_ACTIVATIONS[self.act](self.dense(h)))


class BertForMaskedLM(nnx.Module):
    """BERT encoder + MLM head. See the module docstring."""

    def __init__(
        self,
        config: BertConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        remat: bool = False,
        untie_decoder: bool = False,
    ):
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.embeddings = Embeddings(config, dtype, rngs)
        self.layers = nnx.List([Layer(config, dtype, rngs) for _ in range(config.num_hidden_layers)])
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
        """W: [vocab, hidden] float32, the input word embeddings (the tied decoder weight)."""
        return self.embeddings.word.embedding[...]

    def decoder_weight(self) -> Array:
        """[vocab, hidden] float32: the matrix the MLM logits multiply (the untied decoder when
        the model has one, the word embeddings otherwise); NC3's W[c] are its rows."""
        return self.head.decoder[...] if self.untied else self.word_embeddings()

    def mlm_transform(self, h: Array) -> Array:
        """[..., hidden] last-layer features -> [..., hidden] decoder input."""
        return self.head.transform(h)

    def decode(self, h: Array) -> Array:
        """[..., hidden] decoder input -> [..., vocab] float32 logits (h W^T + bias)."""
        if self.untied:
            logits = jnp.dot(h.astype(self.dtype), self.head.decoder[...].astype(self.dtype).T)
        else:
            logits = self.embeddings.word.attend(h.astype(self.dtype))
        return logits.astype(jnp.float32) + self.head.bias[...]

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
        position_ids = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        keys = _split(dropout_key, self.config.num_hidden_layers + 1)
        h = self.embeddings(input_ids, jnp.asarray(token_type_ids, jnp.int32), position_ids, keys[0])
        # Additive mask as transformers builds it: 0 where attended, float32 min where padded.
        bias = jnp.where(jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        for layer, key in zip(self.layers, keys[1:]):
            if self.remat:
                h = nnx.remat(lambda m, x, bb, kk: m(x, bb, kk))(layer, h, bias, key)
            else:
                h = layer(h, bias, key)
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
