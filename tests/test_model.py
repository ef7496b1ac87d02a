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

    def loss(model):
        out = model(*_inputs(expected), dropout_key=jax.random.key(0))
        return jnp.mean(out.logits**2)

    lp, gp = nnx.value_and_grad(loss)(plain)
    lr, gr = nnx.value_and_grad(loss)(remat)
    np.testing.assert_allclose(lp, lr, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(gp), jax.tree.leaves(gr)):
        np.testing.assert_allclose(x, y, atol=1e-6)


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
        BertConfig.from_hf_dict({"model_type": "roberta"})
