"""Fairness-sensitive word sets and their resolution to token ids (docs/words.md).

A `WordSet` is a name plus one or more sides of words (the bundled gender sets have a
'female' and a 'male' side). `resolve(word_set, tokenizer, policy)` maps it to token ids:

- `first_piece` (what the paper's released code did): each word maps to the first piece of
  its tokenisation. Words split into several pieces are represented by a piece that is
  often generic (`and` from androgen, `to` from toque); the report lists them as `partial`.
  A first piece that is only the word-start marker (SentencePiece may split `▁` + `xyz`) is
  skipped: the word maps to the piece after it.
- `whole_word`: only words that are a single token are kept; the rest are reported dropped.

Words are tokenised as they occur inside running text, after a space (' ' + word), so the piece
is the one the model sees there, whatever the tokenizer family (docs/words.md): WordPiece (BERT,
DistilBERT) ignores the space (first piece `nurse`, continuations `##...`); byte-level BPE
(RoBERTa) marks the word start (`Ġnurse`; without the space it would be `nurse`, the
sentence-initial form, another id); SentencePiece (ALBERT) marks every word start (`▁nurse`).

Words whose piece is the tokenizer's unknown token, or one of its special tokens ([CLS], [SEP],
[MASK], [PAD]: never a class, since they carry no word), are dropped under both policies. The
resolution carries the sorted unique ids and a report: kept words (with their id and piece),
dropped words (with the reason), partial words (first_piece only) and collisions (ids reached
from more than one side, e.g. `country` from countrywoman and countryman).

Bundled sets (ncjax/resources/words, provenance and licences in ncjax/resources/README.md):
`gender-adept` (ADEPT female.txt / male.txt, 230 lines a side) and `gender-gnglove` (the
GN-GloVe lists as used by ASE/BEC, 222 lines a side). With the bert-base-uncased vocabulary,
first_piece gives 287 and 271 ids, the same ids as the released code's index files.

User word lists: a text file with one word per line (one side, 'words'), or two words per
line separated by a tab or a comma (two sides, 'side1' and 'side2'); or two one-word-per-line
files given as 'a.txt,b.txt' (sides named after the files). Blank lines and lines starting
with '#' are skipped; repeated words within a side count once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

from ncjax import files

POLICIES = ("first_piece", "whole_word")
WORD_START_MARKERS = ("▁", "Ġ")  # a piece that is only the marker carries no part of the word

_BUNDLED = {
    "gender-adept": {"female": "adept/female.txt", "male": "adept/male.txt"},
    "gender-gnglove": {"female": "gnglove/female_word_file.txt", "male": "gnglove/male_word_file.txt"},
}


@dataclasses.dataclass(frozen=True)
class WordSet:
    """name: how it was given; sides: {side name: words in file order, unique within a side}."""

    name: str
    sides: dict[str, tuple[str, ...]]

    @property
    def num_words(self) -> int:
        return sum(len(w) for w in self.sides.values())


@dataclasses.dataclass(frozen=True)
class Kept:
    word: str
    side: str
    token_id: int
    piece: str
    whole: bool  # the word is a single token


@dataclasses.dataclass(frozen=True)
class Dropped:
    word: str
    side: str
    reason: str  # 'multi_piece' (whole_word policy), 'unknown', 'special' or 'empty'
    pieces: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Collision:
    token_id: int
    piece: str
    words: dict[str, tuple[str, ...]]  # side -> words of that side that map here


@dataclasses.dataclass(frozen=True)
class Resolution:
    """ids: sorted unique token ids; the rest is the report."""

    name: str
    policy: str
    ids: tuple[int, ...]
    kept: tuple[Kept, ...]
    dropped: tuple[Dropped, ...]
    collisions: tuple[Collision, ...]

    @property
    def partial(self) -> tuple[Kept, ...]:
        """Kept words represented by a piece that is not the whole word (first_piece only)."""
        return tuple(k for k in self.kept if not k.whole)

    @property
    def generic_pieces(self) -> tuple[str, ...]:
        """Sorted unique pieces that stand in for a longer word (e.g. 'and' for androgen)."""
        return tuple(sorted({k.piece for k in self.partial}))

    def summary(self) -> str:
        """A few lines for a log: counts, dropped words, collisions, generic pieces."""
        lines = [
            f"word set {self.name} ({self.policy}): {len(self.ids)} ids from {len(self.kept)} kept words, "
            f"{len(self.dropped)} dropped, {len(self.collisions)} ids shared between sides"
        ]
        if self.dropped:
            lines.append("dropped: " + ", ".join(f"{d.word} ({d.reason})" for d in self.dropped))
        if self.partial:
            lines.append(
                "first pieces standing for longer words: "
                + ", ".join(f"{k.word}->{k.piece}" for k in self.partial)
            )
        if self.collisions:
            lines.append(
                "shared ids: "
                + "; ".join(
                    f"{c.piece} <- " + " | ".join(",".join(ws) for ws in c.words.values()) for c in self.collisions
                )
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the resolution and its report."""
        return {
            "name": self.name,
            "policy": self.policy,
            "num_ids": len(self.ids),
            "ids": list(self.ids),
            "kept": [dataclasses.asdict(k) for k in self.kept],
            "dropped": [dataclasses.asdict(d) for d in self.dropped],
            "collisions": [dataclasses.asdict(c) for c in self.collisions],
            "generic_pieces": list(self.generic_pieces),
        }


def bundled_names() -> tuple[str, ...]:
    return tuple(_BUNDLED)


def _read_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _unique(words: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(words))


def bundled(name: str) -> WordSet:
    """One of the bundled word sets: 'gender-adept' or 'gender-gnglove'."""
    if name not in _BUNDLED:
        raise ValueError(f"unknown bundled word set {name!r}; choose one of {', '.join(_BUNDLED)}.")
    root = files.resource_path("words")
    sides = {
        side: _unique(_read_lines(files.read_text(root / rel)))
        for side, rel in _BUNDLED[name].items()
    }
    return WordSet(name, sides)


def load_word_list(spec: str | Path) -> WordSet:
    """A user word list: 'file.txt' (one word a line, or 'a<TAB>b' / 'a,b' pairs a line) or
    'first.txt,second.txt' (two one-word-per-line files, one side each)."""
    spec = str(spec)
    paths = [Path(p) for p in spec.split(",")] if "," in spec and not Path(spec).is_file() else [Path(spec)]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"word list {p} does not exist; give a text file with one word per line.")
    if len(paths) > 1:
        sides = {}
        for p in paths:
            words = _read_lines(files.read_text(p))
            if any(len(_split_pair(w)) != 1 for w in words):
                raise ValueError(f"word list {p}: give one word per line when lists are given as separate files.")
            name = p.stem if p.stem not in sides else str(p)
            sides[name] = _unique(words)
        ws = WordSet(spec, sides)
    else:
        rows = [_split_pair(ln) for ln in _read_lines(files.read_text(paths[0]))]
        widths = {len(r) for r in rows}
        if not rows:
            raise ValueError(f"word list {spec} holds no words; give one word per line.")
        if widths == {1}:
            ws = WordSet(spec, {"words": _unique(r[0] for r in rows)})
        elif widths == {2}:
            ws = WordSet(spec, {"side1": _unique(r[0] for r in rows), "side2": _unique(r[1] for r in rows)})
        else:
            raise ValueError(
                f"word list {paths[0]}: every line must hold one word, or two words separated by a tab or a comma."
            )
    if ws.num_words == 0:
        raise ValueError(f"word list {spec} holds no words; give one word per line.")
    return ws


def _split_pair(line: str) -> list[str]:
    for sep in ("\t", ","):
        if sep in line:
            return [p.strip() for p in line.split(sep)]
    return [line]


def load_word_set(spec: str | Path) -> WordSet:
    """A bundled name ('gender-adept', 'gender-gnglove') or a user word list (see `load_word_list`)."""
    if str(spec) in _BUNDLED:
        return bundled(str(spec))
    return load_word_list(spec)


def special_ids(tokenizer: Any) -> frozenset[int]:
    """The ids of a tokenizer's special tokens ([CLS], [SEP], [MASK], [PAD], [UNK], ...)."""
    if hasattr(tokenizer, "all_special_ids"):  # transformers
        return frozenset(int(i) for i in tokenizer.all_special_ids)
    added = getattr(tokenizer, "get_added_tokens_decoder", lambda: {})()  # tokenizers.Tokenizer
    return frozenset(int(i) for i, t in added.items() if getattr(t, "special", False))


def _pieces(tokenizer: Any, word: str) -> tuple[list[str], list[int], int | None]:
    """Word -> (pieces, ids, unk_id) for a transformers tokenizer or a `tokenizers.Tokenizer`,
    the word tokenised as it follows a space in running text."""
    word = " " + word
    if hasattr(tokenizer, "convert_tokens_to_ids"):  # transformers
        pieces = tokenizer.tokenize(word)
        ids = list(tokenizer.convert_tokens_to_ids(pieces))
        return pieces, ids, tokenizer.unk_token_id
    enc = tokenizer.encode(word, add_special_tokens=False)  # tokenizers.Tokenizer
    model = getattr(tokenizer, "model", None)
    unk = getattr(model, "unk_token", None)
    unk_id = tokenizer.token_to_id(unk) if unk else None
    return list(enc.tokens), list(enc.ids), unk_id


def resolve(word_set: WordSet, tokenizer: Any, policy: str = "first_piece", *, min_ids: int = 2) -> Resolution:
    """Token ids of a word set under a tokenizer, with the report described in the module docstring.

    Raises ValueError for an unknown policy or when fewer than `min_ids` ids remain.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown word policy {policy!r}; choose first_piece or whole_word.")
    kept, dropped = [], []
    special = special_ids(tokenizer)
    by_id: dict[int, dict[str, list[str]]] = {}
    piece_of: dict[int, str] = {}
    for side, words in word_set.sides.items():
        for word in words:
            pieces, ids, unk_id = _pieces(tokenizer, word)
            if not ids:
                dropped.append(Dropped(word, side, "empty", ()))
                continue
            if unk_id is not None and ids[0] == unk_id:
                dropped.append(Dropped(word, side, "unknown", tuple(pieces)))
                continue
            if ids[0] in special:
                dropped.append(Dropped(word, side, "special", tuple(pieces)))
                continue
            whole = len(ids) == 1
            if policy == "whole_word" and not whole:
                dropped.append(Dropped(word, side, "multi_piece", tuple(pieces)))
                continue
            # a bare word-start marker (SentencePiece `▁`, byte-level BPE `Ġ`) before the word's
            # pieces is shared by every word split that way: the class is the piece after it
            first = 1 if len(ids) > 1 and pieces[0] in WORD_START_MARKERS else 0
            kept.append(Kept(word, side, int(ids[first]), pieces[first], whole))
            by_id.setdefault(int(ids[first]), {}).setdefault(side, []).append(word)
            piece_of[int(ids[first])] = pieces[first]
    collisions = tuple(
        Collision(i, piece_of[i], {s: tuple(w) for s, w in sides.items()})
        for i, sides in sorted(by_id.items())
        if len(sides) > 1
    )
    ids = tuple(sorted(by_id))
    if len(ids) < min_ids:
        raise ValueError(
            f"word set {word_set.name} resolves to {len(ids)} token id(s) under the {policy} policy; "
            f"at least {min_ids} are needed: use a larger word list or the first_piece policy."
        )
    return Resolution(word_set.name, policy, ids, tuple(kept), tuple(dropped), collisions)
