"""The bias benchmark suite: ncjax (jax backend, batched) vs a bias-bench-style PyTorch loop.

Both sides score the same model, the all-MiniLM-L6-v2 encoder with a seeded random MLM head
(ncjax initialises it; the PyTorch side loads the same weights from a transformers export), on
the same bundled data, in one process on the CPU:

- ncjax: `ncjax.bench.evaluate(scorer, ...)` with the jax backend (batched, length-bucketed,
  identical inputs run once, logits only at the read positions). Its time includes jit compiles.
  It runs after the reference, so XLA's CPU threads never compete with PyTorch's.
- reference: the loops the reference code runs, re-implemented here independently of
  ncjax.bench from the raw files: batch 1, one full-vocabulary forward per masked token
  (StereoSet and CrowS-Pairs as bias-bench, SEAT as bias-bench/sent-bias with a per-sentence
  BertModel pass and python-loop cosines and permutation samples, WinoBias one forward per
  sentence). BEC-Pro runs the reference pipeline of marionbartl/gender-bias-BERT, which itself
  batches 20 sentences (TM and TAM inputs, padded with [MASK] to 16).

It prints the per-benchmark scores of both sides, their differences and the wall-time ratio.
`--limit N` scores the first N examples of each file (SEAT: of each set) on both sides, for a
shorter timed comparison on a small machine.

    python benchmarks/evaluate.py                 # the whole suite
    python benchmarks/evaluate.py --limit 200     # first 200 examples per file
"""

from __future__ import annotations

import argparse
import csv
import difflib
import itertools
import json
import math
import platform
import string
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ncjax import bench  # noqa: E402
from ncjax.bench import seat as nc_seat  # noqa: E402
from ncjax.bench.scorer import JaxScorer, load_tokenizer  # noqa: E402
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="first N examples per file on both sides")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--benchmarks", default=",".join(bench.BENCHMARKS))
    args = p.parse_args()
    names = bench.parse_benchmarks(args.benchmarks)

    import jax
    import torch
    import transformers
    from transformers import AutoModelForMaskedLM

    model, config = load_model(minilm_dir(), init_missing_head=True, seed=0)
    tok = load_tokenizer(minilm_dir())
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model, config, Path(tmp) / "hf", tokenizer_src=minilm_dir())
        tmodel = AutoModelForMaskedLM.from_pretrained(str(Path(tmp) / "hf")).eval()
    scorer = JaxScorer(model, config, tok, batch_size=args.batch_size, source="minilm+seeded head")

    # The reference runs first: XLA's CPU thread pool, once busy, competes with PyTorch's threads
    # for a while after each jax call, which would slow the reference unfairly.
    refs, t_ref = {}, {}
    fns = {"stereoset": ref_stereoset, "crows": ref_crows, "seat": ref_seat, "becpro": ref_becpro,
           "winobias-probe": ref_winobias}
    for name in names:
        t = time.perf_counter()
        refs[name] = fns[name](tmodel, tok, args.limit)
        t_ref[name] = time.perf_counter() - t

    t = time.perf_counter()
    ours = bench.evaluate(scorer, names, limit=args.limit, progress=False)
    t_ours = time.perf_counter() - t

    print(f"# bias benchmark suite, MiniLM-L6 + seeded MLM head, limit={args.limit}")
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} {platform.processor() or ''}, "
          f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}, Python {platform.python_version()}")
    print("| benchmark | ncjax s | reference s | ratio | max score difference |")
    print("|---|---|---|---|---|")
    for name in names:
        o, r = ours[name], refs[name]
        if name == "stereoset":
            diff = max_diff({k: {m: v[m] for m in ("SS", "LMS", "ICAT")} if v["count"] else None
                             for k, v in o.items()}, r)
        elif name == "crows":
            diff = max_diff({k: v["metric"] for k, v in o.items()}, r)
        elif name == "seat":
            diff = max_diff(o, r)
        elif name == "becpro":
            diff = max_diff(o["gap"], r["gap"])
        else:
            diff = max_diff(o, r)
        print(f"| {name} | {ours['seconds'][name]:.1f} | {t_ref[name]:.1f} | "
              f"{t_ref[name] / ours['seconds'][name]:.1f}x | {diff:.2g} |")
    total_ref = sum(t_ref.values())
    print(f"| total | {t_ours:.1f} | {total_ref:.1f} | {total_ref / t_ours:.1f}x | |")
    print()
    print(bench.markdown(ours), end="")
    print()
    print("reference:", json.dumps({k: (v if k != "becpro" else v["gap"]) for k, v in refs.items()},
                                   default=float))


if __name__ == "__main__":
    main()
