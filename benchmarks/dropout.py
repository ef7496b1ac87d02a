"""The cost of dropout masks by PRNG implementation: threefry2x32 (JAX's default) vs rbg and
unsafe_rbg (XLA's RngBitGenerator).

Two measurements, both jitted, in one process, the implementations alternating in rounds:
  masks: drawing every dropout mask of one training step (embeddings, and per layer the attention
         probabilities and two hidden-state masks) from fold_in(key, step), as the model does;
  step:  forward + backward of the model (MLM logits at 15 % of positions) with dropout under each
         implementation, and without dropout; step - no-dropout is what dropout costs.
Reported: median and spread (min-max) over the timed calls after one warm-up (compile) call.

    python benchmarks/dropout.py                       # MiniLM shape: 6 layers, hidden 384, batch 16 x 64
    python benchmarks/dropout.py --layers 12 --hidden 768 --heads 12 --length 128   # bert-base shape
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from ncjax.model import BertConfig, BertForMaskedLM  # noqa: E402
from ncjax.rng import dropout_key  # noqa: E402

IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def mask_fn(cfg: BertConfig, batch: int, length: int, impl: str):
    """jitted step -> number of kept entries over all of one step's dropout masks."""
    root = dropout_key(0, impl)
    hidden = (batch, length, cfg.hidden_size)
    probs = (batch, cfg.num_attention_heads, length, length)
    shapes = [hidden] + [probs, hidden, hidden] * cfg.num_hidden_layers

    @jax.jit
    def f(step):
        keys = jax.random.split(jax.random.fold_in(root, step), len(shapes))
        return sum(jnp.sum(jax.random.bernoulli(k, 0.9, s)) for k, s in zip(keys, shapes))

    return lambda step: f(step).block_until_ready()


def grad_fn(graphdef, state, ids, positions, impl: str | None):
    """jitted step -> loss and gradients of the model with dropout keyed by `impl` (None: off)."""
    root = None if impl is None else dropout_key(0, impl)

    def loss(s, step):
        key = None if root is None else jax.random.fold_in(root, step)
        out = nnx.merge(graphdef, s)(ids, positions=positions, dropout_key=key)
        return jnp.mean(out.logits**2)

    f = jax.jit(jax.value_and_grad(loss))
    return lambda step: jax.block_until_ready(f(state, step))


def alternate(fns: dict, steps: int) -> dict:
    """Warm-up call each, then `steps` rounds calling every fn once per round; seconds per fn."""
    for f in fns.values():
        f(0)
    times = {name: [] for name in fns}
    for i in range(steps):
        for name, f in fns.items():
            t = time.perf_counter()
            f(i + 1)
            times[name].append(time.perf_counter() - t)
    return times


def _fmt(ts) -> str:
    return f"{1000 * np.median(ts):.1f} ms ({1000 * min(ts):.1f}-{1000 * max(ts):.1f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed rounds after one warm-up call")
    args = p.parse_args()

    cfg = BertConfig(num_hidden_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                     intermediate_size=4 * args.hidden)
    graphdef, state = nnx.split(BertForMaskedLM(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1000, cfg.vocab_size, (args.batch, args.length)), jnp.int32)
    n_pred = max(1, round(0.15 * args.length))
    positions = jnp.asarray(np.sort(rng.permutation(args.length)[:n_pred])[None].repeat(args.batch, 0), jnp.int32)

    masks = alternate({impl: mask_fn(cfg, args.batch, args.length, impl) for impl in IMPLS}, args.steps)
    steps = alternate({str(impl): grad_fn(graphdef, state, ids, positions, impl) for impl in (None,) + IMPLS},
                      args.steps)

    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"backend={jax.default_backend()} devices={jax.devices()}")
    print(f"versions: jax {jax.__version__}, flax {__import__('flax').__version__}")
    print(f"shape: layers={args.layers} hidden={args.hidden} heads={args.heads} batch={args.batch}x{args.length} "
          f"float32; median (min-max) of {args.steps} timed calls, implementations alternating")
    base = np.median(steps["None"])
    print("| PRNG | all masks of a step | forward+backward with dropout | dropout cost in the step |")
    print("|---|---|---|---|")
    for impl in IMPLS:
        print(f"| {impl} | {_fmt(masks[impl])} | {_fmt(steps[impl])} | "
              f"{1000 * (np.median(steps[impl]) - base):+.1f} ms |")
    print(f"| (no dropout) | | {_fmt(steps['None'])} | |")


if __name__ == "__main__":
    main()
