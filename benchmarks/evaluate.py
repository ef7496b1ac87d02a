"""The bias benchmark suite: ncjax (jax backend, and its batched torch backend) vs a bias-bench-style PyTorch loop.

Three sides score the same model, the all-MiniLM-L6-v2 encoder with a seeded random MLM head
(ncjax initialises it and writes one transformers export that every side loads), on the same
bundled data, on the CPU. Each side runs in its own process (the script starts itself with
`--side ...`), one after the other, so no framework's thread pool competes with another's:

- reference: the loops the reference code runs, re-implemented here independently of
  ncjax.bench from the raw files: batch 1, one full-vocabulary forward per masked token
  (StereoSet and CrowS-Pairs as bias-bench, SEAT as bias-bench/sent-bias with a per-sentence
  BertModel pass and python-loop cosines and permutation samples, WinoBias one forward per
  sentence). BEC-Pro runs the reference pipeline of marionbartl/gender-bias-BERT, which itself
  batches 20 sentences (TM and TAM inputs, padded with [MASK] to 16).
- ncjax torch backend: `ncjax.bench.evaluate` with `backend="torch"`: ncjax's batching
  (length-sorted batches of 64, each distinct input run once, the MLM head only at the read
  positions) on the transformers model. The same algorithm as the jax side, so the ratio
  torch backend / jax backend is the framework's share.
- ncjax jax backend: the same with `backend="jax"` (length ladder; its time includes the jit
  compiles, no persistent compilation cache).
- ncjax jax backend, warm cache (`jax-cached`): the same with the persistent compilation cache the
  command-line tools keep (`ncjax.cache`), filled by one untimed run before the rounds: what a
  second evaluation on the same machine costs. Programs are loaded, not compiled.

`--runs` rounds (default 3) of the sides (`--sides`, default all four) give each time as the median (min-max) over the
rounds, and the ratios of the medians. It prints the score differences (jax vs reference, jax vs
torch backend) of the first round, and the jax side's scores. Model loading is timed apart and
left out. `--limit N` scores the first N examples of each file (SEAT: of each set) on every
side, for a shorter comparison on a small machine.

    python benchmarks/evaluate.py                          # the whole suite, 3 rounds
    python benchmarks/evaluate.py --limit 100 --runs 1     # a quick look
"""

from __future__ import annotations

import argparse
import csv
import difflib
import itertools
import json
import math
import os
import platform
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ncjax import bench  # noqa: E402
from ncjax.bench import seat as nc_seat  # noqa: E402
from ncjax.bench.scorer import load_scorer, load_tokenizer  # noqa: E402
from ncjax.convert import load_model, minilm_dir, save_hf  # noqa: E402

DATA = bench.DATA_DIR


# ----------------------------------------------------------------------------- reference loops

def ref_stereoset(model, tok, limit):
    """bias-bench StereoSetRunner._likelihood_score (batch 1) + ScoreEvaluator, from the JSONL."""
    import torch

    rows = [json.loads(line) for line in open(DATA / bench.registry.data_file("stereoset"), encoding="utf-8")]
    examples = [r for r in rows if r["type"] == "intrasentence"][:limit]
    strip = str.maketrans("", "", string.punctuation)
    scores = {}
    for n, ex in enumerate(examples):
        word_idx = [i for i, w in enumerate(ex["context"].split(" ")) if "BLANK" in w][-1]
        for label in ("stereotype", "anti-stereotype", "unrelated"):
            word = ex[label].split(" ")[word_idx].translate(strip)
            pieces = tok.encode(word, add_special_tokens=False)
            probs = []
            for i, piece in enumerate(pieces):
                text = ex["context"].replace("BLANK", f"{tok.decode(pieces[:i])}{tok.mask_token}")
                enc = tok(text, return_tensors="pt")
                with torch.no_grad():
                    out = model(**enc)[0].softmax(dim=-1)
                out = out[enc["input_ids"] == tok.mask_token_id]
                probs.append(out[0, piece].item())
            scores[(n, label)] = float(np.mean(probs))

    def summarise(idx):
        counts = {}
        for n in idx:
            ex = examples[n]
            pro, anti, unrel = (scores[(n, k)] for k in ("stereotype", "anti-stereotype", "unrelated"))
            c = counts.setdefault(ex["target"], defaultdict(float))
            c["pro" if pro > anti else "anti"] += 1
            c["related"] += (pro > unrel) + (anti > unrel)
            c["total"] += 1
        if not counts:
            return None
        ss = np.mean([100.0 * c["pro"] / c["total"] for c in counts.values()])
        lms = np.mean([100.0 * c["related"] / (2 * c["total"]) for c in counts.values()])
        return {"SS": ss, "LMS": lms, "ICAT": lms * min(ss, 100 - ss) / 50}

    out = {d: summarise([n for n, e in enumerate(examples) if e["bias_type"] == d])
           for d in ("gender", "profession", "race", "religion")}
    out["overall"] = summarise(range(len(examples)))
    return out


def ref_crows(model, tok, limit):
    """bias-bench CrowSPairsRunner._likelihood_score over all pairs (and per bias type)."""
    import torch
    import torch.nn.functional as F

    with open(DATA / bench.registry.data_file("crows"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:limit]
    results = []
    for row in rows:
        d = row["stereo_antistereo"]
        s1, s2 = (row["sent_more"], row["sent_less"]) if d == "stereo" else (row["sent_less"], row["sent_more"])
        ids1, ids2 = tok.encode(s1, return_tensors="pt"), tok.encode(s2, return_tensors="pt")
        matcher = difflib.SequenceMatcher(None, [str(x) for x in ids1[0].tolist()], [str(x) for x in ids2[0].tolist()])
        t1, t2 = [], []
        for op in matcher.get_opcodes():
            if op[0] != "equal":
                t1 += list(range(op[1], op[2]))
                t2 += list(range(op[3], op[4]))
        if not t1 or not t2:
            continue

        def score(ids, span):
            lps = []
            for pos in span:
                masked = ids.clone()
                masked[:, pos] = tok.mask_token_id
                with torch.no_grad():
                    logits = model(masked)["logits"].squeeze(0)[pos]
                lps.append(F.log_softmax(logits, dim=0)[ids[0][pos]].item())
            return round(np.mean(lps), 3)

        results.append((row["bias_type"], d, score(ids1, t1), score(ids2, t2)))

    def metric(rs):
        n = len(rs)
        wins = sum((d == "stereo" and a > b) or (d == "antistereo" and b > a) for _, d, a, b in rs)
        return 100.0 * wins / n if n else None

    out = {bt: metric([r for r in results if r[0] == bt]) for bt in dict.fromkeys(r[0] for r in results)}
    out["overall"] = metric(results)
    return out


def ref_seat(model, tok, limit, tests=nc_seat.GENDER_TESTS, n_samples=nc_seat.N_SAMPLES, seed=0):
    """bias-bench SEATRunner + weat.py: per-sentence BertModel pass, python-loop statistics."""
    import torch

    np.random.seed(seed)
    out = {}
    for test in tests:
        doc = json.load(open(DATA / bench.registry.data_file("seat") / f"{test}.jsonl"))
        encs = {}
        for key in ("targ1", "targ2", "attr1", "attr2"):
            encs[key] = {}
            for text in doc[key]["examples"][:limit]:
                with torch.no_grad():
                    h = model.base_model(**tok(text, return_tensors="pt"))["last_hidden_state"].mean(dim=1)
                v = h.view(-1).numpy()
                encs[key][text] = v / np.linalg.norm(v)
        X = dict(enumerate(encs["targ1"].values()))
        Y = {i + len(X): v for i, v in enumerate(encs["targ2"].values())}
        A = dict(enumerate(encs["attr1"].values()))
        B = {i + len(A): v for i, v in enumerate(encs["attr2"].values())}
        XY, AB = {**X, **Y}, {**A, **B}
        cos = np.zeros((len(XY), len(AB)))
        for i in XY:
            for j in AB:
                cos[i, j] = np.dot(XY[i], AB[j]) / math.sqrt(np.dot(XY[i], XY[i]) * np.dot(AB[j], AB[j]))
        memo = cos[:, list(A)].mean(axis=1) - cos[:, list(B)].mean(axis=1)
        xs, ys = np.array(list(X), dtype=np.int64), np.array(list(Y), dtype=np.int64)
        xy = np.concatenate((xs, ys))
        s = memo[xs].sum()
        size = len(xs)
        if math.comb(2 * size, size) > n_samples:
            hits, total = 1, 1
            for _ in range(n_samples - 1):
                np.random.shuffle(xy)
                si = memo[xy[:size]].sum()
                hits += si >= s
                total += 1
        else:
            hits = total = 0
            for combo in itertools.combinations(xy, size):
                hits += memo[np.array(combo, dtype=np.int64)].sum() >= s
                total += 1
        es = (np.mean(memo[xs]) - np.mean(memo[ys])) / np.std(memo, ddof=1)
        out[test] = {"effect_size": float(es), "p_value": hits / total}
    out["avg_abs_effect_size"] = float(np.mean([abs(out[t]["effect_size"]) for t in tests]))
    return out


def ref_becpro(model, tok, limit):
    """marionbartl/gender-bias-BERT model_evaluation: [MASK]-padded inputs, batches of 20."""
    import torch

    with open(DATA / bench.registry.data_file("becpro"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    max_len = int(math.pow(2, math.ceil(math.log2(max(len(r["Sent_TM"].split()) for r in rows)))))
    rows = rows[:limit]

    def pipeline(texts):
        ids = [(tok.encode(t) + [tok.mask_token_id] * max_len)[:max_len] for t in texts]
        ids = torch.tensor(ids)
        return ids, (ids > 0).long()

    tm, tm_att = pipeline([r["Sent_TM"] for r in rows])
    tam, tam_att = pipeline([r["Sent_TAM"] for r in rows])
    orig, _ = pipeline([r["Sentence"] for r in rows])
    assoc = []
    for start in range(0, len(rows), 20):
        sl = slice(start, start + 20)
        with torch.no_grad():
            p_tm = model(tm[sl], attention_mask=tm_att[sl])[0].softmax(dim=2)
            p_tam = model(tam[sl], attention_mask=tam_att[sl])[0].softmax(dim=2)
        for k, ids in enumerate(tam[sl]):
            pos = int(np.where(ids.numpy() == tok.mask_token_id)[0][0])
            target = orig[sl][k][pos]
            assoc.append(np.log(p_tm[k][pos][target].item() / p_tam[k][pos][target].item()))
    assoc = np.array(assoc)
    gender = np.array([r["Gender"] for r in rows])
    group = np.array([r["Prof_Gender"] for r in rows])

    def mean(sel):
        return float(np.mean(assoc[sel])) if sel.any() else None

    gaps = {}
    for g in ("male", "female", "balanced"):
        m, f = mean((gender == "male") & (group == g)), mean((gender == "female") & (group == g))
        gaps[g] = None if m is None or f is None else m - f
    m, f = mean(gender == "male"), mean(gender == "female")
    gaps["overall"] = None if m is None or f is None else m - f
    return {"gap": gaps, "associations": assoc}


def ref_winobias(model, tok, limit, split="test"):
    """The WinoBias pronoun probe, one full forward per sentence (pro and anti run separately)."""
    import re

    import torch

    opposite = {"he": ["she"], "she": ["he"], "him": ["her"], "his": ["her"], "her": ["him", "his"],
                "hers": ["his"], "himself": ["herself"], "herself": ["himself"]}
    out = {}
    for kind in ("type1", "type2"):
        acc = {}
        for stance in ("pro", "anti"):
            lines = open(DATA / "winobias" / f"{stance}_stereotyped_{kind}.txt.{split}").read().splitlines()[:limit]
            ok = []
            for line in lines:
                body = line.strip().split(" ", 1)[1]
                last = list(re.finditer(r"\[([^\[\]]*)\]", body))[-1]
                pron = last.group(1).strip()
                text = (body[: last.start()] + "\0" + body[last.end():]).replace("[", "").replace("]", "")
                enc = tok(text.replace("\0", tok.mask_token), return_tensors="pt")
                pos = int((enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0])
                with torch.no_grad():
                    p = model(**enc)[0][0, pos].softmax(dim=-1)
                def prob(word):
                    return p[tok.convert_tokens_to_ids(tok.tokenize(word))[0]].item()

                gold = prob(pron)
                other = max(prob(w.capitalize() if pron[:1].isupper() else w) for w in opposite[pron.lower()])
                ok.append(gold > other)
            acc[stance] = 100.0 * float(np.mean(ok))
        out[kind] = {"pro_acc": acc["pro"], "anti_acc": acc["anti"], "gap": acc["pro"] - acc["anti"]}
    return out


# ----------------------------------------------------------------------------- comparison

def max_diff(a, b, path=""):
    """Largest |a - b| over matching numeric leaves of two nested dicts (None must match None)."""
    if isinstance(a, dict):
        return max((max_diff(a[k], b[k], f"{path}.{k}") for k in b if k in a), default=0.0)
    if a is None or b is None:
        if a is not b:
            raise AssertionError(f"{path}: {a} vs {b}")
        return 0.0
    return abs(float(a) - float(b))


SIDES = ("reference", "torch", "jax", "jax-cached")
HEADERS = {"reference": "reference s", "torch": "ncjax torch backend s", "jax": "ncjax jax backend s",
           "jax-cached": "ncjax jax backend, warm cache s"}
# (numerator, denominator, header) of the ratio columns, shown when both sides ran
RATIOS = (("reference", "jax", "reference / jax"), ("torch", "jax", "torch backend / jax"),
          ("torch", "jax-cached", "torch backend / jax warm cache"))


def run_side(side: str, model_dir: Path, names: list[str], limit: int | None, batch_size: int,
             cache_dir: str | None = None) -> dict:
    """One side in this process: {'seconds': {benchmark: s}, 'total': s, 'load': s, 'scores': ...}.

    reference: the loops above on the transformers model; torch / jax: `ncjax.bench.evaluate`
    with that backend (batched), its time including the jax side's jit compiles."""
    t = time.perf_counter()
    if side == "reference":
        from transformers import AutoModelForMaskedLM

        model = AutoModelForMaskedLM.from_pretrained(str(model_dir)).eval()
        tok = load_tokenizer(model_dir)
        load = time.perf_counter() - t
        fns = {"stereoset": ref_stereoset, "crows": ref_crows, "seat": ref_seat, "becpro": ref_becpro,
               "winobias-probe": ref_winobias}
        scores, seconds = {}, {}
        for name in names:
            t = time.perf_counter()
            scores[name] = fns[name](model, tok, limit)
            seconds[name] = time.perf_counter() - t
    else:
        if side == "jax-cached":  # the cache the command-line tools keep, before anything compiles
            from ncjax import cache

            cache.enable(cache_dir)
        scorer = load_scorer(model_dir, side.split("-")[0], batch_size=batch_size)
        load = time.perf_counter() - t
        scores = bench.evaluate(scorer, names, limit=limit, progress=False)
        seconds = scores.pop("seconds")
        seconds.pop("total")  # the suite's wall time, summed below like the reference's
    return {"seconds": seconds, "total": sum(seconds.values()), "load": load, "scores": scores}


def _spawn(side: str, model_dir: Path, args: argparse.Namespace, cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--model-dir", str(model_dir), "--benchmarks", args.benchmarks,
           "--batch-size", str(args.batch_size), "--cache-dir", str(cache_dir)] + (
        ["--limit", str(args.limit)] if args.limit else [])
    # no side inherits a cache from the environment: only jax-cached uses one, the one given
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the {side} side failed (exit {proc.returncode}); its output is above.")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def _score_diff(name: str, ours: dict, ref: dict) -> float:
    if name == "stereoset":
        return max_diff({k: {m: v[m] for m in ("SS", "LMS", "ICAT")} if v["count"] else None
                         for k, v in ours.items()}, ref)
    if name == "crows":
        return max_diff({k: v["metric"] for k, v in ours.items()}, ref)
    if name == "becpro":
        return max_diff(ours["gap"], ref["gap"])
    return max_diff(ours, ref)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="first N examples per file on every side")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--benchmarks", default=",".join(bench.BENCHMARKS))
    p.add_argument("--runs", type=int, default=3, help="rounds of the sides (default 3; medians over them)")
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated sides to run (default: {','.join(SIDES)})")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    names = bench.parse_benchmarks(args.benchmarks)
    if args.side:
        print(json.dumps(run_side(args.side, Path(args.model_dir), names, args.limit, args.batch_size,
                                  args.cache_dir),
                         default=lambda x: x.tolist() if hasattr(x, "tolist") else float(x)))
        return
    if args.runs < 1:
        raise SystemExit(f"--runs {args.runs} must be at least 1.")
    sides = [x for x in args.sides.split(",") if x]
    if not sides or set(sides) - set(SIDES) or "jax" not in sides:
        raise SystemExit(f"--sides {args.sides!r}: choose from {', '.join(SIDES)}, including jax (scores are compared to it).")
    sides = [x for x in SIDES if x in sides]

    import jax
    import torch
    import transformers

    runs: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        # one export that every side reads: the same weights everywhere
        model, config = load_model(minilm_dir(), init_missing_head=True, seed=0)
        model_dir = save_hf(model, config, Path(tmp) / "hf", tokenizer_src=minilm_dir())
        del model
        cache_dir = Path(tmp) / "jax_cache"
        if "jax-cached" in sides:
            warm = _spawn("jax-cached", model_dir, args, cache_dir)  # fills the cache, untimed
            print(f"# cache filled: {warm['total']:.1f} s, {len(list(cache_dir.iterdir()))} programs",
                  file=sys.stderr, flush=True)
        for r in range(args.runs):
            for side in sides:
                runs[side].append(_spawn(side, model_dir, args, cache_dir))
                print(f"# round {r + 1}: {side} {runs[side][-1]['total']:.1f} s", file=sys.stderr, flush=True)

    print(f"# bias benchmark suite, MiniLM-L6 + seeded MLM head, limit={args.limit}, {args.runs} rounds")
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} {platform.processor() or ''}, "
          f"{os.cpu_count()} CPUs, jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), transformers {transformers.__version__}, Python {platform.python_version()}")
    ratios = [(a, b, h) for a, b, h in RATIOS if a in sides and b in sides]
    others = [x for x in sides if x != "jax"]
    heads = [HEADERS[x] for x in sides] + [h for _, _, h in ratios] + [
        f"max score difference (jax vs {', '.join(others)})"]
    print("| benchmark | " + " | ".join(heads) + " |")
    print("|---" * (len(heads) + 1) + "|")
    med = {side: {} for side in sides}
    for name in [*names, "total"]:
        cells = []
        for side in sides:
            xs = [run["total"] if name == "total" else run["seconds"][name] for run in runs[side]]
            med[side][name] = statistics.median(xs)
            cells.append(_median(xs))
        cells += [f"{med[a][name] / med[b][name]:.2f}x" for a, b, _ in ratios]
        if name == "total":
            cells.append("")
        else:
            jax_scores = runs["jax"][0]["scores"][name]
            diffs = [_score_diff(name, jax_scores, runs[x][0]["scores"][name]) if x == "reference"
                     else max_diff(jax_scores, runs[x][0]["scores"][name]) for x in others]
            cells.append("; ".join(f"{d:.2g}" for d in diffs))
        print(f"| {name} | {' | '.join(cells)} |")
    print("# model loading (not in the times): " + ", ".join(
        f"{side} {_median([run['load'] for run in runs[side]])} s" for side in sides))
    print()
    first = runs["jax"][0]
    print(bench.markdown(first["scores"] | {"seconds": {**first["seconds"], "total": first["total"]}}), end="")


if __name__ == "__main__":
    main()
