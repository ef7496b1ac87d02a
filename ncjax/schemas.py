"""Batch schemas beyond single sequences: the ASE schema of pronoun-masked WinoBias sentences
(here) and the Mabel schema of four-view entailment pairs (`ncjax.pairs`).

A batch is always a dict of [global_batch, ...] arrays, so the sampler, resume and sharding
treat every schema alike. The ASE schema (BERT-ASE, Park et al.; as the released code builds it):

  input_ids      [N, L] int32  the sentence with its pronoun replaced by [MASK], encoded without
                               [CLS]/[SEP] and padded with the pad id to L (164 in the release)
  attention_mask [N, L] int32
  mlm_labels     [N, L] int32  the pronoun's id at the [MASK] position, -100 elsewhere
  neutral_mask   [N, L] float32 1 on the pieces of the first occurrence of each neutral word

Each WinoBias line with exactly one bracketed pronoun gives an example and its gender swap (the
same sentence with its gender words swapped two-sidedly and the opposite pronoun as the label).
`fisher_lines` formats the lines the released EWC Fisher is computed on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ncjax import data, files, pairs
from ncjax.text import counterfactual

SCHEMAS = ("sequences", "ase", "mabel")


def check(data_config) -> None:
    """Validates data.schema and its sources without reading data (one-sentence errors)."""
    schema = data_config.get("schema", "sequences")
    if schema not in SCHEMAS:
        raise ValueError(f"config data.schema={schema!r} is not one of {', '.join(map(repr, SCHEMAS))}.")
    if schema == "sequences":
        data.check_corpus(data.spec_from_config(data_config))
    elif schema == "mabel":
        pairs.check_source(data_config.path)
        if data_config.max_length < 3:
            raise ValueError(f"config data.max_length={data_config.max_length} must be at least 3 for the Mabel schema.")
    else:
        resolve_winobias(data_config.path)
        load_words(data_config.neutral_words)
        if data_config.max_length < 3:
            raise ValueError(f"config data.max_length={data_config.max_length} must be at least 3 for the ASE schema.")


def load(data_config, tokenizer, *, cache_dir, position_limit: int) -> dict[str, np.ndarray]:
    """The training arrays of data.schema: a dict of [num_examples, ...] arrays."""
    if data_config.get("schema", "sequences") == "sequences":
        return data.load_corpus(data.spec_from_config(data_config), tokenizer, cache_dir=cache_dir,
                                position_limit=position_limit)
    if data_config.max_length > position_limit:
        raise ValueError(f"data.max_length {data_config.max_length} exceeds the model's max_position_embeddings "
                         f"{position_limit}; lower data.max_length.")
    if data_config.schema == "mabel":
        return pairs.load(data_config, tokenizer, Path(cache_dir))
    return load_ase(data_config, tokenizer)


# Bracketed pronouns of the WinoBias files, as the released formatter matches them.
_PRONOUN = re.compile(r"\[(he|she|him|his|her|He|She|His|Her)\]")
_SWAP = {"he": "she", "she": "he", "him": "her", "his": "her", "her": "his"}
_FEMALE = ("she", "her")

WINOBIAS_DEV = tuple(f"bench/winobias/{s}_stereotyped_type{t}.txt.dev" for s in ("pro", "anti") for t in (1, 2))
WINOBIAS_TYPE1_TEST = tuple(f"bench/winobias/{s}_stereotyped_type1.txt.test" for s in ("pro", "anti"))


def resolve_winobias(path: str) -> list[Path]:
    """data.path of the ASE schema -> WinoBias-format files: `bundled:winobias_dev` (the four
    bundled dev files) or a comma-separated list of files."""
    if path.strip() == "bundled:winobias_dev":
        return [data.resource_path(*rel.split("/")) for rel in WINOBIAS_DEV]
    paths = [Path(p.strip()).expanduser() for p in path.split(",") if p.strip()]
    for f in paths:
        if not f.is_file():
            raise FileNotFoundError(f"data.path {f} does not exist; point data.path at WinoBias-format text files "
                                    "(one sentence a line, the pronoun in brackets) or bundled:winobias_dev.")
    return paths


def mask_pronoun(line: str, mask_token: str = "[MASK]") -> tuple[str, str] | None:
    """A WinoBias line -> (sentence with the pronoun replaced by `mask_token` and the other
    brackets removed, pronoun in lower case); None unless the line has exactly one bracketed
    pronoun (as the released formatter skips such lines)."""
    found = _PRONOUN.findall(line)
    if len(found) != 1:
        return None
    text = re.sub(r"^\s*\d+\s*", "", line.strip())
    text = _PRONOUN.sub("\x00", text)
    text = re.sub(r"\[(.*?)\]", lambda m: m.group(1), text).replace("\x00", mask_token)
    return " ".join(text.split()), found[0].lower()


def ase_examples(lines: Sequence[str], pairs: Sequence[tuple[str, str]], mask_token: str = "[MASK]",
                 source: str = "data.path") -> list[tuple[str, str]]:
    """(masked sentence, pronoun) for every usable line followed by its gender swap.

    Raises ValueError naming `source` when no line has a pronoun that can be masked."""
    out = []
    for line in lines:
        got = mask_pronoun(line, mask_token)
        if got is None:
            continue
        text, pronoun = got
        out.append((text, pronoun))
        swapped = counterfactual(text.replace(mask_token, "\x00"), pairs).replace("\x00", mask_token)
        out.append((swapped, _SWAP[pronoun]))
    if not out:
        raise ValueError(f"{source} has no line with exactly one bracketed pronoun ([he], [she], [him], [his], "
                         "[her]) to mask; the ASE schema needs WinoBias-format sentences.")
    return out


def neutral_mask(ids: Sequence[int], neutral_pieces: Sequence[Sequence[int]]) -> np.ndarray:
    """[len(ids)] float32: for each neutral word (its piece ids), 1 on the pieces of its first
    occurrence, found where its first piece first occurs (as the released code does)."""
    out = np.zeros(len(ids), np.float32)
    ids = list(ids)
    for pieces in neutral_pieces:
        if pieces and pieces[0] in ids:
            start = ids.index(pieces[0])
            if ids[start:start + len(pieces)] == list(pieces):
                out[start:start + len(pieces)] = 1.0
    return out


def encode_ase(examples: Sequence[tuple[str, str]], tokenizer, length: int,
               neutral_words: Sequence[str]) -> dict[str, np.ndarray]:
    """Examples -> the ASE arrays (module docstring), encoded without special tokens and
    truncated/padded to `length`."""
    pad = tokenizer.pad_token_id or 0
    mask_id = tokenizer.mask_token_id
    pieces = [tokenizer.encode(w, add_special_tokens=False) for w in neutral_words]
    n = len(examples)
    arrays = {"input_ids": np.full((n, length), pad, np.int32), "attention_mask": np.zeros((n, length), np.int32),
              "mlm_labels": np.full((n, length), -100, np.int32), "neutral_mask": np.zeros((n, length), np.float32)}
    for i, (text, pronoun) in enumerate(examples):
        ids = tokenizer.encode(text, add_special_tokens=False)[:length]
        label = tokenizer.convert_tokens_to_ids(pronoun)
        arrays["input_ids"][i, :len(ids)] = ids
        arrays["attention_mask"][i, :len(ids)] = 1
        arrays["mlm_labels"][i, :len(ids)] = np.where(np.asarray(ids) == mask_id, label, -100)
        arrays["neutral_mask"][i, :len(ids)] = neutral_mask(ids, pieces)
    return arrays


def read_lines(paths: Sequence[Path]) -> list[str]:
    return [ln for f in paths for ln in files.read_text(f).splitlines() if ln.strip()]


def load_ase(data_config, tokenizer) -> dict[str, np.ndarray]:
    """The ASE arrays of data.path (WinoBias-format files), with bias-bench's gender pairs for
    the swaps and data.neutral_words (a file, one word a line, or tab-separated words) as the
    neutral words. Raises ValueError / FileNotFoundError in one sentence."""
    paths = resolve_winobias(data_config.path)
    examples = ase_examples(read_lines(paths), data.attribute_pairs("gender"), tokenizer.mask_token,
                            source=f"data.path {data_config.path}")
    return encode_ase(examples, tokenizer, int(data_config.max_length), load_words(data_config.neutral_words))


def load_words(path: str) -> list[str]:
    """Words of a list file (one per line; tab-separated columns all count); `bundled:ase_neutral`
    is the bundled ASE neutral-word list."""
    file = data.resource_path("words", "ase", "no_gender_list.tsv") if path == "bundled:ase_neutral" else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data.neutral_words {path} does not exist; name a word-list file or "
                                "bundled:ase_neutral.")
    return [w for ln in files.read_text(file).splitlines() for w in ln.split("\t") if w.strip()]


def fisher_lines(pro: Sequence[str], anti: Sequence[str]) -> list[str]:
    """The lines the released EWC Fisher reads: each WinoBias type-1 test line with one pronoun,
    the pronoun as [MASK] and its bracketed entity replaced by 'man' (he/him/his) or 'woman'
    (she/her), then the same masked line with the other word. `anti` is read alongside `pro`
    only to keep the released pairing of lines (it does not change the text)."""
    del anti
    out = []
    for line in pro:
        got = mask_pronoun_keep_entity(line)
        if got is None:
            continue
        text, entity, pronoun = got
        first, second = ("woman", "man") if pronoun in _FEMALE else ("man", "woman")
        out.append(text.replace(entity, first, 1))
        out.append(text.replace(entity, second, 1))
    return out


def mask_pronoun_keep_entity(line: str) -> tuple[str, str, str] | None:
    """(masked sentence, the first bracketed entity's text, pronoun) or None (see `mask_pronoun`)."""
    found = _PRONOUN.findall(line)
    entities = [e for e in re.findall(r"\[(.*?)\]", line) if e not in found]
    got = mask_pronoun(line)
    if got is None or not entities:
        return None
    return got[0], entities[0], got[1]
