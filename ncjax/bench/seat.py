"""SEAT (sentence-level WEAT), computed as bias-bench computes it.

Data: the original SEAT `.jsonl` files (despite the suffix each is ONE JSON object with keys
`targ1`, `targ2`, `attr1`, `attr2`, each {"category": str, "examples": [str]}).

Scoring (bias-bench `SEATRunner` + `weat.py`, from W4ngatang/sent-bias):
- Each sentence is tokenised with special tokens and encoded as the mean of the last encoder
  layer over ALL its tokens ([CLS] and [SEP] included), then L2-normalised. Sentences are keyed
  by text, so a repeated sentence within a set counts once.
- s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b); effect size =
  (mean_{x in X} s(x) - mean_{y in Y} s(y)) / std_{w in X u Y} s(w) with ddof = 1.
- One-sided permutation p-value of sum_{x in X} s(x): if C(2n, n) <= n_samples all equal
  partitions are enumerated (itertools.combinations order), else 1 + (n_samples - 1) samples,
  the first a hallucinated positive, each drawn by shuffling the index array in place with a
  legacy `numpy.random.RandomState(seed)`. Ties count as exceeding (conservative).
- The RandomState is seeded once per run (seed 0) and shared by the tests in their run order
  (sent-weat6, 6b, 7, 7b, 8, 8b), so a sampled p-value depends on that order.
- Summary: the mean absolute effect size over the tests.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ncjax import files
from ncjax.bench.registry import Benchmark, Context, Option, comma_list, fmt, natural_int, positive_int
from ncjax.bench.scorer import Progress, Scorer

GENDER_TESTS = ("sent-weat6", "sent-weat6b", "sent-weat7", "sent-weat7b", "sent-weat8", "sent-weat8b")
SETS = ("targ1", "targ2", "attr1", "attr2")
N_SAMPLES = 100000

logger = logging.getLogger(__name__)


def load_test(path: str | Path) -> dict[str, list[str]]:
    """Reads one SEAT test file into {set name: unique examples in file order}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SEAT test file {path} not found; pass --data-dir with seat/ or fix --seat-tests.")
    try:
        doc = json.loads(files.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); a SEAT file is one JSON object.") from e
    out = {}
    for key in SETS:
        try:
            examples = doc[key]["examples"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: needs {key}.examples (keys targ1, targ2, attr1, attr2).") from e
        if not examples or not all(isinstance(x, str) for x in examples):
            raise ValueError(f"{path}: {key}.examples must be a non-empty list of strings.")
        out[key] = list(dict.fromkeys(examples))
    if len(out["targ1"]) != len(out["targ2"]):
        raise ValueError(
            f"{path}: targ1 has {len(out['targ1'])} unique examples and targ2 {len(out['targ2'])}; "
            "the permutation test needs equal sizes."
        )
    return out


def encode(texts: Sequence[str], scorer: Scorer, progress: Progress | None = None) -> np.ndarray:
    """L2-normalised mean-pooled last-layer encodings, float32 [len(texts), hidden].

    Each row is divided by its own float32 `np.linalg.norm`, as the reference does per sentence.
    """
    seqs = [scorer.tokenizer(t)["input_ids"] for t in texts]
    enc = scorer.sentence_embeddings(seqs, progress=progress)
    return np.stack([e / np.linalg.norm(e) for e in enc]) if len(enc) else enc


def cosines(W: np.ndarray, V: np.ndarray) -> np.ndarray:
    """cos(w, v) for all pairs, float64 [len(W), len(V)], computed as the reference computes them.

    The reference takes float32 dot products (x.y, x.x, y.y) per pair and divides in float64;
    a float64 matrix product differs in the 8th digit, enough to flip a near-tie permutation
    sample and move a sampled p-value by 1 / n_samples. A few hundred thousand pairs take ~0.1 s.
    """
    W, V = np.asarray(W), np.asarray(V)
    out = np.zeros((len(W), len(V)))
    ww = [np.dot(w, w) for w in W]
    vv = [np.dot(v, v) for v in V]
    for i, w in enumerate(W):
        for j, v in enumerate(V):
            out[i, j] = float(np.dot(w, v)) / math.sqrt(float(ww[i] * vv[j]))
    return out


def association(X: np.ndarray, Y: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b) for w in X then Y: float64 [len(X) + len(Y)].

    X, Y, A, B: unit vectors [n_set, hidden].
    """
    cos = cosines(np.concatenate([X, Y]), np.concatenate([A, B]))
    a_cols = np.arange(len(A))
    b_cols = np.arange(len(A), len(A) + len(B))
    return cos[:, a_cols].mean(axis=1) - cos[:, b_cols].mean(axis=1)


def effect_size(s: np.ndarray, n: int) -> float | None:
    """(mean s[:n] - mean s[n:]) / std(s, ddof=1) for s = association(X, Y, A, B), |X| = n.

    None (JSON null) when the std is 0, e.g. every sentence encodes identically.
    """
    std = np.std(s, ddof=1)
    if not std > 0:
        logger.warning("All SEAT associations are equal; the effect size is undefined.")
        return None
    return float((np.mean(s[:n]) - np.mean(s[n:])) / std)


def p_value(s: np.ndarray, n: int, n_samples: int, rng: np.random.RandomState) -> float:
    """One-sided permutation p-value of sum(s[:n]) over equal partitions of the 2n items.

    s: float64 [2n] associations, X first. Exact when C(2n, n) <= n_samples; otherwise
    n_samples - 1 in-place shuffles of arange(2n) drawn from `rng`, plus one hallucinated
    positive. Sums use numpy's row sum over the gathered values, as the reference does per sample.
    """
    observed = s[np.arange(n)].sum()
    if math.comb(2 * n, n) > n_samples:
        xy = np.arange(2 * n, dtype=np.int64)
        draws = np.empty((n_samples - 1, n), dtype=np.int64)
        for i in range(n_samples - 1):
            rng.shuffle(xy)
            draws[i] = xy[:n]
        hits = 1 + _count_at_least(s, draws, observed)
        return hits / n_samples
    hits = total = 0
    combos = itertools.combinations(range(2 * n), n)
    while True:
        chunk = np.array(list(itertools.islice(combos, 65536)), dtype=np.int64).reshape(-1, n)
        if not len(chunk):
            break
        hits += _count_at_least(s, chunk, observed)
        total += len(chunk)
    return hits / total


def _count_at_least(s: np.ndarray, idx: np.ndarray, observed: float) -> int:
    count = 0
    for start in range(0, len(idx), 65536):
        sums = s[idx[start : start + 65536]].sum(axis=1)
        count += int(np.count_nonzero(sums >= observed))
    return count


def run_test(
    enc: dict[str, np.ndarray], rng: np.random.RandomState, n_samples: int = N_SAMPLES
) -> dict[str, float | None]:
    """Effect size and p-value of one test from its unit encodings {set name: [n_set, hidden]}."""
    s = association(enc["targ1"], enc["targ2"], enc["attr1"], enc["attr2"])
    n = len(enc["targ1"])
    return {"effect_size": effect_size(s, n), "p_value": p_value(s, n, n_samples, rng)}


def _load_tests(
    seat_dir: str | Path, tests: Sequence[str], limit: int | None
) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """{test: {set: its first `limit` examples}} and every distinct text over all tests, in order."""
    loaded = {}
    for t in tests:
        sets = load_test(Path(seat_dir) / f"{t}.jsonl")
        if limit is not None:
            sets = {k: v[:limit] for k, v in sets.items()}
        loaded[t] = sets
    return loaded, list(dict.fromkeys(x for sets in loaded.values() for k in SETS for x in sets[k]))


def run(
    seat_dir: str | Path,
    scorer: Scorer,
    tests: Sequence[str] = GENDER_TESTS,
    n_samples: int = N_SAMPLES,
    seed: int = 0,
    limit: int | None = None,
    progress: Progress | None = None,
    records: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Runs the tests in order with one RandomState(seed); `limit` keeps the first examples of each set.

    All sentences of all tests are encoded in one batched pass (tests share attribute sets).
    records: when a list, gets one dict per target sentence (test, set, text, its association s).
    """
    loaded, texts = _load_tests(seat_dir, tests, limit)
    row = {x: i for i, x in enumerate(texts)}
    enc_all = encode(texts, scorer, progress) if texts else None
    rng = np.random.RandomState(seed)
    out: dict[str, Any] = {}
    for t in tests:
        enc = {k: enc_all[[row[x] for x in loaded[t][k]]] for k in SETS}
        out[t] = run_test(enc, rng, n_samples)
        if records is not None:
            s = association(enc["targ1"], enc["targ2"], enc["attr1"], enc["attr2"])
            texts_t = [("targ1", x) for x in loaded[t]["targ1"]] + [("targ2", x) for x in loaded[t]["targ2"]]
            records += [{"test": t, "set": k, "text": x, "association": float(v)} for (k, x), v in zip(texts_t, s)]
    sizes = [out[t]["effect_size"] for t in tests]
    out["avg_abs_effect_size"] = (
        float(np.mean(np.abs(sizes))) if sizes and all(x is not None for x in sizes) else None
    )
    return out


def _run(ctx: Context) -> dict[str, Any]:
    o = ctx.options
    return ctx.scored("seat", run, ctx.data_path("seat"), ctx.scorer, o["seat_tests"], n_samples=o["n_samples"],
                      seed=o["seed"])


def _inputs(ctx: Context) -> list[tuple[int, ...]]:
    _, texts = _load_tests(ctx.data_path("seat"), ctx.options["seat_tests"], ctx.limit)
    return [tuple(ctx.scorer.tokenizer(t)["input_ids"]) for t in texts]


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    if "seat" not in results:
        return []
    out = []
    for test, r in results["seat"].items():
        if test == "avg_abs_effect_size":
            continue
        p = "–" if r["p_value"] is None else f"{r['p_value']:.3g}"
        out.append(("SEAT", test, f"effect size {fmt(r['effect_size'], 3)} · p {p}"))
    out.append(("SEAT", "mean abs effect size", fmt(results["seat"]["avg_abs_effect_size"], 3)))
    return out


BENCHMARK = Benchmark(
    name="seat", title="SEAT", kind="mlm", data=("seat",), run=_run, rows=_rows, inputs=_inputs,
    options=(
        Option("seat_tests", GENDER_TESTS, "comma-separated SEAT tests, run in this order (default: the gender tests)",
               parse=comma_list),
        Option("n_samples", N_SAMPLES, f"permutation samples when the exact test is too large (default: {N_SAMPLES})",
               parse=positive_int, flag="--seat-samples", setting="seat_n_samples"),
        Option("seed", 0, "seed for SEAT permutations, an initialised MLM head and fine-tuning",
               parse=natural_int),
    ),
)
