"""Score a masked LM on the bias benchmarks (StereoSet, CrowS-Pairs, SEAT, BEC-Pro, WinoBias).

MODEL is a Hugging Face masked-LM directory, an ncjax checkpoint, `minilm` (the demo encoder;
add --init-missing-head) or a hub id. Scores follow bias-bench exactly (see the docstrings in
ncjax/bench/). The results go to --output as JSON (written atomically); a markdown table of the
headline numbers goes to stdout; --markdown also writes it next to the JSON (.md).

Example:
    python launch/evaluate.py --model minilm --init-missing-head --backend jax \\
        --benchmarks stereoset,crows,seat,becpro,winobias --output /tmp/minilm-bias.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncjax import bench  # noqa: E402
from ncjax.bench import seat  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="launch/evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="HF directory, ncjax checkpoint, 'minilm' or hub id")
    p.add_argument("--benchmarks", default=",".join(bench.BENCHMARKS),
                   help=f"comma-separated subset of {','.join(bench.BENCHMARKS)} (default: all)")
    p.add_argument("--backend", choices=("jax", "torch"), default="jax", help="scoring backend (default: jax)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward pass (default: 64)")
    p.add_argument("--data-dir", default=None,
                   help="directory with stereoset/, crows_pairs/, seat/, bec_pro/, winobias/ (default: bundled)")
    p.add_argument("--output", required=True, help="results JSON path")
    p.add_argument("--markdown", action="store_true", help="also write the markdown table to OUTPUT with .md")
    p.add_argument("--init-missing-head", action="store_true",
                   help="initialise a missing MLM head (encoder-only checkpoints), seeded by --seed")
    p.add_argument("--seed", type=int, default=0, help="seed for SEAT permutations and an initialised head")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first N examples per file (quick look; not comparable numbers)")
    p.add_argument("--stereoset-file", default=None,
                   help="StereoSet JSON (original dev/test) or flattened JSONL (default: bundled dev, flattened)")
    p.add_argument("--crows-pll", action="store_true",
                   help="also score CrowS-Pairs with Nangia et al.'s pseudo-log-likelihood (crows_pll)")
    p.add_argument("--seat-tests", default=",".join(seat.GENDER_TESTS),
                   help="comma-separated SEAT tests, run in this order (default: the gender tests)")
    p.add_argument("--seat-samples", type=int, default=seat.N_SAMPLES,
                   help=f"permutation samples when the exact test is too large (default: {seat.N_SAMPLES})")
    p.add_argument("--becpro-padding", choices=("original", "clean"), default="original",
                   help="BEC-Pro inputs: reference [MASK] padding to 16 (default) or no padding")
    p.add_argument("--winobias-splits", default="test", help="dev, test or dev,test (default: test)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("ncjax").setLevel(logging.INFO)
    try:
        results = bench.evaluate(
            args.model,
            args.benchmarks,
            backend=args.backend,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
            output=args.output,
            limit=args.limit,
            stereoset_file=args.stereoset_file,
            crows_pll=args.crows_pll,
            seat_tests=[t for t in args.seat_tests.split(",") if t],
            n_samples=args.seat_samples,
            seed=args.seed,
            becpro_padding=args.becpro_padding,
            winobias_splits=[s for s in args.winobias_splits.split(",") if s],
            init_missing_head=args.init_missing_head,
            progress=not args.quiet,
        )
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = bench.markdown(results)
    if args.markdown:
        bench.report.write_atomic(Path(args.output).with_suffix(".md"), table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
