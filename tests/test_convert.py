"""Checkpoint conversion: exact round trips, PyTorch loading of exports, MiniLM, and clear errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from ncjax import convert
from ncjax.convert import load_model, minilm_dir, params_to_hf, save_hf, save_ncjax
from conftest import load_module

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["The nurse said she was tired.", "He is a doctor at the hospital, and a good one."]


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return load_model(tiny_bert_dir)


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", init_missing_head=True, seed=0)


def _copy_fixture(tiny_bert_dir, tmp_path, weights="model.safetensors"):
    d = tmp_path / "src"
    d.mkdir()
    for f in ("config.json", "vocab.txt"):
        shutil.copy(tiny_bert_dir / f, d / f)
    if weights:
        shutil.copy(tiny_bert_dir / weights, d / "model.safetensors")
    return d


def test_hf_ncjax_hf_round_trip_is_bit_exact(tiny, tiny_bert_dir, tmp_path):
    model, config = tiny
    out = save_hf(model, config, tmp_path / "hf", tokenizer_src=tiny_bert_dir)
    original = load_file(tiny_bert_dir / "model.safetensors")
    written = load_file(out / "model.safetensors")
    assert set(written) == set(original)
    for k in original:
        assert written[k].dtype == np.float32
        np.testing.assert_array_equal(written[k], original[k])
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    assert (out / "vocab.txt").is_file() and (out / "tokenizer.json").is_file()
    again, _ = load_model(out)
    a, b = params_to_hf(model), params_to_hf(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_ncjax_checkpoint_round_trip_is_exact(tiny, tiny_bert_dir, tmp_path):
    model, config = tiny
    out = save_ncjax(model, config, tmp_path / "nc", tokenizer_src=tiny_bert_dir)
    again, config2 = load_model(out)
    assert config2 == config
    a, b = params_to_hf(model), params_to_hf(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    tok = convert.load_tokenizer(out)
    assert len(tok) == 54 and tok.vocab == convert.load_tokenizer(tiny_bert_dir).vocab


def test_tokenizer_from_a_bare_vocab_txt(tiny_bert_dir, tmp_path):
    shutil.copy(tiny_bert_dir / "vocab.txt", tmp_path / "vocab.txt")
    tok = convert.load_tokenizer(tmp_path)
    assert len(tok) == 54
    assert tok("The nurse worked")["input_ids"] == [2, 17, 23, 22, 3]  # [CLS] the nurse worked [SEP]


def test_sharded_safetensors_index(tiny, tiny_bert_dir, tmp_path):
    d = _copy_fixture(tiny_bert_dir, tmp_path, weights=None)
    tensors = load_file(tiny_bert_dir / "model.safetensors")
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(d / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in ks})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model, _ = load_model(d)
    a, b = params_to_hf(model), params_to_hf(tiny[0])
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_minilm_head_initialisation_is_seeded(minilm):
    model, config = minilm
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (6, 384, 30522)
    again, _ = load_model("minilm", init_missing_head=True, seed=0)
    other, _ = load_model("minilm", init_missing_head=True, seed=1)
    np.testing.assert_array_equal(model.head.dense.kernel[...], again.head.dense.kernel[...])
    assert not np.array_equal(model.head.dense.kernel[...], other.head.dense.kernel[...])
    # The encoder comes from the file, not the seed.
    np.testing.assert_array_equal(model.word_embeddings(), other.word_embeddings())


def test_minilm_bfloat16_within_tolerance(minilm):
    model, _ = minilm
    tok = convert.load_tokenizer("minilm")
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    ref = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    bf16, _ = load_model("minilm", init_missing_head=True, seed=0, dtype=jnp.bfloat16)
    out = bf16(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    mask = enc["attention_mask"][..., None]
    # Stated tolerance for 6 layers in bfloat16: 0.1 absolute on hidden states of magnitude ~5.
    assert np.abs((np.asarray(out.last_hidden, np.float32) - np.asarray(ref.last_hidden)) * mask).max() < 0.1


@pytest.mark.torch
def test_export_loads_in_transformers_with_same_logits(tiny, tiny_bert_dir, tmp_path):
    import torch
    import transformers

    model, config = tiny
    out = save_hf(model, config, tmp_path / "hf", tokenizer_src=tiny_bert_dir)
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    e = np.load(tiny_bert_dir / "expected.npz")
    with torch.no_grad():
        logits = hf(**{k: torch.tensor(e[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    np.testing.assert_allclose(logits.numpy(), e["logits"], atol=1e-5)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok.convert_tokens_to_ids("nurse") == convert.load_tokenizer(tiny_bert_dir).convert_tokens_to_ids("nurse") == 23


@pytest.mark.torch
def test_minilm_matches_transformers_bert_model(minilm):
    import torch
    import transformers

    model, _ = minilm
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    ref = transformers.BertModel.from_pretrained(str(minilm_dir())).eval()
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    with torch.no_grad():
        want = ref(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    got = np.asarray(model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).last_hidden)
    mask = enc["attention_mask"][..., None].astype(bool)
    np.testing.assert_allclose(np.where(mask, got, 0), np.where(mask, want, 0), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- errors


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_no_weight_file(tiny_bert_dir, tmp_path):
    d = _copy_fixture(tiny_bert_dir, tmp_path, weights=None)
    with pytest.raises(FileNotFoundError, match="no weight file"):
        load_model(d)


def test_shape_mismatch_names_key_and_shapes(tiny_bert_dir, tmp_path):
    d = _copy_fixture(tiny_bert_dir, tmp_path)
    t = load_file(d / "model.safetensors")
    t["bert.encoder.layer.1.intermediate.dense.weight"] = np.zeros((65, 32), np.float32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight has shape \(65, 32\).*\(64, 32\)"):
        load_model(d)


def test_unknown_extra_keys(tiny_bert_dir, tmp_path):
    d = _copy_fixture(tiny_bert_dir, tmp_path)
    t = load_file(d / "model.safetensors")
    t["bert.encoder.layer.0.adapter.weight"] = np.zeros((2, 2), np.float32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="adapter.weight"):
        load_model(d)


def test_decoder_weight_must_equal_embeddings(tiny_bert_dir, tmp_path):
    d = _copy_fixture(tiny_bert_dir, tmp_path)
    t = load_file(d / "model.safetensors")
    t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"] + 1e-3
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="decoder.weight differs"):
        load_model(d)
    # An equal decoder weight (the legacy layout) is accepted.
    t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"].copy()
    save_file(t, str(d / "model.safetensors"))
    load_model(d)


def test_missing_head_needs_the_flag(tiny_bert_dir, tmp_path):
    d = _copy_fixture(tiny_bert_dir, tmp_path)
    t = {k: v for k, v in load_file(d / "model.safetensors").items() if not k.startswith("cls.")}
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="no MLM head.*--init-missing-head"):
        load_model(d)
    model, _ = load_model(d, init_missing_head=True)
    np.testing.assert_array_equal(model.head.bias[...], 0)


def test_failed_export_writes_nothing(tiny, tmp_path):
    model, config = tiny
    dst = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="tokenizer files"):
        save_hf(model, config, dst, tokenizer_src=tmp_path)  # tmp_path has no vocab.txt
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind either
    dst.mkdir()
    (dst / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf(model, config, dst)
    assert [p.name for p in dst.iterdir()] == ["keep"]


def test_offline_hub_id_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        load_model("no-such-org/no-such-model-ncjax")


def test_convert_cli(tiny_bert_dir, tmp_path, capsys):
    cli = load_module(ROOT / "launch" / "convert.py", "launch_convert")
    assert cli.main([str(tiny_bert_dir), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert cli.main([str(tmp_path / "hf"), str(tmp_path / "nc"), "--to", "ncjax"]) == 0
    assert (tmp_path / "nc" / "ncjax.json").is_file()
    assert cli.main([str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_convert_cli_help():
    out = subprocess.run([sys.executable, str(ROOT / "launch" / "convert.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--init-missing-head" in out and "--to" in out
