"""The PRNG implementation of dropout masks."""

from __future__ import annotations

import jax

Array = jax.Array

DROPOUT_RNG = ("auto", "threefry2x32", "rbg", "unsafe_rbg")


def dropout_key(seed: int, rng: str = "auto") -> Array:
    """The root dropout key (a typed key) for `seed` with the PRNG implementation `rng`.

    'auto' picks 'rbg' on GPU and TPU, where XLA's RngBitGenerator makes dropout masks much
    cheaper than threefry's 20 hash rounds per 64 bits, and 'threefry2x32' on CPU, where it is the
    faster of the two (benchmarks/dropout.py). Keys fold in the step, so masks depend only on
    (seed, step, backend) and resume reproduces them; 'rbg' bits may differ across backends and
    XLA versions."""
    if rng not in DROPOUT_RNG:
        raise ValueError(f"dropout rng {rng!r} is not one of {DROPOUT_RNG}.")
    if rng == "auto":
        rng = "threefry2x32" if jax.default_backend() == "cpu" else "rbg"
    return jax.random.key(seed, impl=rng)
