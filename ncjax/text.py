"""Plain-text processing for training corpora: sentence splitting, two-sided counterfactual
word swaps, and the clean-up of WikiText's tokenised release. Pure functions of strings."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# ----------------------------------------------------------------------------- sentences

# Abbreviations after which a period does not end a sentence (lower case, without the period).
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof st jr sr rev gen col lt sgt capt cmdr adm gov sen rep hon pres
    fr sr messrs mme mlle no nos vol vols pp p ed eds fig figs ch sec art inc ltd co corp bros
    dept univ assn est approx vs etc al e.g i.e cf viz ca c jan feb mar apr jun jul aug sep sept
    oct nov dec mt ft u.s u.k u.n a.m p.m d.c""".split()
)
# A candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace, then
# something that can start a sentence.
_BOUNDARY = re.compile(r"""([.!?]+)(["'\u201d\u2019)\]]*)(\s+)(?=["'\u201c\u2018(\[]*[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """Splits a paragraph into sentences.

    A rule-based stand-in for NLTK's Punkt `sent_tokenize` (which the paper's BEC code used):
    a sentence ends at `.`, `!` or `?` (plus closing quotes or brackets) followed by whitespace
    and an upper-case letter, digit or opening quote, except after a known abbreviation
    (`Mr.`, `Dr.`, `St.`, `U.S.`, ...) or a single-letter initial (`J. K. Rowling`).
    Whitespace is normalised; empty pieces are dropped.
    """
    text = " ".join(text.split())
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if m.group(1) == ".":
            words = text[start:m.start()].split()
            last = words[-1].lower().strip("\"'(\u201c\u2018[") if words else ""
            if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()) or re.fullmatch(r"(?:[a-z]\.)+[a-z]", last):
                continue
        end = m.end(2)
        out.append(text[start:end].strip())
        start = m.end(3)
    out.append(text[start:].strip())
    return [s for s in out if s]


# ----------------------------------------------------------------------------- counterfactuals


def _swap_table(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    # Two-sided: each word maps to its counterpart. A word listed with several counterparts
    # (e.g. "her" -> "him"/"his") keeps the first, as a dict built in list order would.
    table: dict[str, str] = {}
    for a, b in pairs:
        table.setdefault(a.lower(), b.lower())
        table.setdefault(b.lower(), a.lower())
    return table


def _match_case(word: str, template: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def counterfactual(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """`text` with every attribute word replaced by its counterpart (all swaps simultaneous),
    matching whole words case-insensitively and keeping the original capitalisation."""
    table = _swap_table(pairs)
    words = sorted(table, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w'])(" + "|".join(re.escape(w) for w in words) + r")(?![\w'])", re.IGNORECASE)
    return pattern.sub(lambda m: _match_case(table[m.group(0).lower()], m.group(0)), text)


# ----------------------------------------------------------------------------- WikiText

_WIKITEXT_JOINS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))


def wikitext_paragraphs(lines: Iterable[str], unk: str = "[UNK]") -> list[str]:
    """The paragraphs of a WikiText `.tokens` file: blank lines and ` = Heading = ` lines
    dropped, the split-number markers joined (`1 @,@ 000` -> `1,000`, `well @-@ known` ->
    `well-known`), and `<unk>` written as the tokenizer's unknown token `unk`."""
    out = []
    for line in lines:
        t = line.strip()
        if not t or (t.startswith("=") and t.endswith("=")):
            continue
        for a, b in _WIKITEXT_JOINS:
            t = t.replace(a, b)
        out.append(t.replace("<unk>", unk))
    return out
