"""Training data: corpora, sentence splitting, counterfactual augmentation, tokenisation,
a deterministic index-based sampler, and dynamic MLM masking on device.

Host side (numpy): `load_corpus` reads local tsv/csv/jsonl/text files (through `ncjax.corpus`,
the rules NC measurement uses too) or a hub dataset through Hugging Face `datasets`, optionally
splits paragraphs into sentences (`split_sentences`) and adds two-sided counterfactual copies
(`counterfactual`), and tokenises everything once into fixed-length arrays (`tokenize`, cached on disk under a key of the inputs). `Sampler` turns a position (one
integer, saved in the checkpoint) into the example indices of this process's share of a global
batch: a permutation per epoch from (seed, epoch), split evenly over processes, the remainder
dropped or padded with empty rows.

The MLM masks themselves are drawn on device, inside the step (`ncjax.masking`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ncjax import corpus, files
from ncjax.text import counterfactual, split_sentences, wikitext_paragraphs  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

# Bump when the meaning of a cached token file changes.
_CACHE_VERSION = 2  # 2: local files read by ncjax.corpus (one TSV/CSV rule with measurement)

FORMATS = ("tsv", "csv", "jsonl", "text", "wikitext", "hub")
PADDINGS = ("clean", "attended_mask")

# ----------------------------------------------------------------------------- bundled files


resource_path = files.resource_path  # (kept under this name: recipes and terms use data.resource_path)


BUNDLED = {
    # The GAP corpus with gendered words and names swapped (Bartl et al., 2020): what the paper's
    # BEC experiments fine-tune on.
    "gap_flipped": (("corpora/gap_flipped.tsv",), "tsv", "Text"),
    # The Wikipedia paragraphs of GAP (all three splits; Webster et al., 2018).
    "gap": (("gap/gap-development.tsv", "gap/gap-validation.tsv", "gap/gap-test.tsv"),
            "tsv", "Text"),
    # Only the development and validation splits of GAP (what coreference fine-tuning trains on;
    # gap-test stays unseen).
    "gap_train": (("gap/gap-development.tsv", "gap/gap-validation.tsv"), "tsv", "Text"),
    # WikiText-2 validation and test (Merity et al., 2016; the train split is not bundled).
    "wikitext2": (("corpora/wikitext2/wiki.valid.tokens", "corpora/wikitext2/wiki.test.tokens"), "wikitext", "text"),
    "wikitext2_valid": (("corpora/wikitext2/wiki.valid.tokens",), "wikitext", "text"),
    "wikitext2_test": (("corpora/wikitext2/wiki.test.tokens",), "wikitext", "text"),
}


def resolve_corpus(path: str) -> list[tuple[Path, str | None, str | None]]:
    """data.path -> [(file, its format or None, its text field or None), ...].

    A comma-separated list reads several sources in order; `bundled:NAME` stands for the
    bundled files of NAME (with their format and field); anything else is a path or hub name."""
    out = []
    for part in (p.strip() for p in path.split(",")):
        if part.startswith("bundled:"):
            name = part[len("bundled:"):]
            if name not in BUNDLED:
                raise ValueError(f"data.path {part!r} names no bundled corpus; use one of "
                                 f"{', '.join('bundled:' + k for k in BUNDLED)} or a file path.")
            rels, fmt, field = BUNDLED[name]
            out += [(resource_path(*rel.split("/")), fmt, field) for rel in rels]
        elif part:
            out.append((Path(part).expanduser(), None, None))
    if not out:
        raise ValueError("data.path is empty; name a file, a hub dataset or bundled:gap_flipped.")
    return out


# ----------------------------------------------------------------------------- attribute words


def attribute_pairs(attribute: str = "gender", path: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Word pairs for counterfactual augmentation from `bias_attribute_words.json` (bias-bench's list).

    Returns [(male, female), ...] for `gender` (other attributes hold tuples; only the first two
    entries of each are paired)."""
    file = Path(path) if path else resource_path("bias_attribute_words.json")
    with open(file, encoding="utf-8") as f:
        table = json.load(f)
    if attribute not in table:
        raise ValueError(f"{file} has no attribute {attribute!r}; use one of {', '.join(sorted(table))}.")
    return [(row[0], row[1]) for row in table[attribute]]


# ----------------------------------------------------------------------------- reading


def _read_rows(path: str, fmt: str, field: str, split: str, cache_dir: Path) -> list[str]:
    """Rows of the text field: local files through `ncjax.corpus` (the rules measurement uses),
    hub datasets through `datasets`."""
    if fmt != "hub":
        try:
            return corpus.read_rows(path, fmt, field)
        except ValueError as e:
            raise ValueError(f"data.path: {e}") from None
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(path, split=split, cache_dir=str(cache_dir / "datasets"))
    except Exception as e:
        raise FileNotFoundError(
            f"data.path {path!r} is not a readable hub dataset ({type(e).__name__}: {e}); "
            "check the name and network, or point data.path at a local file."
        ) from e
    if field not in ds.column_names:
        raise ValueError(f"{path} has no column {field!r} (columns: {', '.join(ds.column_names)}); "
                         "set data.text_field to one of them.")
    return [t for t in ds[field] if isinstance(t, str)]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    else:
        # Calling the tokenizer stores its last truncation/padding settings in this JSON: drop them.
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """What to read and how: the `data` block of a training config, as plain values."""

    path: str
    format: str = ""  # "" = from the file suffix
    text_field: str = "Text"
    split: str = "train"
    sentence_split: bool = True
    cda: str = "none"  # "none" or "two_sided"
    cda_attribute: str = "gender"
    max_length: int = 128  # 0: smallest power of two >= the longest text in words (the BEC rule)
    min_words: int = 1
    padding: str = "clean"  # or "attended_mask": BEC's [MASK] padding with attention 1


def spec_from_config(data_config: Any) -> CorpusSpec:
    """CorpusSpec from a config's `data` block (ConfigDict or dict)."""
    names = {f.name for f in dataclasses.fields(CorpusSpec)}
    return CorpusSpec(**{k: data_config[k] for k in names if k in data_config})


def check_corpus(spec: CorpusSpec) -> list[tuple[str, str, str]]:
    """Validates the spec without reading data; returns [(path, format, text field)] per source.

    Raises FileNotFoundError / ValueError with one sentence naming the key and value."""
    if spec.cda not in ("none", "two_sided"):
        raise ValueError(f"data.cda {spec.cda!r} is not 'none' or 'two_sided'.")
    if spec.padding not in PADDINGS:
        raise ValueError(f"data.padding {spec.padding!r} is not one of {', '.join(map(repr, PADDINGS))}.")
    if spec.max_length < 0 or spec.max_length == 1 or spec.max_length == 2:
        raise ValueError(f"data.max_length {spec.max_length} is too small; use 0 (auto) or at least 3.")
    out = []
    for path, fmt, field in resolve_corpus(spec.path):
        fmt = spec.format or fmt
        field = field if (field and not spec.format) else spec.text_field
        if not fmt:
            fmt = corpus.format_of(path) or ""
            if not fmt:
                name = str(path)
                if not path.exists() and "/" in name and not name.startswith((".", "/", "~")):
                    fmt = "hub"
                else:
                    raise ValueError(f"data.path {name} has suffix {path.suffix!r}, which names no format; "
                                     f"set data.format to one of {', '.join(FORMATS)}.")
        if fmt not in FORMATS:
            raise ValueError(f"data.format {fmt!r} is not one of {', '.join(FORMATS)}.")
        if fmt != "hub" and not path.is_file():
            raise FileNotFoundError(f"data.path {path} does not exist; point data.path at a tsv, csv, jsonl "
                                    "or text file (or bundled:gap_flipped).")
        out.append((str(path), fmt, field))
    return out


def read_texts(spec: CorpusSpec, cache_dir: str | os.PathLike, unk: str = "[UNK]") -> list[str]:
    """The training texts: rows of the text field of every source, sentence-split and augmented
    as the spec says (WikiText rows are cleaned first, `<unk>` becoming `unk`)."""
    texts: list[str] = []
    sources = check_corpus(spec)
    for path, fmt, field in sources:
        rows = _read_rows(path, fmt, field, spec.split, Path(cache_dir))
        if fmt == "wikitext":
            rows = wikitext_paragraphs(rows, unk)
        for row in rows:
            texts.extend(split_sentences(row) if spec.sentence_split else [" ".join(row.split())])
    texts = [t for t in texts if len(t.split()) >= max(spec.min_words, 1)]
    if spec.cda == "two_sided":
        pairs = attribute_pairs(spec.cda_attribute)
        # Two-sided CDA keeps every original and adds its counterfactual wherever a swap changed it.
        texts = texts + [c for t in texts if (c := counterfactual(t, pairs)) != t]
    if not texts:
        _, fmt, field = sources[-1]
        where = "no non-empty line" if fmt in ("text", "wikitext") else f"nothing in column {field!r}"
        raise ValueError(f"data.path {spec.path} yields no text ({where}); check the file and data.text_field.")
    return texts


def auto_max_length(texts: Sequence[str], limit: int) -> int:
    """The BEC rule: the smallest power of two >= the longest text in whitespace words, capped at `limit`."""
    longest = max(len(t.split()) for t in texts)
    return int(min(2 ** math.ceil(math.log2(max(longest, 2))), limit))


def tokenize(texts: Sequence[str], tokenizer, max_length: int, padding: str = "clean") -> dict[str, np.ndarray]:
    """Texts -> {'input_ids', 'attention_mask'}: [num_texts, max_length] int32 each.

    [CLS] text [SEP], truncated to max_length. padding 'clean': padded with the pad id and
    attention 0. 'attended_mask' (what the released BEC code did): padded with [MASK] ids and
    attention 1 everywhere, so the model attends to the padding and, with NC3 on the last layer,
    the padding positions enter the class statistics like any token."""
    enc = tokenizer(list(texts), max_length=max_length, truncation=True, padding="max_length",
                    return_attention_mask=True, return_token_type_ids=False)
    ids = np.asarray(enc["input_ids"], np.int32)
    mask = np.asarray(enc["attention_mask"], np.int32)
    if padding == "attended_mask":
        ids = np.where(mask > 0, ids, np.int32(tokenizer.mask_token_id)).astype(np.int32)
        mask = np.ones_like(mask)
    return {"input_ids": ids, "attention_mask": mask}


def load_corpus(spec: CorpusSpec, tokenizer, *, cache_dir: str | os.PathLike,
                position_limit: int = 512) -> dict[str, np.ndarray]:
    """Reads, splits, augments and tokenises a corpus, with the result cached in `cache_dir`.

    Returns {'input_ids', 'attention_mask'}: [num_examples, length] int32. The cache key covers
    the file's sha256 (or the hub name), the spec and the tokenizer, so any change re-tokenises;
    the cache file is written atomically, so concurrent processes never read a partial one."""
    sources = check_corpus(spec)
    cache_dir = Path(cache_dir)
    key = json.dumps({
        "v": _CACHE_VERSION,
        "source": [_file_digest(Path(path)) if fmt != "hub" else path for path, fmt, _ in sources],
        "spec": dataclasses.asdict(spec),
        "tokenizer": _tokenizer_digest(tokenizer),
        "limit": position_limit,
    }, sort_keys=True)
    file = cache_dir / f"tokens-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if file.is_file():
        with np.load(file) as z:
            log.info("tokenised corpus from cache %s", file)
            return {k: z[k] for k in ("input_ids", "attention_mask")}
    texts = read_texts(spec, cache_dir, unk=tokenizer.unk_token or "[UNK]")
    length = spec.max_length or auto_max_length(texts, position_limit)
    if length > position_limit:
        raise ValueError(f"data.max_length {length} exceeds the model's max_position_embeddings "
                         f"{position_limit}; lower data.max_length.")
    arrays = tokenize(texts, tokenizer, length, spec.padding)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files.write_bytes_with(file, lambda tmp: np.savez(tmp, **arrays))
    log.info("tokenised %d texts to length %d (cached in %s)", len(texts), length, file)
    return arrays


# ----------------------------------------------------------------------------- sampler


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Deterministic shuffle / shard / batch over example indices; its state is one integer.

    Position p (the number of global batches already consumed) lies in epoch
    p // steps_per_epoch. Each epoch's order is a permutation drawn from (seed, epoch); global
    batch b of that epoch holds permutation entries [b * B, (b + 1) * B), and process i takes
    the i-th contiguous slice of B / process_count of them, which is the layout
    `jax.make_array_from_process_local_data` assembles along the batch axis. The last partial
    batch is dropped (`drop_remainder`) or completed with index -1 (an empty row)."""

    num_examples: int
    global_batch_size: int
    seed: int
    process_index: int = 0
    process_count: int = 1
    drop_remainder: bool = True
    shuffle: bool = True

    def __post_init__(self):
        if self.global_batch_size % self.process_count:
            raise ValueError(f"train.batch_size {self.global_batch_size} is not divisible by the number of "
                             f"processes {self.process_count}; choose a multiple of it.")
        if self.steps_per_epoch == 0:
            raise ValueError(f"the corpus has {self.num_examples} examples, fewer than one batch of "
                             f"{self.global_batch_size}; lower train.batch_size or set data.remainder='pad'.")

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_remainder:
            return self.num_examples // self.global_batch_size
        return -(-self.num_examples // self.global_batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """[num_examples] int64 permutation of epoch `epoch`."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(self.num_examples)

    def indices(self, position: int) -> np.ndarray:
        """[local_batch_size] int64 example indices of this process for global batch `position`
        (-1 marks padding rows)."""
        epoch, b = divmod(int(position), self.steps_per_epoch)
        order = self.epoch_order(epoch)
        batch = order[b * self.global_batch_size:(b + 1) * self.global_batch_size]
        if batch.size < self.global_batch_size:
            batch = np.concatenate([batch, np.full(self.global_batch_size - batch.size, -1, np.int64)])
        lo = self.process_index * self.local_batch_size
        return batch[lo:lo + self.local_batch_size]


def gather_batch(arrays: dict[str, np.ndarray], idx: np.ndarray, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Rows `idx` of every array ([len(idx), ...]); index -1 gives a padding row (pad ids,
    attention 0, no MLM label, zero weights), which contributes nothing to any loss."""
    out = {}
    safe = np.where(idx < 0, 0, idx)
    for k, a in arrays.items():
        rows = a[safe]
        rows[idx < 0] = {"input_ids": pad_id, "mlm_labels": -100}.get(k, 0)
        out[k] = rows
    return out
