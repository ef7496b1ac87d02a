"""Bad inputs to the bias benchmarks give one clear sentence (file, line, value and what to do)."""

import json
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ncjax import bench
from ncjax.bench import becpro, crows, seat, stereoset, winobias
from ncjax.bench.scorer import Scorer

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_benchmark_name_is_rejected_before_loading_a_model(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown benchmark 'stereo'; choose from stereoset, crows, seat"):
        bench.evaluate(tmp_path / "no-model", "stereo,crows")
    with pytest.raises(ValueError, match="Unknown backend 'tf'"):
        bench.evaluate(tmp_path / "no-model", "crows", backend="tf")


def test_launch_reports_errors_in_one_line(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import evaluate as launch_evaluate
    finally:
        sys.path.remove(str(ROOT / "launch"))
    rc = launch_evaluate.main(["--model", "x", "--benchmarks", "winobias-probe,seats", "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: Unknown benchmark 'seats'") and err.count("\n") == 1
    rc = launch_evaluate.main(["--model", "x", "--benchmarks", "winobias", "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "now 'winobias-probe'" in err and "'coref'" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        launch_evaluate.parse_args(["--model", "x", "--output", "o.json", "--limit", "-1"])
    err = capsys.readouterr().err
    assert "--limit '-1' must be a whole number of examples >= 0" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_missing_data_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Data for crows not found at .*crows_pairs_anonymized\.csv"):
        bench.evaluate(tmp_path / "no-model", "crows", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"StereoSet file .*nope\.jsonl not found"):
        stereoset.load(tmp_path / "nope.jsonl")
    (tmp_path / "seat").mkdir()
    with pytest.raises(FileNotFoundError, match=r"SEAT test file .*sent-weat6\.jsonl not found"):
        seat.run(tmp_path / "seat", None)
    with pytest.raises(FileNotFoundError, match=r"WinoBias file .*pro_stereotyped_type1\.txt\.test not found"):
        winobias.run(tmp_path, None)


def test_malformed_rows_report_their_line(tmp_path):
    p = tmp_path / "s.jsonl"
    good = {"type": "intrasentence", "target": "t", "bias_type": "gender", "context": "a BLANK",
            "stereotype": "a b", "anti-stereotype": "a c", "unrelated": "a d"}
    p.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"s\.jsonl:3: malformed JSON line"):
        stereoset.load(p)
    p.write_text(json.dumps({**good, "context": "no blank here"}) + "\n")
    with pytest.raises(ValueError, match=r"s\.jsonl:1: the context has no BLANK"):
        stereoset.load(p)

    c = tmp_path / "c.csv"
    c.write_text(",sent_more,sent_less,stereo_antistereo,bias_type\n0,a,b,stereo,gender\n"
                 '1,"multi\nline",b,stereo,gender\n2,a,b,sideways,gender\n')
    with pytest.raises(ValueError, match=r"c\.csv:5: stereo_antistereo is 'sideways'"):
        crows.load(c)

    b = tmp_path / "b.tsv"
    b.write_text("\tSentence\tSent_TM\tSent_AM\tSent_TAM\tTemplate\tPerson\tGender\tProfession\tProf_Gender\n"
                 "0\the is a nurse .\t[MASK] is a nurse .\the is a [MASK] .\t[MASK] is a [MASK] .\tt\the\tmale"
                 "\tnurse\tfemale\n"
                 "1\tshe is a nurse .\t[MASK] is a nurse .\tshe is a [MASK] .\n")
    with pytest.raises(ValueError, match=r"b\.tsv:3: row has 4 tab-separated fields, the header has 10"):
        becpro.load(b)

    w = tmp_path / "pro_stereotyped_type1.txt.test"
    w.write_text("1 [the doctor] worked and [he] was good .\n2 the doctor worked and he was good .\n")
    with pytest.raises(ValueError, match=r"type1\.txt\.test:2: no bracketed pronoun"):
        winobias.load_file(w)

    s = tmp_path / "t.jsonl"
    s.write_text(json.dumps({"targ1": {"examples": ["a"]}, "targ2": {"examples": ["b"]}, "attr1": {"examples": ["c"]}}))
    with pytest.raises(ValueError, match=r"t\.jsonl: needs attr2\.examples"):
        seat.load_test(s)


def test_tokenizer_must_fit_the_model_vocabulary(tiny_bert_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    with pytest.raises(ValueError, match=r"has 54 tokens but the model's vocab_size is 50; use the tokenizer"):
        Scorer(tok, vocab_size=50, max_length=512, source=str(tiny_bert_dir))
    assert Scorer(tok, vocab_size=64, max_length=512).vocab_size == 64  # a padded vocabulary is fine


def test_unknown_options_are_named(tiny_bert_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    with pytest.raises(ValueError, match="Unknown BEC-Pro padding 'none'"):
        becpro.build_queries([], tok, padding="none")
    with pytest.raises(ValueError, match="Unknown WinoBias split 'train'"):
        winobias.run("unused", None, splits=("train",))
