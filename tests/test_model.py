"""BertForMaskedLM numerics: parity with PyTorch outputs stored in the fixture, and its options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ncjax.convert import load_model
from ncjax.model import BertConfig, BertForMaskedLM, apply

LAYOUTS = ["model.safetensors", "pytorch_model.bin", "flax_model.msgpack", "legacy_model.safetensors"]


@pytest.fixture(scope="module")
def expected(tiny_bert_dir):
    return dict(np.load(tiny_bert_dir / "expected.npz"))


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return load_model(tiny_bert_dir)


def _inputs(e):
    return e["input_ids"], e["attention_mask"], e["token_type_ids"]


def _loss_and_grads(model, expected, key):
    def loss(m):
        out = m(*_inputs(expected), dropout_key=key)
        return jnp.mean(out.logits**2) + jnp.mean(out.last_hidden**2)

    return nnx.value_and_grad(loss)(model)


def _assert_same(a, b, atol):
    (la, ga), (lb, gb) = a, b
    np.testing.assert_allclose(la, lb, rtol=atol)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(x, y, atol=atol)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_matches_pytorch(tiny_bert_dir, expected, layout):
    if layout == "pytorch_model.bin":
        pytest.importorskip("torch")
    model, _ = load_model(tiny_bert_dir / layout)
    out = model(*_inputs(expected))
    np.testing.assert_allclose(out.logits, expected["logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.last_hidden, expected["last_hidden_state"], atol=1e-5, rtol=0)


def test_logits_at_positions_equal_gathered_full_logits(tiny, expected):
    model, _ = tiny
    full = model(*_inputs(expected))
    positions = np.array([[0, 3, 10], [1, 2, 6], [6, 5, 0]], np.int32)
    part = model(*_inputs(expected), positions=positions)
    gathered = np.take_along_axis(np.asarray(full.logits), positions[..., None], axis=1)
    np.testing.assert_allclose(part.logits, gathered, atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        part.mlm_hidden, np.take_along_axis(np.asarray(full.mlm_hidden), positions[..., None], axis=1), atol=1e-6
    )
    # mlm_hidden is exactly what the decoder multiplies: logits = mlm_hidden W^T + b.
    w = np.asarray(model.word_embeddings())
    np.testing.assert_allclose(
        np.asarray(full.mlm_hidden) @ w.T + np.asarray(model.head.bias[...]), full.logits, atol=1e-5
    )
    assert model(*_inputs(expected), with_logits=False).logits is None


def test_padding_does_not_change_real_positions(tiny, expected):
    model, _ = tiny
    ids, mask, types = _inputs(expected)
    # Row 1 has 7 real tokens; extending its padding must not move its logits.
    longer = lambda a: np.pad(a, ((0, 0), (0, 5)))  # noqa: E731
    a = model(ids, mask, types).logits[1, :7]
    b = model(longer(ids), longer(mask), longer(types)).logits[1, :7]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_dropout_is_keyed_and_off_without_key(tiny, expected):
    model, _ = tiny
    base = model(*_inputs(expected)).logits
    k = jax.random.key(3)
    a = model(*_inputs(expected), dropout_key=k).logits
    b = model(*_inputs(expected), dropout_key=k).logits
    c = model(*_inputs(expected), dropout_key=jax.random.key(4)).logits
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(base)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_remat_gives_same_values_and_gradients(tiny_bert_dir, expected):
    plain, _ = load_model(tiny_bert_dir)
    remat, _ = load_model(tiny_bert_dir, remat=True)
    key = jax.random.key(0)
    _assert_same(_loss_and_grads(remat, expected, key), _loss_and_grads(plain, expected, key), 1e-6)


def test_functional_apply_under_jit(tiny, expected):
    model, _ = tiny
    graphdef, state = nnx.split(model)
    out = jax.jit(lambda s, i, m, t: apply(graphdef, s, i, m, t))(state, *_inputs(expected))
    np.testing.assert_allclose(out.logits, expected["logits"], atol=1e-5)


def test_bfloat16_compute_tracks_float32(tiny_bert_dir, expected):
    # Stated tolerance: bf16 has an 8-bit mantissa (~0.4 % relative); on this 2-layer model the
    # logits (|x| < ~1) stay within 0.05 of float32.
    model, _ = load_model(tiny_bert_dir, dtype=jnp.bfloat16)
    out = model(*_inputs(expected))
    assert out.logits.dtype == jnp.float32  # logits are returned in float32 for the loss
    np.testing.assert_allclose(out.logits, expected["logits"], atol=5e-2)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_fresh_model_initialisation_matches_transformers_recipe():
    cfg = BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128)
    model = BertForMaskedLM(cfg, rngs=nnx.Rngs(0))
    w = np.asarray(model.word_embeddings())
    assert np.all(w[cfg.pad_token_id] == 0)
    assert abs(w[1:].std() - cfg.initializer_range) < 0.002
    np.testing.assert_array_equal(model.head.bias[...], 0)
    np.testing.assert_array_equal(model.head.norm.scale[...], 1)


def test_config_rejects_unsupported_settings():
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_hf_dict({"model_type": "bert", "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="not divisible"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="model_type"):
        BertConfig.from_hf_dict({"model_type": "gpt2"})


def test_exact_and_fused_attention_match_pytorch_and_each_other(tiny_bert_dir, expected):
    # The fixture rows are padded to different lengths, so the padding mask is exercised.
    exact, _ = load_model(tiny_bert_dir, attention="exact")
    fused, _ = load_model(tiny_bert_dir, attention="auto")
    for model in (exact, fused):
        out = model(*_inputs(expected))
        np.testing.assert_allclose(out.logits, expected["logits"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(out.last_hidden, expected["last_hidden_state"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(fused(*_inputs(expected)).last_hidden, exact(*_inputs(expected)).last_hidden,
                               atol=1e-6, rtol=0)
    # Training with attention dropout 0: the fused path runs (dropout elsewhere stays on) and
    # gives the exact path's loss and gradients.
    exact0, _ = load_model(tiny_bert_dir, attention="exact", attention_dropout=0.0)
    fused0, _ = load_model(tiny_bert_dir, attention="auto", attention_dropout=0.0)
    _assert_same(_loss_and_grads(fused0, expected, jax.random.key(1)),
                 _loss_and_grads(exact0, expected, jax.random.key(1)), 1e-6)


def test_attention_choice_follows_attention_dropout(tiny_bert_dir, expected, monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, _ = load_model(tiny_bert_dir)  # attention dropout 0.1 from config.json
    model(*_inputs(expected))
    assert len(calls) == 2  # evaluation: fused in both layers
    model(*_inputs(expected), dropout_key=jax.random.key(0))
    assert len(calls) == 2  # training with attention dropout: the exact path
    model0, _ = load_model(tiny_bert_dir, attention_dropout=0.0)
    model0(*_inputs(expected), dropout_key=jax.random.key(0))
    assert len(calls) == 4
    exact, _ = load_model(tiny_bert_dir, attention="exact")
    exact(*_inputs(expected))
    assert len(calls) == 4


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_match_unrolled(tiny_bert_dir, expected, remat):
    plain, _ = load_model(tiny_bert_dir)
    scanned, _ = load_model(tiny_bert_dir, scan_layers=True, remat=remat, remat_policy="dots")
    key = jax.random.key(5)
    _assert_same(_loss_and_grads(scanned, expected, key), _loss_and_grads(plain, expected, key), 1e-6)
    np.testing.assert_allclose(scanned(*_inputs(expected)).logits, expected["logits"], atol=1e-5, rtol=0)
    # the parameter tree (and so checkpoints and conversion) is the same with and without scan
    assert jax.tree.structure(nnx.state(plain)) == jax.tree.structure(nnx.state(scanned))


def test_model_options_are_checked():
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    for kwargs, match in ((dict(attention="flash"), "attention='flash'"),
                          (dict(attention_impl="triton"), "attention_impl='triton'"),
                          (dict(remat_policy="all"), "remat_policy='all'"),
                          (dict(attention_dropout=1.0), "attention_dropout=1.0")):
        with pytest.raises(ValueError, match=match):
            BertForMaskedLM(cfg, rngs=nnx.Rngs(0), **kwargs)
