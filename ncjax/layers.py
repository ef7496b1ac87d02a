"""The building blocks of ncjax's masked LMs: embeddings, the post-LayerNorm encoder layer and
the MLM head, shared by every model family (`ncjax.families` says which options a family uses).

Numerics and mixed precision are described in `ncjax.model`. Parameters are float32; `dtype` is
the compute dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ncjax import families, mixed

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


def _dense(cfg: Any, n_in: int, n_out: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
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
    """Word + position (+ token type) embeddings, LayerNorm, dropout; for a factorised family
    (ALBERT) tables of `embedding_size` and a projection to `hidden_size` after the dropout."""

    def __init__(self, cfg: Any, dtype: Any, rngs: nnx.Rngs):
        fam = families.get(cfg.model_type)
        e = cfg.embedding_size or cfg.hidden_size
        init = nnx.initializers.normal(cfg.initializer_range)
        emb = lambda n: nnx.Embed(  # noqa: E731
            n, e, dtype=dtype, param_dtype=jnp.float32, embedding_init=init, rngs=rngs
        )
        self.word = emb(cfg.vocab_size)
        # transformers zeroes the padding row at initialisation; do the same.
        self.word.embedding[...] = self.word.embedding[...].at[cfg.pad_token_id].set(0.0)
        self.position = emb(cfg.max_position_embeddings)
        if fam.padding_positions:  # RoBERTa's position table has a padding row too
            self.position.embedding[...] = self.position.embedding[...].at[cfg.pad_token_id].set(0.0)
        self.token_type = emb(cfg.type_vocab_size) if fam.token_types else None
        self.norm = _LayerNorm(e, cfg.layer_norm_eps, dtype)
        self.project = _dense(cfg, e, cfg.hidden_size, dtype, rngs) if fam.factorised else None
        self.rate = cfg.hidden_dropout_prob
        self.padding_positions = fam.padding_positions
        self.pad_id = cfg.pad_token_id

    def positions(self, input_ids: Array) -> Array:
        """[batch, length] position ids: 0..length-1, or for RoBERTa pad + the running count of
        non-padding tokens (padding positions get pad itself)."""
        if not self.padding_positions:
            return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
        real = (input_ids != self.pad_id).astype(jnp.int32)
        return jnp.cumsum(real, axis=1) * real + self.pad_id

    def __call__(self, input_ids, token_type_ids, key) -> Array:
        """[batch, length] ids -> [batch, length, hidden] in the compute dtype. Rows are gathered
        from the float32 tables and summed in float32 (the LayerNorm input)."""
        length = input_ids.shape[1]
        h = jnp.take(self.word.embedding[...], input_ids, axis=0)
        if self.padding_positions:
            h = h + jnp.take(self.position.embedding[...], self.positions(input_ids), axis=0)
        else:
            h = h + self.position.embedding[...][None, :length]
        if self.token_type is not None:
            h = h + jnp.take(self.token_type.embedding[...], token_type_ids, axis=0)
        h = _dropout(self.norm(h), self.rate, key)
        return h if self.project is None else self.project(h)


class Layer(nnx.Module):
    """One post-LayerNorm transformer block, as `transformers.models.bert.BertLayer` (and the
    RoBERTa, DistilBERT and ALBERT layers, which compute the same)."""

    def __init__(self, cfg: Any, dtype: Any, rngs: nnx.Rngs, attention: str = "auto",
                 attention_impl: str | None = None, attention_dropout: float | None = None):
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
        self.attention_rate = cfg.attention_probs_dropout_prob if attention_dropout is None else attention_dropout
        self.attention = attention
        self.attention_impl = attention_impl

    def __call__(self, x: Array, mask: Array, key: Array | None) -> Array:
        """x: [batch, length, hidden]; mask: [batch, 1, 1, length] bool, True where attended."""
        k_probs, k_attn, k_out = _split(key, 3)
        b, length, hidden = x.shape
        d = hidden // self.heads
        split = lambda t: t.reshape(b, length, self.heads, d)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        if self.attention == "auto" and (k_probs is None or self.attention_rate == 0.0):
            ctx = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)
        else:
            scores = mixed.f32_einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(d))
            # Additive mask as transformers builds it: 0 where attended, float32 min where padded.
            probs = jax.nn.softmax(scores + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min), axis=-1)
            probs = _dropout(probs.astype(x.dtype), self.attention_rate, k_probs)
            ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        ctx = ctx.reshape(b, length, hidden)
        a = self.attention_norm(_dropout(self.attention_out(ctx), self.hidden_rate, k_attn) + x)
        f = self.output(_ACTIVATIONS[self.act](self.intermediate(a)))
        return self.output_norm(_dropout(f, self.hidden_rate, k_out) + a)


class MLMHead(nnx.Module):
    """The prediction-head transform (dense, activation, LayerNorm) and the decoder bias.
    The decoder weight is the word-embedding matrix (tied), applied in `BertForMaskedLM.decode`,
    unless `decoder` ([vocab, embedding], set by `BertForMaskedLM.untie`) holds a separate one."""

    def __init__(self, cfg: Any, dtype: Any, rngs: nnx.Rngs):
        e = cfg.embedding_size or cfg.hidden_size  # ALBERT's head maps hidden -> embedding_size
        self.dense = _dense(cfg, cfg.hidden_size, e, dtype, rngs)
        self.norm = _LayerNorm(e, cfg.layer_norm_eps, dtype)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))
        self.decoder: nnx.Param | None = None
        self.act = families.get(cfg.model_type).head_act or cfg.hidden_act

    def transform(self, h: Array) -> Array:
        return self.norm(_ACTIVATIONS[self.act](self.dense(h)))
