"""launch/measure_collapse.py end to end: JSON, table, plot, corpus formats, clear errors."""

import json
import shutil
from pathlib import Path

import pytest
from transformers import BertTokenizer

from ncjax import collapse, measure
from conftest import load_module

ROOT = Path(__file__).resolve().parents[1]
ISSUE_KEYS = (
    "nc1_cdnv", "nc1_cdnv_dist4", "nc2_equinorm_cov", "nc2_equiangular_std", "gnc2_log_kernel",
    "nc3_self_duality", "unc3_cos_std", "unc3_cos_cov", "nc4_ncc_agreement", "num_classes", "num_tokens",
)
LINES = (ROOT / "tests" / "fixtures" / "gender_lines.txt").read_text().splitlines()[:7]


def _cli():
    return load_module(ROOT / "launch" / "measure_collapse.py", "measure_collapse")


@pytest.fixture(scope="module")
def cli():
    return _cli()


@pytest.fixture(scope="module")
def model_dir(tiny_bert_dir, tmp_path_factory):
    """The tiny BERT as a plain HF directory with saved tokenizer files."""
    d = tmp_path_factory.mktemp("tiny")
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert_dir / f, d / f)
    BertTokenizer(vocab=str(tiny_bert_dir / "vocab.txt")).save_pretrained(str(d))
    return d


def test_cli_two_models_json_table_plot(cli, model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"body": t}) + "\n" for t in LINES))
    out, png = tmp_path / "nc.json", tmp_path / "nc.png"
    rc = cli.main([
        "--model", str(model_dir), "--model", str(model_dir), "--corpus", str(corpus), "--field", "body",
        "--classes", "all", "--batch-size", "8", "--output", str(out), "--plot", str(png),
    ])
    assert rc == 0
    results = json.loads(out.read_text())
    assert len(results) == 2 and all(set(ISSUE_KEYS) <= set(r) for r in results)
    assert results[0]["classes"] == "all" and results[0]["features"] == "mlm_transform"
    # the JSON holds what the library computes on the same inputs
    from ncjax.convert import load_model, load_tokenizer

    model, _ = load_model(model_dir)
    want = measure.measure(model, load_tokenizer(model_dir), LINES, classes="all", batch_size=8)
    for key in collapse.METRIC_KEYS:
        assert results[1][key] == pytest.approx(want[key], rel=1e-5), key
    text = capsys.readouterr().out
    assert f"| metric | {model_dir} | {model_dir} |" in text and "| nc3_self_duality |" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_minilm_encoder_last_hidden(cli, tmp_path, capsys):
    corpus = ROOT / "ncjax" / "resources" / "corpora" / "gap_flipped.tsv"
    out = tmp_path / "nc.json"
    rc = cli.main([
        "--model", "minilm", "--corpus", str(corpus), "--classes", "gender-adept", "--features", "last_hidden",
        "--max-tokens", "1200", "--max-length", "64", "--batch-size", "8", "--output", str(out),
    ])
    assert rc == 0, capsys.readouterr().err
    (res,) = json.loads(out.read_text())
    assert res["num_tokens"] == 1200 and res["num_classes_requested"] == 287
    assert res["word_set"]["num_ids"] == 287 and "and" in res["word_set"]["generic_pieces"]
    assert 2 <= res["num_classes"] <= 287


@pytest.mark.parametrize(
    "extra,corpus_text,message",
    [
        (["--classes", "gender"], "\n".join(LINES), "unknown class spec"),
        (["--classes", "words:{one}"], "\n".join(LINES), "resolves to 1 token id"),
        ([], "the nurse worked at the hospital .\na doctor , an engineer", "no token of the class set"),
        ([], "\n\n  \n", "corpus is empty"),
    ],
)
def test_cli_errors_write_nothing(cli, model_dir, tmp_path, capsys, extra, corpus_text, message):
    (tmp_path / "one.txt").write_text("nurse\n")
    corpus = tmp_path / "c.txt"
    corpus.write_text(corpus_text)
    out = tmp_path / "nc.json"
    args = ["--model", str(model_dir), "--corpus", str(corpus), "--output", str(out)]
    args += [a.format(one=tmp_path / "one.txt") for a in extra]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not out.exists() and not list(tmp_path.glob(".nc.json*"))
