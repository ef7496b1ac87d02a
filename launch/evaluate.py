"""Score a model on the benchmarks of the registry (bias suite, GLUE, WinoBias coreference, Bias-in-Bios).

MODEL is a Hugging Face masked-LM directory, an ncjax checkpoint, a training checkpoint
(`<workdir>/checkpoints/<step>`, exported once to `<workdir>/export/step_<step>/hf`), `minilm`
(the demo encoder; add --init-missing-head) or a hub id. Scores follow bias-bench exactly (see the docstrings in
ncjax/bench/). The results go to --output as JSON (written atomically); a markdown table of the
headline numbers goes to stdout; --markdown also writes it next to the JSON (.md).

Every output path is checked before the model is loaded, and every benchmark's data is checked
against the model's tokenizer before the first is scored. Exit status: 0 on success; 2 with one
line on stderr on a bad input (nothing written); 1 when a benchmark fails mid-suite (the finished
ones are written, marked "incomplete": true); 130 on Ctrl-C (nothing written).

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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli  # noqa: E402

if __name__ == "__main__":  # before the heavy imports, so an early Ctrl-C is one line too
    cli.exit_on_interrupt("interrupted; no result file was written")

from ncjax import bench, cache, files  # noqa: E402
from ncjax.bench import registry  # noqa: E402


def _checked(o: registry.Option):
    """The option's parser, with its error message shown as is by argparse."""

    def parse(text: str):
        try:
            return o.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{o.cli_flag} {text!r}: {e}") from e

    parse.__name__ = o.name
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser("launch/evaluate.py", __doc__)
    p.add_argument("--model", required=True, help="HF directory, ncjax checkpoint, training checkpoint (WORKDIR/checkpoints/STEP), 'minilm' or hub id")
    p.add_argument("--benchmarks", default=",".join(bench.BENCHMARKS),
                   help=f"comma-separated subset of {','.join(registry.names())}, or all "
                        f"(default: {','.join(bench.BENCHMARKS)})")
    p.add_argument("--backend", choices=("jax", "torch"), default="jax", help="scoring backend (default: jax)")
    p.add_argument("--batch-size", type=cli.whole_number("--batch-size", 1),
                   default=64, help="rows per forward pass (default: 64)")
    p.add_argument("--data-dir", default=None,
                   help="directory with stereoset/, crows_pairs/, seat/, bec_pro/, winobias/ (default: bundled)")
    p.add_argument("--output", required=True, help="results JSON path")
    p.add_argument("--markdown", action="store_true", help="also write the markdown table to OUTPUT with .md")
    p.add_argument("--init-missing-head", action="store_true",
                   help="initialise a missing MLM head (encoder-only checkpoints), seeded by --seed")
    p.add_argument("--limit", type=cli.whole_number("--limit", 0, " of examples"),
                   default=None,
                   help="only the first N examples per file or split (smoke runs; not comparable numbers; "
                        "0: all)")
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
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="keep compiled programs in DIR for later runs (default: JAX_COMPILATION_CACHE_DIR, "
                        "else ~/.cache/ncjax/jax; 'off' turns it off)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("ncjax").setLevel(logging.INFO)
    markdown = Path(args.output).with_suffix(".md") if args.markdown else None
    try:
        files.check_outputs({"--output": args.output, "--markdown": markdown, "--per-example": args.per_example})
        if args.workdir is not None:
            files.check_directory(args.workdir, "--workdir")
        cache.enable(args.compile_cache)
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
    except bench.IncompleteSuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = bench.markdown(results)
    if markdown is not None:
        files.write_text(markdown, table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
