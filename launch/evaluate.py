"""Score a model on the benchmarks of the registry (bias suite, GLUE, WinoBias coreference, Bias-in-Bios).

MODEL is a Hugging Face masked-LM directory, an ncjax checkpoint, `minilm` (the demo encoder;
add --init-missing-head) or a hub id. Scores follow bias-bench exactly (see the docstrings in
ncjax/bench/). The results go to --output as JSON (written atomically); a markdown table of the
headline numbers goes to stdout; --markdown also writes it next to the JSON (.md).

Example:
    python launch/evaluate.py --model minilm --init-missing-head --backend jax \\
        --benchmarks stereoset,crows,seat,becpro,winobias-probe --output /tmp/minilm-bias.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncjax import bench  # noqa: E402
from ncjax.bench import registry  # noqa: E402


def _positive(text: str) -> int:
    try:
        return registry.positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit {text!r} must be a positive whole number of examples") from None


def _checked(o: registry.Option):
    """The option's parser, with its error message shown as is by argparse."""

    def parse(text: str):
        try:
            return o.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{o.cli_flag} {text!r}: {e}") from e

    parse.__name__ = o.name
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """Bad flags: one line on stderr (no usage dump), exit status 2."""
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(
        prog="launch/evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="HF directory, ncjax checkpoint, 'minilm' or hub id")
    p.add_argument("--benchmarks", default=",".join(bench.BENCHMARKS),
                   help=f"comma-separated subset of {','.join(registry.names())}, or all "
                        f"(default: {','.join(bench.BENCHMARKS)})")
    p.add_argument("--backend", choices=("jax", "torch"), default="jax", help="scoring backend (default: jax)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward pass (default: 64)")
    p.add_argument("--data-dir", default=None,
                   help="directory with stereoset/, crows_pairs/, seat/, bec_pro/, winobias/ (default: bundled)")
    p.add_argument("--output", required=True, help="results JSON path")
    p.add_argument("--markdown", action="store_true", help="also write the markdown table to OUTPUT with .md")
    p.add_argument("--init-missing-head", action="store_true",
                   help="initialise a missing MLM head (encoder-only checkpoints), seeded by --seed")
    p.add_argument("--limit", type=_positive, default=None,
                   help="only the first N examples per file or split (smoke runs; not comparable numbers)")
    p.add_argument("--workdir", default=None,
                   help="where fine-tuning runs live; a rerun resumes them (default: a temporary directory)")
    p.add_argument("--per-example", default=None, metavar="FILE.jsonl",
                   help="write every example's score for every benchmark as JSON Lines")
    for o in registry.options():
        if o.switch:
            p.add_argument(o.cli_flag, dest=o.name, action="store_true", help=o.help)
        else:
            p.add_argument(o.cli_flag, dest=o.name, type=_checked(o), default=o.default, choices=o.choices,
                           help=o.help)
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
            workdir=args.workdir,
            per_example=args.per_example,
            init_missing_head=args.init_missing_head,
            progress=not args.quiet,
            **{o.name: getattr(args, o.name) for o in registry.options()},
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
