"""WinoBias coreference with the GAP-trained resolver: parsing, metrics by hand, windowing, bad
sentences, and an end-to-end run of the tiny fixture through the suite."""

import json

import numpy as np
import pytest

from ncjax import bench
from ncjax.bench import coref
from ncjax.convert import load_tokenizer

OCC = coref.load_occupations()


def test_winobias_parsing_finds_both_occupations():
    e = coref.parse_winobias("2 [The janitor] reprimanded the accountant because [he] got less allowance.", "x", OCC)
    assert e.text == "The janitor reprimanded the accountant because he got less allowance."
    assert (e.text[slice(*e.a)], e.text[slice(*e.b)], e.text[slice(*e.pronoun)]) == ("janitor", "accountant", "he")
    assert e.label == 0 and e.gender == "M"
    e = coref.parse_winobias("3 The assistant notified the [the chief] about it and asked [her] to act.", "x", OCC)
    assert e.label == 1 and e.gender == "F" and e.text[slice(*e.b)] == "chief"
    # A repeated occupation counts once, at its first mention; the first bracketed pronoun is resolved.
    e = coref.parse_winobias("32 The mover went to the house of [the editor] because [she] needed a mover.", "x", OCC)
    assert (e.text[slice(*e.a)], e.text[slice(*e.b)], e.label) == ("mover", "editor", 1)
    e = coref.parse_winobias("43 [The mover] helped the clerk because [he] needed to prove [his] strength.", "x", OCC)
    assert e.text[slice(*e.pronoun)] == "he" and e.label == 0
    groups = coref.load_winobias(coref.WINOBIAS_DIR, OCC)
    assert {k: len(v) for k, v in groups.items()} == {(k, s): 396 for k in coref.TYPES for s in coref.STANCES}


@pytest.mark.parametrize("line,match", [
    ("5 [The janitor] met the friend because [he] was late.", r"f\.txt:7: found 1 distinct occupation mentions \(janitor\)"),
    ("5 [The janitor] met the nurse and [it] was late.", r"f\.txt:7: the second bracketed span 'it' is not a gendered"),
    ("5 The janitor met the nurse because he was late.", r"f\.txt:7: expected bracketed spans"),
])
def test_bad_winobias_sentences_are_one_line_errors(line, match):
    with pytest.raises(ValueError, match=match) as e:
        coref.parse_winobias(line, "f.txt:7", OCC)
    assert "\n" not in str(e.value)


def test_pair_f1_and_gap_scores_by_hand():
    labels = np.array([0, 1, 2, 0, 1])
    pred = np.array([0, 0, 2, 2, 1])
    # pairs: ex0 A tp; ex1 A fp, B fn; ex2 none; ex3 A fn; ex4 B tp -> tp 2, fp 1, fn 2
    assert coref.pair_f1(labels, pred) == pytest.approx(100 * 4 / (4 + 1 + 2))
    assert coref.pair_f1(np.array([2]), np.array([2])) is None
    t = "he and she: Ann, Bob."
    exs = [coref.Example(t, (0, 2), (12, 15), (17, 20), 0, "m"), coref.Example(t, (7, 10), (12, 15), (17, 20), 1, "f")]
    g = coref.gap_scores(exs, np.array([0, 0]))
    assert g["m_f1"] == 100.0 and g["f_f1"] == 0.0 and g["bias"] == 0.0


def test_gap_data_and_windowing(tiny_bert_dir):
    train = [e for f in coref.GAP_TRAIN for e in coref.load_gap(coref.GAP_DIR / f)]
    test = coref.load_gap(coref.GAP_DIR / coref.GAP_TEST)
    assert len(train) == 2454 and len(test) == 2000
    assert np.bincount([e.label for e in test]).tolist() == [918, 855, 227]
    tok = load_tokenizer("minilm")
    long = test[0]
    enc = coref.encode([long], tok, 48)
    assert len(enc.ids[0]) == 48 and enc.ids[0][0] == tok.cls_token_id and enc.ids[0][-1] == tok.sep_token_id
    for (s, e), (cs, ce) in zip(enc.fields["spans"][0], (long.pronoun, long.a, long.b)):
        assert tok.decode(enc.ids[0][s:e]).replace(" ", "") == long.text[cs:ce].lower().replace(" ", "")
    with pytest.raises(ValueError, match=r"gap-test\.tsv:2: pronoun and candidates span \d+ tokens, more than max"):
        coref.encode([long], tok, 8)


def test_tiny_coref_end_to_end(tiny_bert_dir, tmp_path):
    r = bench.evaluate(tiny_bert_dir, "coref", limit=6, ft_train_limit=16, ft_epochs=2.0, ft_batch_size=8,
                       ft_max_length=64, progress=False, per_example=tmp_path / "ex.jsonl", workdir=tmp_path / "w")
    c = r["coref"]
    assert set(c) == {"type1", "type2", "tpr1", "tpr2", "gap", "selected_epoch"}
    assert set(c["type1"]) == {"pro", "anti"} and set(c["type1"]["pro"]) == {"acc", "f1"}
    assert set(c["gap"]) == {"m_f1", "f_f1", "bias"} and c["selected_epoch"] in (1, 2)
    if c["type1"]["pro"]["f1"] is not None and c["type1"]["anti"]["f1"] is not None:
        assert c["tpr1"] == pytest.approx(c["type1"]["pro"]["f1"] - c["type1"]["anti"]["f1"])
    ex = [json.loads(x) for x in (tmp_path / "ex.jsonl").read_text().splitlines()]
    wino = [e for e in ex if e["set"] == "winobias" and e["type"] == "type2" and e["stance"] == "anti"]
    assert len(wino) == 6
    assert c["type2"]["anti"]["acc"] == pytest.approx(100 * np.mean([e["choice"] == e["label"] for e in wino]))
    assert sorted(p.name for p in (tmp_path / "w" / "coref").iterdir()) == [
        "checkpoints", "done.json", "epoch1.npz", "epoch2.npz", "spec.json"]
    assert "| WinoBias coref | TPR-1 · TPR-2 |" in bench.markdown(r)


CONLL = """#begin document (test/doc0); part 000
test/doc0 0 0 Mary NNP (NP* - - - - (PERSON) (1)
test/doc0 0 1 met VBD * - - - - * -
test/doc0 0 2 the DT (NP* - - - - * (2
test/doc0 0 3 old JJ * - - - - * -
test/doc0 0 4 doctor NN *) - - - - * 2)
test/doc0 0 5 . . * - - - - * -

test/doc0 0 0 She PRP (NP*) - - - - * (1)
test/doc0 0 1 thanked VBD * - - - - * -
test/doc0 0 2 him PRP * - - - - * (2)
test/doc0 0 3 . . * - - - - * -

#end document
"""


def test_conll_pronoun_examples_from_a_synthetic_file(tmp_path):
    from ncjax.bench import conll

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "doc0.v4_gold_conll").write_text(CONLL)
    exs = conll.load_pronoun_examples(tmp_path, seed=0)
    assert len(exs) == 2  # She -> Mary (vs the old doctor), him -> the old doctor (vs Mary)
    by_pron = {e.text[slice(*e.pronoun)]: e for e in exs}
    assert set(by_pron) == {"She", "him"}
    for pron, gold, other in (("She", "Mary", "the old doctor"), ("him", "the old doctor", "Mary")):
        e = by_pron[pron]
        assert e.text == "Mary met the old doctor . She thanked him ."
        cands = [e.text[slice(*e.a)], e.text[slice(*e.b)]]
        assert cands[e.label] == gold and cands[1 - e.label] == other
    (tmp_path / "a" / "bad_conll").write_text("#begin document (x); part 000\nx 0 0 He PRP * 3)\n#end document\n")
    with pytest.raises(ValueError, match=r"bad_conll:2: chain 3 closes without being opened"):
        conll.load_pronoun_examples(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no \\*_conll files"):
        conll.load_pronoun_examples(tmp_path / "a" / "none")
