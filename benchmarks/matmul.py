"""What each framework's float32 matrix product reaches on this machine: the ceiling of a step.

A training step or a forward pass is mostly matrix products; everything else (LayerNorm, softmax,
GELU, dropout, the optimiser) only adds time. So a framework's step cannot run at more model
FLOP/s than its own matrix product does, and a step ratio between two frameworks cannot exceed
the ratio of one's product throughput to the other's achieved step throughput. This script
measures that ceiling: jitted `a @ b` in JAX (XLA) and `a @ b` in PyTorch (its BLAS, `torch.
get_num_threads()` threads), each side in its own process, at the products of the MiniLM-shape
step (16 x 64 = 1024 token rows, hidden 384, feed-forward 1536) and one large square product.
Each shape: 2 untimed calls, then `--repeats` timed calls; median (min-max) GFLOP/s.

    python benchmarks/matmul.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import timed  # noqa: E402  (the benchmarks' shared timing loop)

# (rows, contraction, columns): the step's products (Q/K/V/output projection, feed-forward in and
# out at 1024 token rows) and a large square one
SHAPES = ((1024, 384, 384), (1024, 384, 1536), (1024, 1536, 384), (2048, 2048, 2048))
SIDES = ("jax", "torch")


def run_side(side: str, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        if side == "jax":
            import jax
            import jax.numpy as jnp

            product = jax.jit(lambda x, y: x @ y)
            xa, xb = jnp.asarray(a), jnp.asarray(b)

            def call():
                product(xa, xb).block_until_ready()
        else:
            import torch

            ta, tb = torch.from_numpy(a), torch.from_numpy(b)

            def call():
                ta @ tb
        out[f"{m}x{k}x{n}"] = [2 * m * k * n / s / 1e9 for s in timed(call, repeats)]
    if side == "jax":
        import jax

        out["version"] = f"jax {jax.__version__}"
    else:
        import torch

        out["version"] = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20, help="timed calls a shape (default 20)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.repeats)))
        return
    res = {}
    for side in SIDES:
        proc = subprocess.run([sys.executable, __file__, "--side", side, "--repeats", str(args.repeats)],
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the {side} side failed (exit {proc.returncode}); its output is above.")
        res[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"# float32 matrix products, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{res['jax'].pop('version')}, {res['torch'].pop('version')}, Python {platform.python_version()}")
    print("| product (rows x contraction x columns) | JAX GFLOP/s | PyTorch GFLOP/s | JAX / PyTorch |")
    print("|---|---|---|---|")
    for shape in res["jax"]:
        j, t = res["jax"][shape], res["torch"][shape]
        cells = [f"{statistics.median(x):.1f} ({min(x):.1f}-{max(x):.1f})" for x in (j, t)]
        print(f"| {shape} | {cells[0]} | {cells[1]} | {statistics.median(j) / statistics.median(t):.2f}x |")


if __name__ == "__main__":
    main()
