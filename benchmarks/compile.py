"""Compile time, step time and compiled memory of the MLM + NC3 train step by layer option:
unrolled layers vs one `lax.scan` over the layers, each with and without remat.

For each variant: seconds to lower and compile `ncjax.step.make_train_step` (the bert_nc3 recipe,
alpha 100, dropout on), the median (min-max) of the timed steps after one warm-up step, and the
compiled executable's temporary buffer size (`memory_analysis().temp_size_in_bytes`: the
activations kept for the backward pass; what remat trades for recomputation).

    python benchmarks/compile.py                                  # bert-base shape, batch 16 x 128
    python benchmarks/compile.py --layers 6 --hidden 384 --length 64   # MiniLM shape
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

from ncjax import convert, masking, parallel, step, words  # noqa: E402
from ncjax.model import BertConfig, BertForMaskedLM  # noqa: E402

VARIANTS = {
    "unrolled": dict(scan_layers=False, remat=False),
    "unrolled + remat": dict(scan_layers=False, remat=True),
    "scan": dict(scan_layers=True, remat=False),
    "scan + remat": dict(scan_layers=True, remat=True),
}


def make_batch(cfg, class_ids, rows: int, length: int) -> dict:
    """A random batch [rows, length] with a class word every 7th position, so NC3 has statistics."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg.vocab_size, (rows, length)).astype(np.int32)
    ids[:, 1:-1:7] = rng.choice(class_ids, size=ids[:, 1:-1:7].shape)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def build(cfg, options, dtype, batch, class_ids, tokenizer):
    """(jitted step, train state, global batch) of one variant on one device."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_step import _config  # the recipe the benchmark scripts share

    config = _config()
    graphdef, state = nnx.split(BertForMaskedLM(cfg, rngs=nnx.Rngs(0), dtype=dtype, **options))
    params = jax.device_get(nnx.to_pure_dict(state))
    mesh = parallel.make_mesh(1)
    schedule = step.make_schedule(config.optim, 1000)
    tx = step.make_optimizer(config.optim, schedule)
    length = batch["input_ids"].shape[1]
    from ncjax.terms import mlm, nc3

    spec = mlm.MaskSpec(tuple(masking.special_token_ids(tokenizer)), tokenizer.mask_token_id, cfg.vocab_size, 0.15,
                        masking.default_max_predictions(length, 0.15))
    loss_terms = [mlm.MLM(spec), nc3.NC3(nc3.PenaltySpec.from_config(config.penalty), spec,
                                         np.asarray(class_ids, np.int32), cfg.hidden_size)]
    fn = step.make_train_step(graphdef, tx, schedule, mesh=mesh, seed=0, terms=loss_terms)
    train_state = step.init_state(params, tx, mesh, loss_terms)
    return fn, train_state, parallel.global_batch(batch, mesh)


def measure(cfg, options, dtype, batch, class_ids, tokenizer, steps):
    """(compile seconds, per-step seconds, temp bytes or None) of one variant."""
    fn, train_state, global_batch = build(cfg, options, dtype, batch, class_ids, tokenizer)
    t = time.perf_counter()
    compiled = fn.lower(train_state, global_batch).compile()
    compile_s = time.perf_counter() - t
    memory = compiled.memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    train_state, m = compiled(train_state, global_batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        train_state, m = compiled(train_state, global_batch)
        jax.block_until_ready((train_state, m))
        times.append(time.perf_counter() - t)
    return compile_s, times, temp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    args = p.parse_args()

    tokenizer = convert.load_tokenizer(convert.minilm_dir())
    class_ids = np.asarray(words.resolve(words.bundled("gender-gnglove"), tokenizer, "first_piece").ids, np.int32)
    cfg = BertConfig(num_hidden_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                     intermediate_size=4 * args.hidden)
    batch = make_batch(cfg, class_ids, args.batch, args.length)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32

    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} devices={jax.devices()}")
    print(f"versions: jax {jax.__version__}, flax {__import__('flax').__version__}")
    print(f"shape: layers={args.layers} hidden={args.hidden} batch={args.batch}x{args.length} {args.dtype}; "
          f"MLM + NC3 step (alpha 100, dropout on); median (min-max) of {args.steps} steps after 1 warm-up")
    print("| layers | compile s | s/step (min-max) | temporary buffers |")
    print("|---|---|---|---|")
    for name, options in VARIANTS.items():
        compile_s, times, temp = measure(cfg, options, dtype, batch, class_ids, tokenizer, args.steps)
        mem = f"{temp / 2**20:,.0f} MiB" if temp is not None else "n/a"
        print(f"| {name} | {compile_s:.1f} | {np.median(times):.3f} ({min(times):.3f}-{max(times):.3f}) | {mem} |",
              flush=True)


if __name__ == "__main__":
    main()
