"""Mixed-precision products: low-precision operands, float32 accumulation and result.

Attention scores and MLM logits feed a float32 softmax; computing them as bfloat16 products with
a bfloat16 result would round them first. `f32_einsum` keeps the operands in the compute dtype and
returns float32, and its backward pass again multiplies operands of the compute dtype.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32(spec: str, a: Array, b: Array) -> Array:
    """einsum of two low-precision operands with float32 accumulation and a float32 result
    (attention scores, logits). Its backward pass runs the transposed products on operands of the
    input dtype: differentiating `preferred_element_type=float32` directly would give float32
    cotangents, and XLA then runs those products, the largest of the step, in float32."""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _einsum_f32_fwd(spec, a, b):
    return _einsum_f32(spec, a, b), (a, b)


def _einsum_f32_bwd(spec, res, g):
    a, b = res
    _, vjp = jax.vjp(partial(jnp.einsum, spec), a, b)
    return vjp(g.astype(a.dtype))


_einsum_f32.defvjp(_einsum_f32_fwd, _einsum_f32_bwd)


def f32_einsum(spec: str, a: Array, b: Array) -> Array:
    """einsum(spec, a, b) as float32: a plain float32 product for float32 operands, else
    `_einsum_f32` (operands of their own dtype, float32 accumulation and result)."""
    if a.dtype == jnp.float32:
        return jnp.einsum(spec, a, b)
    return _einsum_f32(spec, a, b)
