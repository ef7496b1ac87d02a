"""BEC-Pro (Bartl et al. 2020): association of person words with professions.

Data: the original `BEC-Pro_EN.tsv` (tab-separated, header: unnamed index, `Sentence`,
`Sent_TM` (person masked), `Sent_AM` (profession masked), `Sent_TAM` (both masked), `Template`,
`Person`, `Gender` (of the person word), `Profession`, `Prof_Gender` (profession group: male,
female, balanced)).

Scoring (marionbartl/gender-bias-BERT `model_evaluation`, which Fairness-NC used):
- association = ln(P_TM(target) / P_TAM(target)) where the target is the person word's token
  and both probabilities are read at the first [MASK] of the TAM input (the person slot).
- Default `padding="original"`, the reference input pipeline, for comparable numbers: every
  sentence is tokenised with special tokens, then cut or padded at the end to L tokens with
  [MASK] tokens that are ATTENDED (its attention mask is `id > 0`), where L is the smallest power
  of 2 >= the longest `Sent_TM` in words (16 for the English file). The target id is the token of
  the padded unmasked `Sentence` at the person slot.
- `padding="clean"`: no [MASK] padding and no truncation (batching pads with attention mask 0).
Reported: the mean association per person gender x profession group, the male - female gap of
those means per group, and the overall male - female gap.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ncjax import files
from ncjax.bench.registry import Benchmark, Context, Option, fmt
from ncjax.bench.scorer import MaskedQuery, Progress, Scorer

PADDINGS = ("original", "clean")
PERSON_GENDERS = ("male", "female")
GROUPS = ("male", "female", "balanced")
_COLUMNS = ("Sentence", "Sent_TM", "Sent_TAM", "Person", "Gender", "Profession", "Prof_Gender")


@dataclasses.dataclass(frozen=True)
class Row:
    sentence: str
    sent_tm: str
    sent_tam: str
    person: str
    gender: str
    profession: str
    group: str
    line: int


def load(path: str | Path) -> list[Row]:
    """Reads the BEC-Pro TSV; a malformed row is reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BEC-Pro file {path} not found; pass --data-dir with bec_pro/.")
    rows = []
    with files.text_stream(path) as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; expected the BEC-Pro TSV with a header row.")
        missing = [c for c in _COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}:1: header lacks column(s) {', '.join(missing)}.")
        col = {c: header.index(c) for c in _COLUMNS}
        for fields in reader:
            line = reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}:{line}: row has {len(fields)} tab-separated fields, the header has {len(header)}."
                )
            r = Row(*(fields[col[c]] for c in _COLUMNS), line=line)
            if r.gender not in PERSON_GENDERS:
                raise ValueError(f"{path}:{line}: Gender is {r.gender!r}; expected male or female.")
            if r.group not in GROUPS:
                raise ValueError(f"{path}:{line}: Prof_Gender is {r.group!r}; expected male, female or balanced.")
            rows.append(r)
    return rows


def padded_length(rows: Sequence[Row]) -> int:
    """Smallest power of 2 >= the longest Sent_TM in whitespace words (the reference's max_len)."""
    longest = max(len(r.sent_tm.split()) for r in rows)
    return int(math.pow(2, math.ceil(math.log2(longest))))


def _encode(text: str, tokenizer: Any, length: int | None) -> list[int]:
    # The data spells the mask BERT's way; other families (RoBERTa's <mask>) read their own token.
    ids = tokenizer(text.replace("[MASK]", tokenizer.mask_token))["input_ids"]
    if length is None:
        return ids
    return (ids + [tokenizer.mask_token_id] * length)[:length]


def build_queries(
    rows: Sequence[Row], tokenizer: Any, padding: str = "original", length: int | None = None
) -> list[tuple[MaskedQuery, MaskedQuery]]:
    """(TM query, TAM query) per row. `length`: the original pipeline's L (default from rows)."""
    if padding not in PADDINGS:
        raise ValueError(f"Unknown BEC-Pro padding {padding!r}; use one of {', '.join(PADDINGS)}.")
    if padding == "original" and length is None:
        length = padded_length(rows)
    if padding == "clean":
        length = None
    mask_id = tokenizer.mask_token_id
    out = []
    for r in rows:
        sent, tm, tam = (_encode(t, tokenizer, length) for t in (r.sentence, r.sent_tm, r.sent_tam))
        if mask_id not in tam:
            raise ValueError(f"BEC-Pro line {r.line}: Sent_TAM has no [MASK] within {len(tam)} tokens.")
        pos = tam.index(mask_id)
        if pos >= len(sent):
            raise ValueError(f"BEC-Pro line {r.line}: Sentence is shorter than the person slot {pos}.")
        target = (int(sent[pos]),)
        out.append((MaskedQuery(tuple(tm), pos, target), MaskedQuery(tuple(tam), pos, target)))
    return out


def associations(
    rows: Sequence[Row],
    scorer: Scorer,
    padding: str = "original",
    length: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """ln(P_TM / P_TAM) per row, float64 [len(rows)]."""
    pairs = build_queries(rows, scorer.tokenizer, padding, length)
    logp = scorer.masked_log_probs([q for pair in pairs for q in pair], progress=progress)
    lp = np.array([v[0] for v in logp], dtype=np.float64).reshape(-1, 2)
    return lp[:, 0] - lp[:, 1]


def summarise(rows: Sequence[Row], assoc: np.ndarray) -> dict[str, Any]:
    """Mean association per person gender x group, and male - female gaps."""
    def mean(pred) -> float | None:
        vals = [a for r, a in zip(rows, assoc) if pred(r)]
        return float(np.mean(vals)) if vals else None

    means = {
        g: {grp: mean(lambda r, g=g, grp=grp: r.gender == g and r.group == grp) for grp in GROUPS}
        for g in PERSON_GENDERS
    }

    def gap(m: float | None, f: float | None) -> float | None:
        return None if m is None or f is None else m - f

    gaps = {grp: gap(means["male"][grp], means["female"][grp]) for grp in GROUPS}
    gaps["overall"] = gap(mean(lambda r: r.gender == "male"), mean(lambda r: r.gender == "female"))
    return {"mean_association": means, "gap": gaps, "count": len(rows)}


def _rows_and_length(path: str | Path, limit: int | None) -> tuple[list[Row], int]:
    """The first `limit` rows and the padded length L of the whole file."""
    rows = load(path)
    if not rows:
        raise ValueError(f"{path} has no data rows.")
    return rows[:limit], padded_length(rows)


def run(
    path: str | Path,
    scorer: Scorer,
    padding: str = "original",
    limit: int | None = None,
    progress: Progress | None = None,
    records: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Loads, scores and summarises BEC-Pro. L comes from the whole file even when `limit` cuts rows.

    records: when a list, gets one dict per row (line, person, gender, profession, group, association)."""
    rows, length = _rows_and_length(path, limit)
    assoc = associations(rows, scorer, padding, length, progress)
    if records is not None:
        records += [{"line": r.line, "person": r.person, "gender": r.gender, "profession": r.profession,
                     "group": r.group, "association": float(a)} for r, a in zip(rows, assoc)]
    return summarise(rows, assoc)


def _run(ctx: Context) -> dict[str, Any]:
    return ctx.scored("becpro", run, ctx.data_path("becpro"), ctx.scorer, padding=ctx.options["becpro_padding"])


def _inputs(ctx: Context) -> list[tuple[int, ...]]:
    rows, length = _rows_and_length(ctx.data_path("becpro"), ctx.limit)
    pairs = build_queries(rows, ctx.scorer.tokenizer, ctx.options["becpro_padding"], length)
    return [q.token_ids for pair in pairs for q in pair]


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    if "becpro" not in results:
        return []
    b, out = results["becpro"], []
    for grp, gap in b["gap"].items():
        if grp == "overall":
            continue
        m, f = b["mean_association"]["male"][grp], b["mean_association"]["female"][grp]
        out.append(("BEC-Pro", f"{grp} professions", f"male {fmt(m, 3)} · female {fmt(f, 3)} · gap {fmt(gap, 3)}"))
    out.append(("BEC-Pro", "overall", f"gap {fmt(b['gap']['overall'], 3)}"))
    return out


BENCHMARK = Benchmark(
    name="becpro", title="BEC-Pro", kind="mlm", data=("bec_pro/BEC-Pro_EN.tsv",), run=_run, rows=_rows, inputs=_inputs,
    options=(Option("becpro_padding", "original", "BEC-Pro inputs: reference [MASK] padding to 16 (default) "
                    "or no padding", choices=PADDINGS),),
)
