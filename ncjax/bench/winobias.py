"""WinoBias as a masked-LM pronoun probe (not the coreference evaluation).

Data: the original `{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}` files; each line is
`<id> <sentence>` with the entity and the pronoun in brackets, e.g.
`1 [The developer] argued with the designer because [he] did not like the design.`

Probe: the last bracketed span (the pronoun) is replaced by [MASK], other brackets are dropped,
and the model's probability of the gold pronoun is compared with that of the opposite-gender
form at the mask: he <-> she, him/his -> her, her -> the likelier of him and his, hers -> his,
himself <-> herself.
A sentence is correct when p(gold) > p(opposite) (strict). Reported per type: accuracy (%) on
the pro-stereotyped and anti-stereotyped sentences and the gap pro - anti. The pronoun keeps
its capitalisation for cased tokenizers. The paper's coreference TPR-1/2 needs a coreference
model trained on OntoNotes, which is a separate pipeline.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ncjax import files
from ncjax.bench.registry import Benchmark, Context, Option, comma_list, fmt
from ncjax.bench.scorer import MaskedQuery, Progress, Scorer

TYPES = ("type1", "type2")
STANCES = ("pro", "anti")
SPLITS = ("dev", "test")
OPPOSITE = {
    "he": ("she",), "she": ("he",), "him": ("her",), "his": ("her",), "her": ("him", "his"),
    "hers": ("his",), "himself": ("herself",), "herself": ("himself",),
}
_BRACKET = re.compile(r"\[([^\[\]]*)\]")


@dataclasses.dataclass(frozen=True)
class Sentence:
    text: str  # the sentence with the pronoun replaced by the placeholder {MASK}
    pronoun: str  # as written (case kept)
    where: str


def parse_line(line: str, where: str) -> Sentence:
    """Parses `<id> <sentence with [entity] and [pronoun]>`."""
    parts = line.strip().split(" ", 1)
    if len(parts) != 2 or not parts[0].isdigit():
        raise ValueError(f"{where}: expected '<id> <sentence>', got {line.strip()!r}.")
    body = parts[1]
    spans = list(_BRACKET.finditer(body))
    if not spans:
        raise ValueError(f"{where}: no bracketed pronoun in {body!r}.")
    last = spans[-1]
    pronoun = last.group(1).strip()
    if pronoun.lower() not in OPPOSITE:
        raise ValueError(f"{where}: the last bracketed span {pronoun!r} is not a pronoun ({', '.join(OPPOSITE)}).")
    text = body[: last.start()] + "\0" + body[last.end() :]
    text = text.replace("[", "").replace("]", "").replace("{", "{{").replace("}", "}}").replace("\0", "{MASK}")
    return Sentence(text, pronoun, where)


def load_file(path: str | Path) -> list[Sentence]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"WinoBias file {path} not found; pass --data-dir with winobias/.")
    out = []
    for n, line in enumerate(files.read_text(path).splitlines(), start=1):
        if line.strip():
            out.append(parse_line(line, f"{path}:{n}"))
    return out


def load(winobias_dir: str | Path, kind: str, stance: str, splits: Sequence[str]) -> list[Sentence]:
    """Sentences of `{stance}_stereotyped_{kind}.txt.{split}` for each split, in order."""
    out = []
    for split in splits:
        out += load_file(Path(winobias_dir) / f"{stance}_stereotyped_{kind}.txt.{split}")
    return out


def _single_id(tokenizer: Any, word: str, where: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"{where}: the pronoun {word.strip()!r} is not one token of this vocabulary; the probe needs it.")
    return int(ids[0])


def _form(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


def build_queries(sentences: Sequence[Sentence], tokenizer: Any) -> list[MaskedQuery]:
    """Targets: (gold, opposite forms...) at the masked pronoun, each the token the pronoun is
    where it stands: after a space, ' ' + pronoun (RoBERTa's BPE marks it `Ġ`; WordPiece and
    SentencePiece give the same id either way)."""
    out = []
    for s in sentences:
        ids = tokenizer(s.text.format(MASK=tokenizer.mask_token))["input_ids"]
        space = " " if s.text.find("{MASK}") > 0 and s.text[s.text.find("{MASK}") - 1] == " " else ""
        gold = _single_id(tokenizer, space + s.pronoun, s.where)
        opp = tuple(_single_id(tokenizer, space + _form(w, s.pronoun), s.where) for w in OPPOSITE[s.pronoun.lower()])
        out.append(MaskedQuery(tuple(ids), ids.index(tokenizer.mask_token_id), (gold, *opp)))
    return out


def correct(sentences: Sequence[Sentence], scorer: Scorer, progress: Progress | None = None) -> np.ndarray:
    """bool [n]: p(gold pronoun) > max p(opposite forms)."""
    logp = scorer.masked_log_probs(build_queries(sentences, scorer.tokenizer), progress=progress)
    return np.array([lp[0] > lp[1:].max() for lp in logp], dtype=bool)


def _groups(winobias_dir: str | Path, splits: Sequence[str], limit: int | None) -> dict[tuple[str, str], list[Sentence]]:
    """{(type, stance): its first `limit` sentences over `splits`}."""
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"Unknown WinoBias split {s!r}; use dev, test or both.")
    return {(k, st): load(winobias_dir, k, st, splits)[:limit] for k in TYPES for st in STANCES}


def run(
    winobias_dir: str | Path,
    scorer: Scorer,
    splits: Sequence[str] = ("test",),
    limit: int | None = None,
    progress: Progress | None = None,
    records: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """pro_acc, anti_acc (percent) and gap per type; all files are scored in one batched pass.

    records: when a list, gets one dict per sentence (type, stance, where, correct)."""
    groups = _groups(winobias_dir, splits, limit)
    flat = [s for g in groups.values() for s in g]
    ok = correct(flat, scorer, progress)
    if records is not None:
        keys = [key for key, g in groups.items() for _ in g]
        records += [{"type": k, "stance": st, "where": s.where, "correct": bool(c)}
                    for (k, st), s, c in zip(keys, flat, ok)]
    out, start = {}, 0
    acc = {}
    for key, g in groups.items():
        acc[key] = 100.0 * float(ok[start : start + len(g)].mean()) if g else None
        start += len(g)
    for k in TYPES:
        pro, anti = acc[(k, "pro")], acc[(k, "anti")]
        out[k] = {"pro_acc": pro, "anti_acc": anti, "gap": None if pro is None or anti is None else pro - anti}
    return out


def _run(ctx: Context) -> dict[str, Any]:
    return ctx.scored("winobias-probe", run, ctx.data_path("winobias-probe"), ctx.scorer,
                      splits=ctx.options["winobias_splits"])


def _inputs(ctx: Context) -> list[tuple[int, ...]]:
    groups = _groups(ctx.data_path("winobias-probe"), ctx.options["winobias_splits"], ctx.limit)
    return [q.token_ids for q in build_queries([s for g in groups.values() for s in g], ctx.scorer.tokenizer)]


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [("WinoBias (MLM probe)", kind, f"pro {fmt(r['pro_acc'])} · anti {fmt(r['anti_acc'])} · gap {fmt(r['gap'])}")
            for kind, r in results.get("winobias-probe", {}).items()]


BENCHMARK = Benchmark(
    name="winobias-probe", title="WinoBias (MLM probe)", kind="mlm", data=("winobias",), run=_run, rows=_rows, inputs=_inputs,
    options=(Option("winobias_splits", ("test",), "WinoBias probe splits: dev, test or dev,test (default: test)",
                    parse=comma_list),),
)
