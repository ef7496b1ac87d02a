"""Model families: random-initialised transformers masked LMs of every family, saved as
safetensors, .bin and the transformers-4.x Flax msgpack layout, converted and compared with
PyTorch (logits, last hidden states), and the export round trip, bit-exact."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import HF_CONFIGS, PAD, VOCAB, build_hf_mlm
from ncjax import families
from ncjax.convert import load_model, params_to_hf, save_hf
from ncjax.model import BertConfig

pytestmark = pytest.mark.torch


def _inputs():
    """Two rows, the second right-padded with PAD (RoBERTa's positions skip padding)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (2, 11)).astype(np.int64)
    mask = np.ones_like(ids)
    ids[1, 7:], mask[1, 7:] = PAD, 0
    return ids, mask


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def saved(request, tmp_path_factory):
    """(family, directory with model.safetensors, directory with pytorch_model.bin, reference outputs)."""
    import torch

    name = request.param
    hf = build_hf_mlm(name)
    ids, mask = _inputs()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    ref = {"logits": out.logits.numpy(), "last_hidden": out.hidden_states[-1].numpy(), "ids": ids, "mask": mask}
    st = tmp_path_factory.mktemp(name + "-st")
    hf.save_pretrained(str(st))
    pt = tmp_path_factory.mktemp(name + "-bin")  # transformers 5 writes safetensors only: a .bin by hand,
    torch.save(hf.state_dict(), pt / "pytorch_model.bin")  # with the tied decoder keys a state dict holds
    (pt / "config.json").write_bytes((st / "config.json").read_bytes())
    assert (st / "model.safetensors").is_file() and (pt / "pytorch_model.bin").is_file()
    return name, st, pt, ref


def _check(model, ref):
    out = model(ref["ids"], ref["mask"])
    m = ref["mask"][..., None].astype(bool)  # padded positions differ by construction of the mask
    np.testing.assert_allclose(np.where(m, out.logits, 0), np.where(m, ref["logits"], 0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.where(m, out.last_hidden, 0), np.where(m, ref["last_hidden"], 0),
                               atol=1e-5, rtol=0)


def test_safetensors_and_bin_match_pytorch(saved):
    name, st, pt, ref = saved
    model, config = load_model(st)
    assert config.model_type == name
    _check(model, ref)
    from_bin, _ = load_model(pt)
    a, b = params_to_hf(model), params_to_hf(from_bin)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    if name == "albert":  # shared layers: the scanned encoder stacks the schedule [0, 1, 0, 1, 2, 3, 2, 3]
        assert model.schedule == (0, 1, 0, 1, 2, 3, 2, 3) and len(model.layers) == 4
        _check(load_model(st, scan_layers=True)[0], ref)


def test_export_round_trip_is_bit_exact_and_loads_in_transformers(saved, tmp_path):
    import torch
    import transformers

    name, st, _, ref = saved
    model, config = load_model(st)
    out = save_hf(model, config, tmp_path / "hf")
    original, written = load_file(st / "model.safetensors"), load_file(out / "model.safetensors")
    fam = families.get(name)
    tied = set(fam.decoder_keys) - {fam.head["bias"]}
    assert set(written) == set(original) - tied
    for k in written:
        np.testing.assert_array_equal(written[k], original[k])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == name and cfg["architectures"] == [fam.architecture]
    assert BertConfig.from_hf_dict(cfg) == config
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor(ref["ids"]), attention_mask=torch.tensor(ref["mask"])).logits.numpy()
    np.testing.assert_array_equal(logits, ref["logits"])


def test_roberta_positions_start_after_padding_idx():
    cfg = BertConfig(model_type="roberta", vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=8, pad_token_id=1, type_vocab_size=1, max_position_embeddings=10)
    from flax import nnx

    from ncjax.layers import Embeddings

    emb = Embeddings(cfg, np.float32, nnx.Rngs(0))
    ids = np.array([[0, 5, 6, 2, 1, 1], [0, 1, 7, 2, 1, 1]])  # a pad inside a row is skipped too
    np.testing.assert_array_equal(emb.positions(ids), [[2, 3, 4, 5, 1, 1], [2, 1, 3, 4, 1, 1]])
    assert cfg.max_tokens == 8


# ----------------------------------------------------------------------------- flax_model.msgpack

def _flax_tree(hf) -> dict:
    """The parameter tree a transformers-4.x Flax masked LM of `hf`'s family saved to
    flax_model.msgpack, built from the PyTorch model: nested dicts by module path, Dense
    `kernel` [in, out] (the Linear weight transposed) and `bias`, LayerNorm `scale` and `bias`,
    Embed `embedding`. FlaxBert/FlaxRoberta/FlaxDistilBert/FlaxAlbert name their submodules as the
    PyTorch classes do (layer lists are named "0", "1", ...), so a path is the PyTorch key split at
    the dots. The tied decoder holds no parameters there: it applies the word embeddings, and its
    bias is the head's own `bias` (cls.predictions.bias, lm_head.bias, predictions.bias), except in
    FlaxDistilBertLMDecoder, which holds `vocab_projector.bias` itself. A DistilBERT with
    `sinusoidal_pos_embds` has no position table there."""
    import torch

    modules = dict(hf.named_modules())
    decoder = next(n for n, m in modules.items() if m is hf.get_output_embeddings())
    tree: dict = {}
    for key, value in hf.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        if module == decoder and not (leaf == "bias" and decoder == "vocab_projector"):
            continue
        if getattr(hf.config, "sinusoidal_pos_embds", False) and module.endswith("position_embeddings"):
            continue  # FlaxDistilBert computes the sinusoidal table instead of holding it
        kind = type(modules[module])
        value = value.numpy()
        if kind is torch.nn.Linear:
            leaf, value = {"weight": "kernel", "bias": "bias"}[leaf], (value.T if leaf == "weight" else value)
        elif kind is torch.nn.LayerNorm:
            leaf = {"weight": "scale", "bias": "bias"}[leaf]
        elif kind is torch.nn.Embedding:
            leaf = "embedding"
        node = tree
        for part in module.split("."):
            node = node.setdefault(part, {})
        node[leaf] = np.ascontiguousarray(value)
    return tree


def _flat(tree, prefix=()):
    for k, v in tree.items():
        yield from (_flat(v, prefix + (k,)) if isinstance(v, dict) else [(prefix + (k,), np.asarray(v))])


def test_flax_tree_builder_matches_the_bert_fixture_transformers_wrote(tiny_bert_dir):
    import transformers
    from flax.serialization import msgpack_restore

    hf = transformers.BertForMaskedLM.from_pretrained(str(tiny_bert_dir)).eval()
    written = dict(_flat(msgpack_restore((tiny_bert_dir / "flax_model.msgpack").read_bytes())))
    built = dict(_flat(_flax_tree(hf)))
    assert set(built) == set(written)
    for k in written:
        np.testing.assert_array_equal(built[k], written[k], err_msg=str(k))


def test_flax_msgpack_matches_pytorch(saved, tmp_path):
    import transformers
    from flax.serialization import msgpack_serialize

    name, st, _, ref = saved
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(st)).eval()
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack_serialize(_flax_tree(hf)))
    (tmp_path / "config.json").write_bytes((st / "config.json").read_bytes())
    model, config = load_model(tmp_path)
    assert config.model_type == name
    _check(model, ref)
    a, b = params_to_hf(model), params_to_hf(load_model(st)[0])
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_flax_msgpack_of_a_sinusoidal_distilbert_gets_the_fixed_position_table(tmp_path):
    import torch
    import transformers
    from flax.serialization import msgpack_serialize

    from ncjax.families import sinusoidal_positions

    hf = build_hf_mlm("distilbert", sinusoidal_pos_embds=True)
    table = hf.state_dict()["distilbert.embeddings.position_embeddings.weight"].numpy()
    np.testing.assert_array_equal(sinusoidal_positions(40, 32), table)  # transformers' own table
    hf.save_pretrained(str(tmp_path / "st"))
    flax_dir = tmp_path / "flax"
    flax_dir.mkdir()
    tree = _flax_tree(hf)
    assert "position_embeddings" not in tree["distilbert"]["embeddings"]
    (flax_dir / "flax_model.msgpack").write_bytes(msgpack_serialize(tree))
    (flax_dir / "config.json").write_bytes((tmp_path / "st" / "config.json").read_bytes())
    ids, mask = _inputs()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    ref = {"logits": out.logits.numpy(), "last_hidden": out.hidden_states[-1].numpy(), "ids": ids, "mask": mask}
    model, config = load_model(flax_dir)
    _check(model, ref)
    exported = save_hf(model, config, tmp_path / "hf")  # the table is stored now, sinusoidal_pos_embds off
    again = transformers.AutoModelForMaskedLM.from_pretrained(str(exported)).eval()
    assert not again.config.sinusoidal_pos_embds
    with torch.no_grad():
        logits = again(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_array_equal(logits, ref["logits"])
