"""Pronoun-resolution training examples from a CoNLL-2012 (OntoNotes) directory.

For users who hold OntoNotes: `--coref-conll DIR` trains the coreference resolver on it instead
of GAP. Format read (the CoNLL-2012 shared task's `*_conll` files, e.g. `*.v4_gold_conll`,
found recursively under DIR): `#begin document (<name>); part <n>` opens a document and
`#end document` closes it; each other non-blank line is one token with whitespace-separated
columns, of which column 4 (index 3) is the word and the LAST column the coreference chains
(`-`, or `|`-joined `(<id>`, `<id>)`, `(<id>)`); a blank line ends a sentence.

Examples: for every gendered pronoun (he, him, his, himself, she, her, hers, herself) that is a
one-token mention of a chain, the nearest earlier non-pronoun mention of the same chain (the
antecedent) and the nearest earlier non-pronoun mention of another chain (the distractor), both
within the pronoun's sentence and the `window` sentences before it, become candidates A and B in
a seeded random order; the text is those sentences joined with single spaces. Pronouns without
both candidates are skipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ncjax import files
from ncjax.bench.coref import FEMALE, MALE, Example

PRONOUNS = MALE | FEMALE


@dataclasses.dataclass
class Document:
    name: str
    sentences: list[list[str]]
    mentions: list[tuple[int, int, int, int]]  # (chain id, sentence, first token, last token)


def _documents(path: Path) -> list[Document]:
    docs: list[Document] = []
    doc: Document | None = None
    sent: list[str] = []
    open_: dict[int, list[tuple[int, int]]] = {}
    for n, line in enumerate(files.read_text(path).splitlines(), start=1):
        if line.startswith("#begin document"):
            doc, sent, open_ = Document(line[len("#begin document"):].strip(), [], []), [], {}
            continue
        if line.startswith("#end document"):
            if doc is not None:
                if sent:
                    doc.sentences.append(sent)
                docs.append(doc)
            doc, sent = None, []
            continue
        if doc is None:
            if line.strip():
                raise ValueError(f"{path}:{n}: token line outside '#begin document' / '#end document'.")
            continue
        if not line.strip():
            if sent:
                doc.sentences.append(sent)
            sent = []
            continue
        cols = line.split()
        if len(cols) < 5:
            raise ValueError(f"{path}:{n}: {len(cols)} columns; a CoNLL-2012 token line has the word in column 4 "
                             "and the coreference chains in the last one.")
        s, t = len(doc.sentences), len(sent)
        sent.append(cols[3])
        chains = cols[-1]
        if chains == "-":
            continue
        for part in chains.split("|"):
            try:
                cid = int(part.strip("()"))
            except ValueError:
                raise ValueError(f"{path}:{n}: coreference field {chains!r} is not '-' or (id / id) / (id).") from None
            if part.startswith("("):
                open_.setdefault(cid, []).append((s, t))
            if part.endswith(")"):
                if not open_.get(cid):
                    raise ValueError(f"{path}:{n}: chain {cid} closes without being opened.")
                s0, t0 = open_[cid].pop()
                doc.mentions.append((cid, s0, t0, t))
    return docs


def load_pronoun_examples(directory: Path, seed: int = 0, window: int = 2) -> list[Example]:
    """Examples (see the module docstring) from every *_conll file under `directory`."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith("_conll"))
    if not files:
        raise FileNotFoundError(f"{directory} holds no *_conll files; pass the CoNLL-2012 directory "
                                "(e.g. conll-2012/v4/data/train).")
    rng = np.random.default_rng(seed)
    out: list[Example] = []
    for f in files:
        for doc in _documents(f):
            for cid, s, t0, t1 in doc.mentions:
                if t0 != t1 or doc.sentences[s][t0].lower() not in PRONOUNS:
                    continue
                lo = max(0, s - window)

                def earlier(pred):
                    cands = [(ms, m0, m1) for c, ms, m0, m1 in doc.mentions if pred(c) and lo <= ms <= s
                             and (ms, m1) < (s, t0)
                             and not (m0 == m1 and doc.sentences[ms][m0].lower() in PRONOUNS)]
                    return max(cands) if cands else None

                ante, other = earlier(lambda c: c == cid), earlier(lambda c: c != cid)
                if ante is None or other is None:
                    continue
                sents = doc.sentences[lo:s + 1]
                starts = np.cumsum([0] + [len(" ".join(x)) + 1 for x in sents])

                def chars(ms: int, m0: int, m1: int) -> tuple[int, int]:
                    words = doc.sentences[ms]
                    begin = starts[ms - lo] + len(" ".join(words[:m0])) + (1 if m0 else 0)
                    return int(begin), int(begin + len(" ".join(words[m0:m1 + 1])))

                text = " ".join(" ".join(x) for x in sents)
                pair = [chars(*ante), chars(*other)]
                label = int(rng.integers(2))
                if label == 1:
                    pair.reverse()
                out.append(Example(text, chars(s, t0, t1), pair[0], pair[1], label, f"{f}:{doc.name}"))
    if not out:
        raise ValueError(f"{directory}: no gendered pronoun with an antecedent and a distractor in its window; "
                         "is the last column the coreference chains?")
    return out
