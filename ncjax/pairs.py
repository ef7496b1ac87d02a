"""The Mabel batch schema: premise/hypothesis pairs with their gender-counterfactual views.

Each example is four views of one entailment (or paraphrase) pair, in MABEL's order

  input_ids      [N, 4, L] int32  original premise, original hypothesis, augmented premise,
                                  augmented hypothesis; [CLS] text [SEP], truncated and padded
                                  with the pad id to L (128 in the release)
  attention_mask [N, 4, L] int32

so the sampler, resume and sharding (which index axis 0) treat it like any other schema.

Sources (data.path):
  bundled:glue_pairs  offline default: the GLUE RTE training pairs labelled 'entailment' and the
                      MRPC training pairs of quality 1 (paraphrases) in which the premise or the
                      hypothesis holds a gender word; the augmented views swap every gender word
                      two-sidedly with bias-bench's attribute pairs (`data.attribute_pairs`).
  a .csv/.tsv file or a hub dataset with MABEL's columns orig_sent0, orig_sent1, aug_sent0,
                      aug_sent1 (its entailment_data.csv: gender-augmented SNLI + MNLI
                      entailment pairs), taken as they are; with only orig_sent0 and orig_sent1,
                      the augmented views are made and the pairs without a gender word dropped
                      as for the bundled pairs.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ncjax import data, files
from ncjax.text import counterfactual

BUNDLED = "bundled:glue_pairs"
ORIGINAL = ("orig_sent0", "orig_sent1")
AUGMENTED = ("aug_sent0", "aug_sent1")
RTE = ("glue", "RTE", "train.tsv")
MRPC = ("glue", "MRPC", "msr_paraphrase_train.txt")


def check_source(path: str) -> None:
    """Validates data.path of the Mabel schema without reading it (one-sentence errors)."""
    path = path.strip()
    if path == BUNDLED or _is_hub(path):
        return
    if path.startswith("bundled:"):
        raise ValueError(f"data.path {path!r} names no bundled pair corpus of the Mabel schema; use {BUNDLED}.")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data.path {file} does not exist; point data.path at MABEL's entailment_data.csv "
                                f"(or a csv/tsv with its columns), a hub dataset, or {BUNDLED}.")
    if file.suffix.lower() not in (".csv", ".tsv"):
        raise ValueError(f"data.path {file} is not a .csv or .tsv file; the Mabel schema reads MABEL's "
                         "entailment_data.csv layout.")


def _is_hub(path: str) -> bool:
    return not Path(path).expanduser().exists() and "/" in path and not path.startswith((".", "/", "~", "bundled:"))


def _read_tsv(file: Path) -> list[dict[str, str]]:
    # GLUE files hold unbalanced quotes: no quoting; utf-8-sig drops MRPC's byte-order mark.
    with files.text_stream(file, "utf-8-sig") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def glue_pairs() -> list[tuple[str, str]]:
    """(premise, hypothesis) of the bundled RTE entailment pairs, then the MRPC paraphrases."""
    rte = [(r["sentence1"], r["sentence2"]) for r in _read_tsv(data.resource_path(*RTE)) if r["label"] == "entailment"]
    mrpc = [(r["#1 String"], r["#2 String"]) for r in _read_tsv(data.resource_path(*MRPC)) if r["Quality"] == "1"]
    return rte + mrpc


def read_columns(path: str, split: str, cache_dir: Path) -> dict[str, list[str]]:
    """{column: values} of a local csv/tsv (header row) or a hub dataset split."""
    if _is_hub(path):
        import datasets

        try:
            ds = datasets.load_dataset(path, split=split, cache_dir=str(cache_dir / "datasets"))
        except Exception as e:
            raise FileNotFoundError(f"data.path {path!r} is not a readable hub dataset ({type(e).__name__}); "
                                    "check the name and network, or point data.path at a local file.") from e
        return {c: [str(v) for v in ds[c]] for c in ds.column_names}
    file = Path(path).expanduser()
    with files.text_stream(file, "utf-8-sig") as f:
        rows = list(csv.DictReader(f, delimiter="\t" if file.suffix.lower() == ".tsv" else ","))
    columns = list(rows[0]) if rows else []
    return {c: [r[c] or "" for r in rows] for c in columns}


def augment(pairs: Sequence[tuple[str, str]], swaps: Sequence[tuple[str, str]],
            source: str) -> list[tuple[str, str, str, str]]:
    """(premise, hypothesis, swapped premise, swapped hypothesis) for every pair in which a
    gender word was swapped. Raises ValueError naming `source` when no pair holds one."""
    out = []
    for premise, hypothesis in pairs:
        p, h = counterfactual(premise, swaps), counterfactual(hypothesis, swaps)
        if p != premise or h != hypothesis:
            out.append((premise, hypothesis, p, h))
    if not out:
        raise ValueError(f"{source} has no pair with a gender word (of bias-bench's gender attribute pairs) to swap; "
                         "the Mabel schema needs pairs about people with a gender.")
    return out


def examples(data_config, cache_dir: Path) -> list[tuple[str, str, str, str]]:
    """The four views of every example of data.path (module docstring)."""
    path = data_config.path.strip()
    swaps = data.attribute_pairs("gender")
    if path == BUNDLED:
        return augment(glue_pairs(), swaps, f"data.path {path}")
    table = read_columns(path, data_config.split, cache_dir)
    if not all(c in table for c in ORIGINAL):
        raise ValueError(f"data.path {path} has columns {', '.join(table) or '(none)'}, but the Mabel schema needs "
                         f"{', '.join(ORIGINAL + AUGMENTED)} (MABEL's entailment_data.csv), or at least "
                         f"{' and '.join(ORIGINAL)} to augment.")
    if all(c in table for c in AUGMENTED):
        rows = list(zip(*(table[c] for c in ORIGINAL + AUGMENTED)))
        if not rows:
            raise ValueError(f"data.path {path} holds no data rows; check the file.")
        return rows
    return augment(list(zip(*(table[c] for c in ORIGINAL))), swaps, f"data.path {path}")


def encode(views: Sequence[tuple[str, str, str, str]], tokenizer, length: int) -> dict[str, np.ndarray]:
    """Examples -> {'input_ids', 'attention_mask'}: [N, 4, length] int32 each."""
    flat = [v for example in views for v in example]
    enc = data.tokenize(flat, tokenizer, length)
    return {k: v.reshape(len(views), 4, length) for k, v in enc.items()}


def load(data_config, tokenizer, cache_dir: Path) -> dict[str, np.ndarray]:
    """The Mabel arrays of data.path at data.max_length tokens."""
    return encode(examples(data_config, cache_dir), tokenizer, int(data_config.max_length))
