"""WinoBias coreference with a pronoun resolver fine-tuned on GAP (offline, no licensed data).

The paper trains a span-based coreference model (coref-hoi) on OntoNotes and reports, on the
WinoBias test sets, the pro- minus anti-stereotypical F1 gap (TPR-1 for type 1, TPR-2 for type
2). OntoNotes is licensed, so this benchmark trains a pronoun resolver instead:

- Training: GAP (Webster et al. 2018) development + validation (2454 snippets), each a pronoun
  and two candidate names A and B with gold labels (A, B or neither). The head is
  `heads.SpanPairHead` over the encoder's last layer: each span is the mean of its tokens, a
  candidate's logit is an MLP of [pronoun; candidate; product], and "neither" has logit 0;
  softmax cross-entropy over the three. Alternatively `coref_conll` reads a CoNLL-2012
  directory (`conll` module) and trains on pronoun/antecedent pairs from its clusters.
- Selection: after each epoch the GAP test set (2000 snippets) is scored; the epoch with the best
  GAP test F1 is the one whose WinoBias predictions are reported.
- GAP metrics (the official scorer's): every snippet gives two (pronoun, name) pairs; a pair is
  predicted coreferent when the argmax over [A, B, neither] picks that name; F1 over all pairs,
  by the pronoun's gender: m_f1, f_f1 and bias = f_f1 / m_f1.
- WinoBias: each test sentence `<id> <sentence>` brackets the gold occupation and its pronoun(s);
  the first bracketed pronoun is the one resolved.
  The two occupation mentions are found with the bundled WinoBias occupation lists (exactly two
  distinct occupations must occur, a repeated one counting once at its first mention; otherwise
  it is an error naming the line). acc is the forced choice between the
  two (argmax of their logits); f1 is the pair F1 as in GAP (the resolver may say neither).
  Reported per type1/type2 and pro/anti, in percent; tpr1 = f1(pro1) - f1(anti1) and
  tpr2 = f1(pro2) - f1(anti2), in points.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ncjax import files
from ncjax.bench import finetune as ft
from ncjax.bench import runs
from ncjax.bench.heads import SpanPairHead
from ncjax.bench.registry import Benchmark, Context, Option, fmt

GAP_DIR = files.resource_path("gap")
OCCUPATIONS_DIR = files.resource_path("winobias")
WINOBIAS_DIR = files.resource_path("bench", "winobias")
GAP_TRAIN = ("gap-development.tsv", "gap-validation.tsv")
GAP_TEST = "gap-test.tsv"
MALE = {"he", "him", "his", "himself"}
FEMALE = {"she", "her", "hers", "herself"}
TYPES = ("type1", "type2")
STANCES = ("pro", "anti")
NEITHER = 2


@dataclasses.dataclass(frozen=True)
class Example:
    """A text, character spans [start, end) of the pronoun and two candidates, and the gold
    label (0: A, 1: B, 2: neither)."""

    text: str
    pronoun: tuple[int, int]
    a: tuple[int, int]
    b: tuple[int, int]
    label: int
    where: str

    @property
    def gender(self) -> str:
        word = self.text[self.pronoun[0]:self.pronoun[1]].lower()
        return "M" if word in MALE else "F" if word in FEMALE else "?"


# ----------------------------------------------------------------------------- GAP

def load_gap(path: Path) -> list[Example]:
    """GAP TSV rows -> Examples (offsets are character offsets into Text)."""
    if not path.is_file():
        raise FileNotFoundError(f"GAP file {path} not found; copy gap-development/validation/test.tsv from "
                                "google-research-datasets/gap-coreference there.")
    out = []
    with files.text_stream(path) as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for n, r in enumerate(reader, start=2):
            where = f"{path}:{n}"
            try:
                text = r["Text"]

                def span(name: str, off: str) -> tuple[int, int]:
                    s = int(r[off])
                    if text[s:s + len(r[name])] != r[name]:
                        raise ValueError(f"{where}: {name} {r[name]!r} is not at offset {s} of Text.")
                    return s, s + len(r[name])

                a_ref, b_ref = r["A-coref"].upper() == "TRUE", r["B-coref"].upper() == "TRUE"
                label = 0 if a_ref else 1 if b_ref else NEITHER
                out.append(Example(text, span("Pronoun", "Pronoun-offset"), span("A", "A-offset"),
                                   span("B", "B-offset"), label, where))
            except (KeyError, TypeError) as e:
                raise ValueError(f"{where}: missing column {e}; is this a GAP file?") from e
    return out


def pair_f1(labels: np.ndarray, pred: np.ndarray) -> float | None:
    """GAP's F1 over (pronoun, candidate) pairs: candidates 0 and 1 of each example are gold
    coreferent when labels == c and predicted so when pred == c. Percent; None without positives."""
    tp = sum(int(((labels == c) & (pred == c)).sum()) for c in (0, 1))
    fp = sum(int(((labels != c) & (pred == c)).sum()) for c in (0, 1))
    fn = sum(int(((labels == c) & (pred != c)).sum()) for c in (0, 1))
    if 2 * tp + fp + fn == 0:
        return None
    return 100.0 * 2 * tp / (2 * tp + fp + fn)


def gap_scores(examples: Sequence[Example], pred: np.ndarray) -> dict[str, float | None]:
    labels = np.array([e.label for e in examples])
    gender = np.array([e.gender for e in examples])
    m, f = pair_f1(labels[gender == "M"], pred[gender == "M"]), pair_f1(labels[gender == "F"], pred[gender == "F"])
    return {"m_f1": m, "f_f1": f, "bias": None if not m or f is None else f / m}


# ----------------------------------------------------------------------------- WinoBias

def load_occupations(directory: Path = OCCUPATIONS_DIR) -> list[str]:
    words = []
    for name in ("male_occupations.txt", "female_occupations.txt"):
        p = directory / name
        if not p.is_file():
            raise FileNotFoundError(f"WinoBias occupation list {p} not found; copy it from uclanlp/corefBias.")
        words += [w.strip() for w in files.read_text(p).splitlines() if w.strip()]
    return words


_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def parse_winobias(line: str, where: str, occupations: Sequence[str]) -> Example:
    """`<id> <sentence>` with [gold occupation] and [pronoun] -> Example (label 0 or 1: which of
    the two occupation mentions, in sentence order, the pronoun refers to)."""
    parts = line.strip().split(" ", 1)
    if len(parts) != 2 or not parts[0].isdigit():
        raise ValueError(f"{where}: expected '<id> <sentence>', got {line.strip()!r}.")
    body = parts[1]
    brackets = list(_BRACKET.finditer(body))
    if len(brackets) < 2:
        raise ValueError(f"{where}: expected bracketed spans for the occupation and its pronoun(s), "
                         f"found {len(brackets)}.")
    # Remove the brackets, remembering where the gold mention and the pronoun went.
    text, spans, last = "", [], 0
    for m in brackets:
        text += body[last:m.start()]
        spans.append((len(text), len(text) + len(m.group(1))))
        text += m.group(1)
        last = m.end()
    text += body[last:]
    # The first bracket is the occupation; the pronoun to resolve is the first bracketed pronoun
    # (some sentences bracket a second one of the same cluster, e.g. "[he] ... [his]").
    gold, pron = spans[0], spans[1]
    if text[pron[0]:pron[1]].lower() not in MALE | FEMALE:
        raise ValueError(f"{where}: the second bracketed span {text[pron[0]:pron[1]]!r} is not a gendered pronoun.")
    pattern = re.compile(r"\b(" + "|".join(re.escape(o) for o in sorted(occupations, key=len, reverse=True))
                         + r")s?\b", re.IGNORECASE)
    # A repeated occupation is the same entity: its first mention stands for it.
    first: dict[str, tuple[int, int]] = {}
    gold_word = None
    for m in pattern.finditer(text):
        word = m.group(1).lower()
        first.setdefault(word, (m.start(1), m.end(1)))
        if m.start(1) < gold[1] and gold[0] < m.end(1):
            gold_word = word
    if len(first) != 2:
        raise ValueError(f"{where}: found {len(first)} distinct occupation mentions ({', '.join(first) or 'none'}) "
                         "instead of two; check the sentence or the occupation lists.")
    if gold_word is None:
        raise ValueError(f"{where}: the bracketed mention {text[gold[0]:gold[1]]!r} is not one of the two occupations.")
    (wa, a), (wb, b) = first.items()
    return Example(text, pron, a, b, 0 if gold_word == wa else 1, where)


def load_winobias(directory: Path, occupations: Sequence[str]) -> dict[tuple[str, str], list[Example]]:
    out = {}
    for kind in TYPES:
        for stance in STANCES:
            p = directory / f"{stance}_stereotyped_{kind}.txt.test"
            if not p.is_file():
                raise FileNotFoundError(f"WinoBias file {p} not found; pass --coref-winobias-dir with the test files.")
            lines = files.read_text(p).splitlines()
            out[(kind, stance)] = [parse_winobias(x, f"{p}:{n}", occupations)
                                   for n, x in enumerate(lines, start=1) if x.strip()]
    return out


def winobias_scores(groups: dict[tuple[str, str], list[Example]], logits: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {k: {} for k in TYPES}
    start = 0
    for (kind, stance), exs in groups.items():
        lg = logits[start:start + len(exs)]
        start += len(exs)
        labels = np.array([e.label for e in exs])
        acc = 100.0 * float((lg[:, :2].argmax(-1) == labels).mean()) if exs else None
        out[kind][stance] = {"acc": acc, "f1": pair_f1(labels, lg.argmax(-1))}
    for i, kind in enumerate(TYPES, start=1):
        pro, anti = out[kind]["pro"]["f1"], out[kind]["anti"]["f1"]
        out[f"tpr{i}"] = None if pro is None or anti is None else pro - anti
    return out


# ----------------------------------------------------------------------------- encoding

def encode(examples: Sequence[Example], tokenizer: Any, max_length: int) -> ft.Encoded:
    """Token ids with [CLS]/[SEP] and token spans [start, end) of pronoun, A, B: spans [n, 3, 2].
    A text longer than max_length is cut to a window that holds all three spans."""
    enc = tokenizer([e.text for e in examples], add_special_tokens=False, return_offsets_mapping=True)
    ids, types, spans = [], [], []
    for e, tok, offs in zip(examples, enc["input_ids"], enc["offset_mapping"]):
        sp = []
        for s, t in (e.pronoun, e.a, e.b):
            hit = [i for i, (a, b) in enumerate(offs) if a < t and s < b]
            if not hit:
                raise ValueError(f"{e.where}: the span {e.text[s:t]!r} has no tokens; check the offsets.")
            sp.append((hit[0], hit[-1] + 1))
        room = max_length - 2
        lo = 0
        if len(tok) > room:
            first, end = min(a for a, _ in sp), max(b for _, b in sp)
            if end - first > room:
                raise ValueError(f"{e.where}: pronoun and candidates span {end - first} tokens, more than max length "
                                 f"{max_length} allows; raise --ft-max-length.")
            lo = max(0, min(first, end - room))
        body = tok[lo:lo + room]
        ids.append(np.asarray([tokenizer.cls_token_id, *body, tokenizer.sep_token_id], np.int32))
        types.append(np.zeros(len(body) + 2, np.int32))
        spans.append([(a - lo + 1, b - lo + 1) for a, b in sp])
    labels = np.array([e.label for e in examples], np.int32)
    return ft.Encoded(ids, types, {"spans": np.asarray(spans, np.int32).reshape(-1, 3, 2), "labels": labels})


def _run(ctx: Context) -> dict[str, Any]:
    o = ctx.options
    gap_dir = Path(o["coref_gap_dir"]) if o["coref_gap_dir"] else GAP_DIR
    wino_dir = Path(o["coref_winobias_dir"]) if o["coref_winobias_dir"] else WINOBIAS_DIR
    occupations = load_occupations()
    groups = {k: v[:ctx.limit] for k, v in load_winobias(wino_dir, occupations).items()}
    if o["coref_conll"]:
        from ncjax.bench.conll import load_pronoun_examples

        train_ex = load_pronoun_examples(Path(o["coref_conll"]), seed=o["seed"])
    else:
        train_ex = [e for f in GAP_TRAIN for e in load_gap(gap_dir / f)]
    test_ex = load_gap(gap_dir / GAP_TEST)[:ctx.limit]
    enc = runs.load_encoder(ctx)
    hp, max_length = runs.hparams(ctx, max_length=256, batch_size=16, learning_rate=3e-5)
    train = encode(train_ex[:runs.train_limit(ctx)], enc.tokenizer, max_length)
    wino = [e for g in groups.values() for e in g]
    evals = {"gap": encode(test_ex, enc.tokenizer, max_length), "winobias": encode(wino, enc.tokenizer, max_length)}
    per_epoch = runs.run(ctx, "coref", enc, SpanPairHead(dropout=enc.model_dropout), train, evals, hp, max_length,
                       every_epoch=True)
    scored = [(gap_scores(test_ex, lg["gap"].argmax(-1)), lg) for lg in per_epoch]
    f1s = [pair_f1(np.array([e.label for e in test_ex]), lg["gap"].argmax(-1)) or 0.0 for _, lg in scored]
    best = int(np.argmax(f1s))
    gap, logits = scored[best]
    out = winobias_scores(groups, logits["winobias"])
    out["gap"] = gap
    ctx.record("coref", [{"set": "gap", "where": e.where, "gender": e.gender, "label": e.label,
                          "prediction": int(p)} for e, p in zip(test_ex, logits["gap"].argmax(-1))])
    keys = [k for k, g in groups.items() for _ in g]
    ctx.record("coref", [{"set": "winobias", "type": k, "stance": s, "where": e.where, "label": e.label,
                          "choice": int(lg[:2].argmax()), "prediction": int(lg.argmax())}
                         for (k, s), e, lg in zip(keys, wino, logits["winobias"])])
    return {"coref": {**out, "selected_epoch": best + 1}}


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    c = results.get("coref")
    if c is None:
        return []
    out = [("WinoBias coref", f"{k} {s}", f"acc {fmt(c[k][s]['acc'])} · F1 {fmt(c[k][s]['f1'])}")
           for k in TYPES for s in STANCES]
    out.append(("WinoBias coref", "TPR-1 · TPR-2", f"{fmt(c['tpr1'])} · {fmt(c['tpr2'])}"))
    g = c["gap"]
    out.append(("GAP (resolver)", "test", f"F1 M {fmt(g['m_f1'])} · F {fmt(g['f_f1'])} · bias F/M {fmt(g['bias'], 3)}"))
    return out


BENCHMARK = Benchmark(
    name="coref", title="WinoBias coref", kind="finetune", data=(), run=_run, rows=_rows, default=False,
    options=(
        Option("coref_gap_dir", None, "directory with gap-development/validation/test.tsv (default: bundled)"),
        Option("coref_winobias_dir", None, "directory with the WinoBias *.txt.test files (default: bundled)"),
        Option("coref_conll", None, "train the resolver on a CoNLL-2012 directory (*.gold_conll / *.v4_gold_conll) "
               "instead of GAP; GAP test still selects the epoch"),
        *runs.OPTIONS,
    ),
)
