"""A model's tokenizer: found beside its weights, loaded as transformers' fast tokenizer, checked
against the model's vocabulary, and written next to an export.

Every ncjax tool loads tokenizers through `load_tokenizer`, so training, NC measurement and both
bench backends split text identically.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ncjax.weights import resolve_source

log = logging.getLogger(__name__)


def _tokenizer_dir(src: str | os.PathLike) -> Path:
    path = resolve_source(src)
    return path.parent if path.is_file() else path


def has_tokenizer(src: str | os.PathLike) -> bool:
    """Whether the source's directory holds tokenizer files (vocab.txt, tokenizer.json or tokenizer_config.json)."""
    directory = _tokenizer_dir(src)
    return any((directory / f).is_file() for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"))


def load_tokenizer(src: str | os.PathLike):
    """A transformers fast tokenizer from a model directory's tokenizer files (tokenizer.json, or a
    family's own files through tokenizer_config.json), or a bare WordPiece vocab.txt."""
    from transformers import AutoTokenizer, BertTokenizerFast

    directory = _tokenizer_dir(src)
    if not has_tokenizer(src):
        raise FileNotFoundError(f"{directory} has no tokenizer files (tokenizer.json, tokenizer_config.json or "
                                "vocab.txt); copy them there.")
    if (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(directory))
    # transformers 5 reads a plain vocabulary through `vocab=` (it ignores `vocab_file=`).
    return BertTokenizerFast(vocab=str(directory / "vocab.txt"))


def check_tokenizer(tokenizer: Any, vocab_size: int, source: str | os.PathLike) -> None:
    """Raises ValueError unless every id of `tokenizer` has a row in the model's vocabulary
    (len(tokenizer) <= vocab_size; a vocabulary padded beyond the tokenizer is fine)."""
    if len(tokenizer) > vocab_size:
        raise ValueError(f"The tokenizer of {source} has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{vocab_size}; use the tokenizer saved with this model.")


def write_tokenizer(tokenizer_src: str | os.PathLike | None, out: Path) -> None:
    """Saves the tokenizer of `tokenizer_src` (a model source) into directory `out`; with None, logs
    that `out` gets no tokenizer."""
    if tokenizer_src is None:
        log.warning("no tokenizer source given: %s gets weights and config only", out)
        return
    load_tokenizer(tokenizer_src).save_pretrained(str(out))
    # transformers 5 writes tokenizer.json only; keep vocab.txt too for tools that read it directly.
    src = resolve_source(tokenizer_src)
    vocab = (src.parent if src.is_file() else src) / "vocab.txt"
    if vocab.is_file() and not (out / "vocab.txt").exists():
        shutil.copyfile(vocab, out / "vocab.txt")
