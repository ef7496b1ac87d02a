"""Held-out masked-token accuracy (ncjax.accuracy), its logging in training, the warm-up recipe
(configs/mlm_warmup.py) and the `minilm-mlm` model source it installs."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from ncjax import accuracy, convert, data, logs, masking, weights
from conftest import load_module

REPO = Path(__file__).resolve().parents[1]
LINES = (REPO / "tests" / "fixtures" / "gender_lines.txt").read_text().splitlines()


def _config(file: str, variant: str | None):
    return load_module(REPO / "configs" / f"{file}.py", file).get_config(variant)


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    model, config = convert.load_model(tiny_bert_dir)
    tokenizer = convert.load_tokenizer(tiny_bert_dir)
    arrays = data.tokenize([t for t in LINES if t.strip()] * 3, tokenizer, 16)
    return model, config, tokenizer, arrays


@pytest.mark.torch
def test_accuracy_equals_pytorch_on_the_same_masks(tiny, tiny_bert_dir):
    """Masks drawn as documented (batch b keyed by fold_in(PRNGKey(seed), b), the last batch padded
    with empty rows), then scored by transformers' BertForMaskedLM on the same weights."""
    import torch
    import transformers

    model, config, tokenizer, arrays = tiny
    batch_size, seed = 8, 3
    graphdef, params = nnx.split(model)
    special = tuple(masking.special_token_ids(tokenizer))
    got = accuracy.masked_accuracy(graphdef, params, arrays, special_ids=special, mask_id=tokenizer.mask_token_id,
                                   vocab_size=config.vocab_size, batch_size=batch_size, seed=seed)

    pt = transformers.BertForMaskedLM.from_pretrained(tiny_bert_dir).eval()
    ids, mask = arrays["input_ids"], arrays["attention_mask"]
    correct = nll = count = 0.0
    for b, start in enumerate(range(0, len(ids), batch_size)):
        bi = np.zeros((batch_size, ids.shape[1]), np.int32)
        bm = np.zeros_like(bi)
        n = len(ids[start:start + batch_size])
        bi[:n], bm[:n] = ids[start:start + batch_size], mask[start:start + batch_size]
        m = masking.mask_tokens(jax.random.fold_in(jax.random.PRNGKey(seed), b), bi, bm, special_ids=special,
                                mask_id=tokenizer.mask_token_id, vocab_size=config.vocab_size,
                                max_predictions=masking.default_max_predictions(ids.shape[1], 0.15))
        with torch.no_grad():
            logits = pt(input_ids=torch.tensor(np.asarray(m["input_ids"]), dtype=torch.long),
                        attention_mask=torch.tensor(bm, dtype=torch.long)).logits.numpy().astype(np.float64)
        pos, lab, w = (np.asarray(m[k]) for k in ("positions", "labels", "weights"))
        sel = np.take_along_axis(logits, pos[..., None], axis=1)  # [batch, P, vocab]
        logz = np.log(np.exp(sel - sel.max(-1, keepdims=True)).sum(-1)) + sel.max(-1)
        picked = np.take_along_axis(sel, lab[..., None], axis=-1)[..., 0]
        correct += float(((sel.argmax(-1) == lab) * w).sum())
        nll += float(((logz - picked) * w).sum())
        count += float(w.sum())
    assert got["masked_tokens"] == int(count) > 20
    assert got["accuracy"] == pytest.approx(correct / count, abs=1e-12)
    assert got["loss"] == pytest.approx(nll / count, rel=1e-4)


def test_accuracy_is_deterministic_and_ignores_padding_rows(tiny):
    model, config, tokenizer, arrays = tiny
    graphdef, params = nnx.split(model)
    kw = dict(special_ids=tuple(masking.special_token_ids(tokenizer)), mask_id=tokenizer.mask_token_id,
              vocab_size=config.vocab_size, batch_size=8)
    a = accuracy.masked_accuracy(graphdef, params, arrays, seed=1, **kw)
    assert a == accuracy.masked_accuracy(graphdef, params, arrays, seed=1, **kw)
    assert a != accuracy.masked_accuracy(graphdef, params, arrays, seed=2, **kw)
    assert 0.0 <= a["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="could be masked"):
        empty = {k: np.zeros_like(v) for k, v in arrays.items()}
        accuracy.masked_accuracy(graphdef, params, empty, seed=1, **kw)


def test_warmup_logs_heldout_accuracy_of_the_exported_model(tmp_path):
    """configs/mlm_warmup.py:tiny: the accuracy logged at steps 4 and 8 is the accuracy of the models
    exported there (export.every_steps=4 and the final export) on the held-out set, and
    export.publish installs an identical copy of the final export."""
    from ncjax.train import train_and_evaluate

    c = _config("mlm_warmup", "tiny")
    c.log.progress, c.log.tensorboard = "off", False
    c.export.publish = str(tmp_path / "installed")
    c.export.every_steps = 4
    result = train_and_evaluate(c, tmp_path / "run")
    records = [r for r in logs.read_metrics(tmp_path / "run" / "metrics.jsonl") if "heldout/accuracy" in r]
    assert [r["step"] for r in records] == [4, 8]
    assert sorted(p.name for p in (tmp_path / "run" / "export").iterdir()) == ["hf", "step_4"]
    for record, export in zip(records, [tmp_path / "run" / "export" / "step_4" / "hf", result["export"]]):
        model, config = convert.load_model(export)
        tokenizer = convert.load_tokenizer(export)
        arrays = accuracy.heldout_arrays(c.heldout, c.data, tokenizer, cache_dir=tmp_path / "run" / "cache",
                                         length=c.data.max_length, position_limit=config.max_position_embeddings)
        assert arrays["input_ids"].shape == (c.heldout.max_examples, c.data.max_length)
        graphdef, params = nnx.split(model)
        again = accuracy.masked_accuracy(graphdef, params, arrays,
                                         special_ids=tuple(masking.special_token_ids(tokenizer)),
                                         mask_id=tokenizer.mask_token_id, vocab_size=config.vocab_size,
                                         batch_size=c.heldout.batch_size, seed=c.heldout.seed)
        assert record["heldout/accuracy"] == pytest.approx(again["accuracy"], abs=1e-9)
        assert record["heldout/loss"] == pytest.approx(again["loss"], rel=1e-5)
    assert records[0]["heldout/loss"] != records[1]["heldout/loss"]
    for name in ("model.safetensors", "config.json", "vocab.txt"):
        assert (tmp_path / "installed" / name).read_bytes() == (Path(result["export"]) / name).read_bytes()


def test_heldout_corpus_errors_name_the_heldout_key(tmp_path):
    from ncjax.train import train_and_evaluate

    c = _config("mlm_warmup", "tiny")
    c.heldout.path = str(tmp_path / "absent.txt")
    with pytest.raises(FileNotFoundError, match="heldout.path"):
        train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bundled_splits_keep_gap_test_out(tmp_path):
    names = {p.name for p, _, _ in data.resolve_corpus("bundled:wikitext2_valid,bundled:gap_train")}
    assert names == {"wiki.valid.tokens", "gap-development.tsv", "gap-validation.tsv"}
    spec = data.CorpusSpec(path="bundled:gap_train", sentence_split=False)
    assert len(data.read_texts(spec, tmp_path)) == 2000 + 454


def test_minilm_mlm_source_and_the_minilm_variant(monkeypatch, tmp_path, tiny_bert_dir):
    monkeypatch.setenv(weights.WARM_MINILM_ENV, str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="configs/mlm_warmup.py"):
        weights.resolve_source("minilm-mlm")
    c = _config("bert_nc3", "minilm")
    assert (c.model.path, c.model.init_missing_head) == ("minilm", True)
    monkeypatch.setenv(weights.WARM_MINILM_ENV, str(tiny_bert_dir))
    assert weights.resolve_source("minilm-mlm") == tiny_bert_dir
    c = _config("bert_nc3", "minilm")
    assert (c.model.path, c.model.init_missing_head) == ("minilm-mlm", False)
    assert json.loads(c.to_json())["model"]["path"] == "minilm-mlm"


def test_negative_export_interval_is_refused_before_work():
    from ncjax.train import check_config

    c = _config("mlm_warmup", "tiny")
    c.export.every_steps = -1
    with pytest.raises(ValueError, match=r"export.every_steps=-1 must be >= 0"):
        check_config(c)
