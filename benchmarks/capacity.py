"""The largest batch per device that the MLM + NC3 train step fits in, by sequence length and layer option.

For each length and layer option (`compile.py`'s variants) the step is compiled, not run, at two
batch sizes. XLA's memory analysis of a compiled step gives the bytes it will hold at its peak:
arguments + outputs - donated (aliased) buffers + temporaries. That is a line in the batch size
(the parameters and optimiser state are fixed, the activations grow with each row), so two
compiles give the slope and the intercept and the line gives the largest batch under the
device's memory. That batch and the next one are then compiled to confirm the first fits and the
second does not (one more or one fewer compile where the line was off), and with `--run` the
largest batch runs one step, which fails loudly if the device runs out of memory after all.

The memory budget is the device's own (`memory_stats()["bytes_limit"]` on GPUs and TPUs) or
`--memory-gib` (needed on a CPU, where there is no device limit).

    python benchmarks/capacity.py --dtype bfloat16 --lengths 128,512 --run     # bert-base on a GPU
    python benchmarks/capacity.py --layers 6 --hidden 384 --lengths 64 --memory-gib 2   # MiniLM, CPU
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from compile import VARIANTS, build, make_batch  # noqa: E402
from ncjax import convert, words  # noqa: E402
from ncjax.model import BertConfig  # noqa: E402


def peak_bytes(compiled) -> int:
    """Bytes a compiled step holds at its peak: arguments + outputs - aliased + temporaries."""
    m = compiled.memory_analysis()
    if m is None:
        raise SystemExit("this backend reports no memory analysis of compiled programs; capacity cannot be estimated.")
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def largest_batch(bytes_at, budget: int, first: int = 8) -> tuple[int, dict[int, int]]:
    """The largest batch b with bytes_at(b) <= budget, and every {batch: bytes} measured.

    bytes_at: batch -> peak bytes (one compile). Fits a line through batches `first` and 2*first,
    then walks from its prediction by one until b fits and b + 1 does not.
    """
    seen: dict[int, int] = {}

    def at(b: int) -> int:
        if b not in seen:
            seen[b] = bytes_at(b)
        return seen[b]

    if at(first) > budget:
        raise SystemExit(f"batch {first} already needs {at(first) / 2**30:.2f} GiB, over the "
                         f"{budget / 2**30:.2f} GiB budget; a smaller model or length is needed.")
    slope = (at(2 * first) - at(first)) / first
    b = 2 * first if slope <= 0 else max(1, int(math.floor((budget - at(first)) / slope)) + first)
    while at(b) > budget and b > 1:
        b -= 1
    while at(b + 1) <= budget:
        b += 1
    return b, dict(sorted(seen.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="128,512", help="comma-separated sequence lengths (default 128,512)")
    p.add_argument("--variants", default="unrolled,scan + remat",
                   help=f"comma-separated layer options of {', '.join(VARIANTS)} (default: unrolled,scan + remat)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--memory-gib", type=float, default=None,
                   help="memory budget per device in GiB (default: the device's bytes_limit; required on a CPU)")
    p.add_argument("--run", action="store_true", help="run one step at each largest batch to confirm it")
    args = p.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown[0]!r}; choose from {', '.join(VARIANTS)}.")
    device = jax.devices()[0]
    if args.memory_gib is not None:
        budget = int(args.memory_gib * 2**30)
    else:
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if not stats or "bytes_limit" not in stats:
            raise SystemExit(f"{device.platform} device {device} reports no memory limit; pass --memory-gib.")
        budget = int(stats["bytes_limit"])

    tokenizer = convert.load_tokenizer(convert.minilm_dir())
    class_ids = np.asarray(words.resolve(words.bundled("gender-gnglove"), tokenizer, "first_piece").ids, np.int32)
    cfg = BertConfig(num_hidden_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                     intermediate_size=4 * args.hidden)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    print(f"# largest batch per device, {time.strftime('%Y-%m-%d')}, {device.device_kind} ({device.platform}), "
          f"budget {budget / 2**30:.2f} GiB, jax {jax.__version__}, Python {platform.python_version()}")
    print(f"# shape: layers={args.layers} hidden={args.hidden} {args.dtype}; MLM + NC3 step (alpha 100, dropout on)")
    print("| length | layers | largest batch | peak GiB at it | GiB at batch + 1 | compiles | compile s (total) |"
          + (" one step s |" if args.run else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if args.run else ""))
    for length in [int(x) for x in args.lengths.split(",")]:
        for name in variants:
            compile_s = []

            def bytes_at(rows: int) -> int:
                fn, state, batch = build(cfg, VARIANTS[name], dtype, make_batch(cfg, class_ids, rows, length),
                                         class_ids, tokenizer)
                t = time.perf_counter()
                compiled = fn.lower(state, batch).compile()
                compile_s.append(time.perf_counter() - t)
                return peak_bytes(compiled)

            b, seen = largest_batch(bytes_at, budget)
            cells = [str(length), name, str(b), f"{seen[b] / 2**30:.3f}", f"{seen[b + 1] / 2**30:.3f}",
                     str(len(seen)), f"{sum(compile_s):.1f}"]
            if args.run:
                fn, state, batch = build(cfg, VARIANTS[name], dtype, make_batch(cfg, class_ids, b, length),
                                         class_ids, tokenizer)
                t = time.perf_counter()
                state, metrics = fn(state, batch)
                jax.block_until_ready(metrics)
                cells.append(f"{time.perf_counter() - t:.1f}")
                del state, batch
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
